"""CT phantoms in Hounsfield units, built from physics rather than from 8-bit slices: air
around the patient, a table, fat and soft tissue, bone, two lungs of parenchyma with vessels, a
trachea, a stomach bubble and colon gas under the lung bases, and lesions inside the lungs.

They are what real scanner CT looks like to the anatomy stage (``covidseg.anatomy``) and to the
scan checks, where ``synthetic.make_volume`` (an inverse lung window of the demo's slices) is
not: its "air" is a windowed grey and it has no body outline, table or gas.

    phantom(kind="chest")        the whole chest, lungs inside the scan, abdomen below
    phantom(kind="bases")        an abdominal-pelvic scan whose top slices hold the lung bases
    phantom(kind="abdomen")      abdomen only: no lung at all, bowel gas
    phantom(kind="chest", top=k) the chest cut at slice k: a lung cut by the top slice

Arrays are display-ordered ``[Z, H, W]`` (slice 0 inferior; rows anterior -> posterior; columns
the patient's right -> left, as ``volumes.to_display``). ``write_nifti`` and
``write_dicom_series`` store them as a scanner would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HU = {"air": -1000.0, "lung": -850.0, "fat": -100.0, "soft": 40.0, "bone": 700.0, "table": 300.0, "ggo": -450.0, "consolidation": 30.0}


@dataclass
class Phantom:
    """A phantom and its truth, display-ordered ``[Z, H, W]``.

    ``hu`` float32; ``lungs`` uint8 (1 right, 2 left, as lungmask); ``lesion`` uint8 {0, 1};
    ``body`` bool (the patient, holes filled); ``spacing`` (slice, row, column) mm."""

    hu: np.ndarray
    lungs: np.ndarray
    lesion: np.ndarray
    body: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def phantom(kind: str = "chest", slices: int = 48, size: int = 128, spacing: tuple[float, float, float] = (5.0, 2.6, 2.6), lesions: int = 3, seed: int = 0, top: int | None = None) -> Phantom:
    """One phantom (see the module docstring).

    Args:
        kind: ``chest`` (lungs from about 40 % to 90 % of the slices), ``bases`` (lungs only in
            the top eighth, cut by the top slice) or ``abdomen`` (no lungs).
        slices, size, spacing: the grid, ``(slice, row, column)`` mm.
        lesions: lesion blobs (ground glass with a consolidated core) inside the lungs.
        top: keep only slices below this index (a chest scan cut through the lungs).
    """
    if kind not in ("chest", "bases", "abdomen"):
        raise ValueError(f"phantom kind must be chest, bases or abdomen, got {kind!r}")
    rng = np.random.default_rng(seed)
    z = np.arange(slices, dtype=np.float32)[:, None, None] / max(slices - 1, 1)  # 0 inferior .. 1 superior
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    yy, xx = yy[None], xx[None]
    base, apex = {"chest": (0.42, 0.92), "bases": (0.88, 1.3), "abdomen": (2.0, 3.0)}[kind]
    t = np.clip((z - base) / (apex - base), 0, 1)  # 0 at the lung base .. 1 at the apex
    in_lung_z = (z >= base) & (z <= apex)
    hu = np.full((slices, size, size), HU["air"], np.float32)
    body = np.broadcast_to(_ellipse(yy, xx, 0.5, 0.5, 0.3, 0.4), hu.shape).copy()
    inner = np.broadcast_to(_ellipse(yy, xx, 0.5, 0.5, 0.27, 0.37), hu.shape)
    hu[body] = HU["fat"]
    hu[inner] = HU["soft"]
    hu[np.broadcast_to(_ellipse(yy, xx, 0.72, 0.5, 0.045, 0.045), hu.shape)] = HU["bone"]  # vertebra
    ribs = body & ~np.broadcast_to(_ellipse(yy, xx, 0.5, 0.5, 0.25, 0.35), hu.shape) & inner & (z >= base - 0.05)
    hu[ribs & (np.sin(xx * 60) > 0.3)] = HU["bone"]
    table = np.broadcast_to((yy > 0.83) & (yy < 0.86) & (xx > 0.1) & (xx < 0.9), hu.shape)  # under the patient, an air gap between
    hu[table] = HU["table"]
    # lungs: ellipses that shrink towards base and apex; the patient's right is the image's left
    ry = 0.2 * np.sqrt(np.clip(np.sin(np.pi * (0.15 + 0.85 * t)), 0, 1))
    rx = 0.12 * np.sqrt(np.clip(np.sin(np.pi * (0.15 + 0.85 * t)), 0, 1))
    right = in_lung_z & (((yy - 0.5) / np.maximum(ry, 1e-3)) ** 2 + ((xx - 0.31) / np.maximum(rx, 1e-3)) ** 2 <= 1)
    left = in_lung_z & (((yy - 0.5) / np.maximum(ry, 1e-3)) ** 2 + ((xx - 0.69) / np.maximum(rx * 0.92, 1e-3)) ** 2 <= 1)
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[right], lungs[left] = 1, 2
    hu[lungs > 0] = HU["lung"] + rng.normal(0, 25, int((lungs > 0).sum()))
    vessels = (lungs > 0) & (np.sin(xx * 90 + yy * 40) * np.sin(yy * 80 - 3 * z) > 0.85)
    hu[vessels] = HU["soft"]  # vessels are lung (the denominator), not lesion
    # trachea over the upper lungs, main bronchi near the carina: air, not lung
    trachea = np.broadcast_to(_ellipse(yy, xx, 0.38, 0.5, 0.03, 0.03), hu.shape) & (t > 0.55) & in_lung_z
    hu[trachea] = HU["air"]
    # stomach bubble under the left lung base and colon gas lower down: air inside the body
    below = (z < base - 0.03) & (z > base - 0.2)
    stomach = below & np.broadcast_to(_ellipse(yy, xx, 0.42, 0.66, 0.08, 0.09), hu.shape)
    colon = (z < base - 0.12) & (
        np.broadcast_to(_ellipse(yy, xx, 0.38, 0.3, 0.05, 0.08) | _ellipse(yy, xx, 0.36, 0.72, 0.05, 0.07) | _ellipse(yy, xx, 0.55, 0.45, 0.04, 0.1), hu.shape)
    )  # fmt: skip
    hu[(stomach | colon) & body] = HU["air"]
    lesion = np.zeros(hu.shape, np.uint8)
    zs = np.nonzero(in_lung_z[:, 0, 0])[0]
    for _ in range(lesions if len(zs) else 0):
        k = int(rng.integers(zs[0], zs[-1] + 1))
        side = int(rng.integers(1, 3))
        cx = 0.31 if side == 1 else 0.69
        cy, cx = 0.5 + rng.uniform(0.02, 0.1), cx + rng.uniform(-0.04, 0.04)  # posterior: dependent opacity
        r = rng.uniform(0.03, 0.06)
        dz = np.arange(slices)[:, None, None] - k
        blob = ((yy - cy) / r) ** 2 + ((xx - cx) / r) ** 2 + (dz * spacing[0] / (r * size * spacing[1])) ** 2 <= 1
        blob &= lungs == side
        lesion[blob] = 1
        hu[blob] = HU["ggo"] + rng.normal(0, 40, int(blob.sum()))
        core = blob & (((yy - cy) / (0.4 * r)) ** 2 + ((xx - cx) / (0.4 * r)) ** 2 <= 1)
        hu[core] = HU["consolidation"]
    hu += rng.normal(0, 8, hu.shape).astype(np.float32)  # scanner noise
    if top is not None:
        hu, lungs, lesion, body = hu[:top], lungs[:top], lesion[:top], body[:top]
    return Phantom(np.ascontiguousarray(hu), np.ascontiguousarray(lungs), np.ascontiguousarray(lesion), np.ascontiguousarray(body), tuple(map(float, spacing)))


def affine_of(p: Phantom) -> np.ndarray:
    """The RAS affine of a phantom stored as DICOM would be (LPS voxel axes)."""
    from covidseg.data.synthetic import volume_affine

    dz, dy, dx = p.spacing
    return volume_affine("LPS", (dy, dx, dz))


def write_nifti(path: str | Path, display: np.ndarray, p: Phantom, dtype=np.int16, slope: float = 1.0, inter: float = 0.0) -> Path:
    """Writes display-ordered data of phantom ``p`` as NIfTI (``dtype`` stored, raw = (value - inter) / slope)."""
    import nibabel as nib

    from covidseg.data.volumes import from_display

    affine = affine_of(p)
    raw = (from_display(display, affine).astype(np.float64) - inter) / slope
    img = nib.Nifti1Image(np.rint(raw).astype(dtype) if np.dtype(dtype).kind in "iu" else raw.astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    if slope != 1.0 or inter != 0.0:
        img.header.set_slope_inter(slope, inter)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_chest(path: str | Path, slices: int = 300, side: int = 512, seed: int = 0, spacing: tuple[float, float, float] = (1.0, 0.7, 0.7)) -> Path:
    """A whole-chest phantom as an int16 NIfTI in HU: the one generated scan of the speed,
    memory and packaging scripts and the GPU smoke test (``slices`` x ``side`` x ``side``)."""
    p = phantom("chest", slices=slices, size=side, spacing=spacing, lesions=max(3, slices // 40), seed=seed)
    return write_nifti(path, p.hu, p)


def write_dicom_series(img, folder: str | Path, slope: float = 0.5, intercept: float = -2048.0, series_uid: str | None = None, skip: tuple[int, ...] = (), study_uid: str | None = None, shuffle: bool = True) -> Path:
    """Writes a NIfTI image ``[X, Y, Z]`` (HU) as a CT series, one file per Z slice, with a
    rescale (``intercept`` 0 and ``slope`` 1 store raw values as HU + 0), in shuffled file names
    so only ImagePositionPatient orders them; ``skip`` leaves slices out."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = np.asanyarray(img.dataobj).astype(np.float64)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    study, series = study_uid or generate_uid(), series_uid or generate_uid()
    frame = generate_uid(entropy_srcs=[study, "frame"])  # one frame of reference for the series (prefix=None would ignore the sources)
    order = random.Random(0).sample(range(1000), data.shape[2]) if shuffle else range(data.shape[2])
    names = [f"IM{n:04d}" for n in order]
    for k in range(data.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = CTImageStorage, generate_uid(), ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = study, series, "CT", k + 1
        ds.FrameOfReferenceUID = frame
        ds.ImageOrientationPatient = [*(lps[:3, 0] / dx), *(lps[:3, 1] / dy)]
        ds.ImagePositionPatient = [*(lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing, ds.SliceThickness = [dy, dx], float(np.linalg.norm(lps[:3, 2]))
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.clip(np.rint((data[:, :, k].T - intercept) / slope), 0, 65535).astype(np.uint16).tobytes()
        ds.save_as(folder / (names[k] + ("" if k % 2 else ".dcm")), enforce_file_format=True)  # with and without suffix
    return folder
