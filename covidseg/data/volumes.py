"""CT volumes (NIfTI, DICOM series) in HU: reading, the intensity protocol, display orientation,
and writing masks aligned with the input.

A volume becomes a stack of 8-bit axial slices that look like the PNG slices the model was
trained on, and a prediction stack goes back into the volume's own voxel layout:

    .nii(.gz) [X, Y, Z] in HU -> window (default lung: center -600, width 1500) -> uint8 0..255
    -> reorient to display [Z, H, W] -> Predictor (io.preprocess_image, as for any 8-bit image)
    -> mask/probability [Z, H, W] -> original voxel layout [X, Y, Z], same affine and header

* Windowing clips HU to ``[center - width/2, center + width/2]`` and scales linearly to
  0..255 (rounded ``uint8``). The windowed slice is thus an ordinary 8-bit image, so every
  ``normalization`` rule of the model treats it exactly like an 8-bit PNG export: ``auto`` and
  ``dtype`` divide by 255 (the window fixes the contrast, no per-slice min-max), ``minmax``
  rescales each slice as it did in training. There is no second preprocessing path.
* Display orientation: axial slices (along the patient's inferior-superior axis, the last
  axis for usual scans), anterior at the top and the patient's right on the image's left
  (the radiological convention of DICOM viewers and PNG exports), found from the affine with
  ``nibabel.orientations``; a volume without a usable affine is taken as RAS.
* Intensity protocol (``Intensity``), stored with the data settings and so in every checkpoint:
  ``image`` (8/16-bit slice exports, scaled by ``io.normalize_intensity``) or ``hu_window``
  (HU through ``window``). A HU window, not nnU-Net's clip + z-score: the windowed slice is an
  ordinary 8-bit image, so PNG-trained and HU-trained models share one preprocessing function,
  and the window is two numbers a user can read and override (``--data.window``), where a
  z-score needs dataset statistics stored beside it. ``auto`` is resolved from the data
  (volumes -> ``hu_window``, slices -> ``image``) before anything is stored.

The slice cache that training reads volume slices from is ``covidseg.data.cache``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from covidseg.data.dicom import read_series
from covidseg.errors import VolumeReadError

VOLUME_SUFFIXES = (".nii", ".nii.gz")
Intensity = Literal["auto", "image", "hu_window"]
LUNG_WINDOW = (-600.0, 1500.0)  # center, width in HU
DISPLAY_AXCODES = ("P", "L", "S")  # rows run anterior->posterior, columns right->left, slices up
_ML_PER_UNIT3 = {"mm": 1e-3, "unknown": 1e-3, "meter": 1e6, "micron": 1e-12}  # unit^3 -> mL


def is_volume(path: str | Path) -> bool:
    """Whether ``path`` names a NIfTI volume (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """``scan.nii.gz`` -> ``scan``."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def apply_window(hu: np.ndarray, center: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> np.ndarray:
    """Hounsfield units -> ``uint8`` 0..255 (an 8-bit image) through a CT window.

    Shape:
        hu: any shape, float HU -> ``uint8``, same shape.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    scaled = (np.asarray(hu, np.float32) - (center - width / 2)) * (255.0 / width)
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def _display_ornt(affine: np.ndarray) -> np.ndarray:
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():  # zero or degenerate affine
        ornt = axcodes2ornt(("R", "A", "S"))
    return ornt


def to_display(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel array ``[X, Y, Z]`` -> display slices ``[Z, H, W]`` (see the module docstring)."""
    out = apply_orientation(data, ornt_transform(_display_ornt(affine), axcodes2ornt(DISPLAY_AXCODES)))
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))


def display_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the display axes ``[Z, H, W]`` of ``to_display``'s output
    (slice, row, column), for ``metrics.volume.case_metrics`` on display-ordered masks."""
    zooms = np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))
    ornt = ornt_transform(_display_ornt(affine), axcodes2ornt(DISPLAY_AXCODES))
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = float(zooms[axis]) if zooms[axis] > 0 else 1.0
    return out[2], out[0], out[1]


def display_affine(affine: np.ndarray, display_shape: tuple[int, int, int]) -> np.ndarray:
    """The affine of ``to_display``'s output: display voxel ``(z, h, w, 1)`` -> world mm.

    Two volumes whose display shapes and display affines agree lie on the same voxels in world
    space, whatever voxel order each file stores (``validate`` compares masks to images so)."""
    ornt = ornt_transform(_display_ornt(affine), axcodes2ornt(DISPLAY_AXCODES))
    z, h, w = display_shape
    reoriented = (h, w, z)  # the P, L, S axes before the slice axis moves first
    stored = [reoriented[int(target)] for target, _ in ornt]
    out = np.asarray(affine, np.float64) @ inv_ornt_aff(ornt, stored)
    return out[:, [2, 0, 1, 3]]


def from_display(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of ``to_display``: ``[Z, H, W]`` -> the volume's voxel layout ``[X, Y, Z]``."""
    out = apply_orientation(np.moveaxis(slices, 0, -1), ornt_transform(axcodes2ornt(DISPLAY_AXCODES), _display_ornt(affine)))
    return np.ascontiguousarray(out)


def read_voxels(path: str | Path, series: str | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Loads a NIfTI volume or a DICOM series folder (``series``: the SeriesInstanceUID to read
    from a folder of several) with its voxel data in its own layout.

    Returns:
        ``(image, data)``: the nibabel image (affine, header) and ``[X, Y, Z]`` data in the
        stored dtype when unscaled (``int16`` HU, ``uint8`` labels), else ``float32``.

    Raises:
        VolumeReadError: naming the file, when it is missing, unreadable, truncated or not 3D.
    """
    path = Path(path)
    if path.is_dir():
        return read_series(path, series)
    if not path.is_file():
        raise VolumeReadError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        proxy = img.dataobj
        scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
        # scaled data straight to float32 (nibabel's default would be float64, twice the memory)
        data = img.get_fdata(dtype=np.float32, caching="unchanged") if scaled else np.asanyarray(proxy)
    except Exception as err:  # nibabel, gzip and zlib raise many unrelated types
        first = (str(err).strip().splitlines() or [err.__class__.__name__])[0][:120]
        raise VolumeReadError(f"{path}: unreadable or corrupt NIfTI ({first})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or data.size == 0:
        raise VolumeReadError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if data.dtype.kind not in "iub":
        data = data.astype(np.float32, copy=False)
    return img, data


def read_scan(path: str | Path, series: str | None = None) -> tuple[nib.Nifti1Image, np.ndarray, str | None]:
    """Loads a CT volume (NIfTI file or DICOM series folder; ``series`` as ``read_voxels``) as display-ordered HU, through the
    HU protocol check (``covidseg.anatomy.checks.hu_protocol``: a volume stored without its
    rescale offset is corrected by its documented rule, one that is not CT in HU refused).

    Returns:
        ``(image, hu, note)``: the nibabel image (affine and header for the outputs), HU
        ``[Z, H, W]`` and the protocol's one-line note (``None`` when nothing was corrected).

    Raises:
        VolumeReadError: naming the file, when it cannot be read, is not 3D or not CT in HU.
    """
    from covidseg.anatomy.checks import hu_protocol

    img, data = read_voxels(path, series)
    data, note = hu_protocol(data, str(path))
    return img, to_display(data, img.affine), note


def read_volume(path: str | Path, center: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Loads a CT volume in HU (``read_scan``) and returns it with its windowed display slices.

    Returns:
        ``(image, slices)``: the nibabel image (affine and header for the outputs; its voxel
        data is not kept in memory) and ``uint8 [Z, H, W]`` windowed slices.

    Raises:
        VolumeReadError: naming the file, when it cannot be read, is not 3D or not CT in HU.
    """
    img, hu, _ = read_scan(path)
    return img, apply_window(hu, center, width)


def write_like(path: str | Path, slices: np.ndarray, ref: nib.Nifti1Image) -> None:
    """Writes display slices ``[Z, H, W]`` as a volume with ``ref``'s shape, affine and header.

    The data type is the array's own (``uint8`` masks, ``float32`` probabilities), unscaled.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = from_display(slices, ref.affine)
    out = type(ref)(data.reshape(ref.shape), ref.affine, ref.header)
    out.set_data_dtype(data.dtype)
    out.header.set_slope_inter(1.0, 0.0)
    if "cal_min" in out.header:
        out.header["cal_min"], out.header["cal_max"] = float(data.min(initial=0)), float(data.max(initial=0))
    nib.save(out, str(path))


def voxel_ml(ref: nib.Nifti1Image) -> float:
    """Volume of one voxel in millilitres, from the header's spacing (``zooms`` in mm -> /1000)."""
    unit = ref.header.get_xyzt_units()[0] if hasattr(ref.header, "get_xyzt_units") else "mm"
    return float(np.prod(ref.header.get_zooms()[:3])) * _ML_PER_UNIT3.get(unit, 1e-3)
