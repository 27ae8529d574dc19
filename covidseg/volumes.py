"""CT volumes (NIfTI, DICOM series) in HU: reading, the intensity protocol, display orientation,
the slice cache for training, and writing masks aligned with the input.

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
* Slice cache for training (``cache_volume``/``read_slice``): a ``.nii.gz`` cannot be memory
  mapped and decoding a 512x512x300 volume per sample takes seconds, so each volume is decoded
  once (during the data check) into an uncompressed ``.npy`` in display order ``[Z, H, W]``
  under ``$COVIDSEG_CACHE/volumes`` (default ``~/.cache/covidseg/volumes``), keyed by path,
  modification time and size. A sample maps the file, copies its one slice and unmaps it, so
  a worker holds one slice, not volumes (measured: ``scripts/volume_memory.py``,
  docs/PERFORMANCE.md). HU stored as float (a rescale slope/intercept) is cached as ``int16``
  when that is exact (whole numbers in range: the usual CT case), half the disk of ``float32``.
  The cache is never pruned: ``scan`` notes its folder and size whenever it grew
  (``cache_note``); delete the folder to reclaim disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from covidseg.io import MaskLabelError, is_binary, lesion_mask

VOLUME_SUFFIXES = (".nii", ".nii.gz")
Intensity = Literal["auto", "image", "hu_window"]
CACHE_VERSION = "v1"
LUNG_WINDOW = (-600.0, 1500.0)  # center, width in HU
DISPLAY_AXCODES = ("P", "L", "S")  # rows run anterior->posterior, columns right->left, slices up
_ML_PER_UNIT3 = {"mm": 1e-3, "unknown": 1e-3, "meter": 1e6, "micron": 1e-12}  # unit^3 -> mL


class VolumeReadError(ValueError):
    """A NIfTI file that is missing, unreadable, corrupt or not a 3D volume."""


def is_volume(path: str | Path) -> bool:
    """Whether ``path`` names a NIfTI volume (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """``scan.nii.gz`` -> ``scan``."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def window(hu: np.ndarray, center: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> np.ndarray:
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
    (slice, row, column), for ``volume_metrics.case_metrics`` on display-ordered masks."""
    zooms = np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))
    ornt = ornt_transform(_display_ornt(affine), axcodes2ornt(DISPLAY_AXCODES))
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = float(zooms[axis]) if zooms[axis] > 0 else 1.0
    return out[2], out[0], out[1]


def display_affine(affine: np.ndarray, display_shape: tuple[int, int, int]) -> np.ndarray:
    """The affine of ``to_display``'s output: display voxel ``(z, h, w, 1)`` -> world mm.

    Two volumes whose display shapes and display affines agree lie on the same voxels in world
    space, whatever voxel order each file stores (``sources`` compares masks to images so)."""
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


def load_volume(path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Loads a NIfTI volume or a DICOM series folder with its voxel data in its own layout.

    Returns:
        ``(image, data)``: the nibabel image (affine, header) and ``[X, Y, Z]`` data in the
        stored dtype when unscaled (``int16`` HU, ``uint8`` labels), else ``float32``.

    Raises:
        VolumeReadError: naming the file, when it is missing, unreadable, truncated or not 3D.
    """
    path = Path(path)
    if path.is_dir():
        from covidseg.dicom import read_series

        return read_series(path)
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


def read_volume(path: str | Path, center: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Loads a CT volume in HU (NIfTI file or DICOM series folder) and returns it with its
    windowed display slices.

    Returns:
        ``(image, slices)``: the nibabel image (affine and header for the outputs; its voxel
        data is not kept in memory) and ``uint8 [Z, H, W]`` windowed slices.

    Raises:
        VolumeReadError: naming the file, when it cannot be read or is not 3D.
    """
    img, hu = load_volume(path)
    return img, to_display(window(hu, center, width), img.affine)


# -- the slice cache for training ------------------------------------------------------------
@dataclass(frozen=True)
class VolumeInfo:
    """A cached volume: ``shape`` is the display shape ``[Z, H, W]``; ``affine`` and ``zooms``
    are the file's; ``values`` are its distinct values when it is a mask (else ``None``)."""

    path: str
    cache: str
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    zooms: tuple[float, float, float]
    dtype: str
    values: tuple | None = None

    @classmethod
    def from_json(cls, text: str) -> "VolumeInfo":
        d = json.loads(text)
        d["affine"] = tuple(map(tuple, d["affine"]))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def cache_dir() -> Path:
    return Path(os.environ.get("COVIDSEG_CACHE", Path.home() / ".cache" / "covidseg")) / "volumes"


_written = [0]  # bytes this process added to the slice cache


def cache_note() -> str | None:
    """``slice cache DIR: SIZE (+ADDED now; delete the folder to clear it)`` after this process
    added to the cache (reset on each call), else ``None``."""
    added, _written[0] = _written[0], 0
    if not added:
        return None
    total = sum(p.stat().st_size for p in cache_dir().glob("*") if p.is_file())
    return f"slice cache {cache_dir()}: {_size(total)} (+{_size(added)} now; delete the folder to clear it)"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _exact_int16(display: np.ndarray) -> np.ndarray:
    """Float HU as ``int16`` when every value is a whole number in range (checked slice by
    slice, no second copy of the volume), else unchanged."""
    if display.dtype.kind != "f":
        return display
    for x in display:
        if not (np.all(np.rint(x) == x) and x.min(initial=0) >= -32768 and x.max(initial=0) <= 32767):
            return display
    return display.astype(np.int16)


def _cache_key(path: Path) -> str:
    """Path, modification time and size; for a DICOM folder, the newest file and total size."""
    stats = [p.stat() for p in path.iterdir() if p.is_file()] if path.is_dir() else [path.stat()]
    mtime, size = max((st.st_mtime_ns for st in stats), default=0), sum(st.st_size for st in stats)
    return hashlib.sha1(f"{path.resolve()}|{mtime}|{size}|{len(stats)}|{CACHE_VERSION}".encode()).hexdigest()


def cache_volume(path: str | Path, mask: bool = False) -> VolumeInfo:
    """Decodes a volume once into the slice cache (see the module docstring) and describes it.

    Raises:
        VolumeReadError: naming the file (missing, truncated gzip, not 3D, ...).
    """
    path = Path(path)
    if not path.exists():
        raise VolumeReadError(f"{path}: file not found")
    key = _cache_key(path)
    meta = cache_dir() / f"{key}.json"
    if meta.is_file():
        info = VolumeInfo.from_json(meta.read_text())
        if Path(info.cache).is_file() and (not mask or info.values is not None):
            return info
    img, data = load_volume(path)
    display = to_display(data, img.affine)
    del data
    if not mask:
        display = _exact_int16(display)
    values = tuple(v.item() for v in np.unique(np.concatenate([np.unique(x) for x in display]))) if mask else None  # per slice: no sort of the whole volume
    meta.parent.mkdir(parents=True, exist_ok=True)
    npy = meta.with_suffix(".npy")
    tmp = npy.with_name(f"{key}.{os.getpid()}.tmp.npy")
    np.save(tmp, display)
    _written[0] += tmp.stat().st_size
    os.replace(tmp, npy)  # atomic: DDP ranks and workers may race here
    info = VolumeInfo(str(path), str(npy), tuple(display.shape), tuple(map(tuple, img.affine.tolist())), tuple(float(z) for z in img.header.get_zooms()[:3]), str(display.dtype), values)
    tmp = meta.with_name(f"{key}.{os.getpid()}.tmp.json")
    tmp.write_text(json.dumps(info.__dict__))
    os.replace(tmp, meta)
    return info


def read_slice(path: str | Path, index: int) -> np.ndarray:
    """Display slice ``index`` of a cached volume, ``[H, W]`` in the stored dtype (HU or labels).

    The cache file is mapped for this one read and unmapped, so no volume stays in memory.
    """
    volume = np.load(cache_volume(path).cache, mmap_mode="r")
    out = np.array(volume[index])
    del volume
    return out


def read_hu_slice(path: str | Path, index: int, window_: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """The training input of a volume slice: ``uint8 [H, W]`` through the HU ``window``, the
    same step ``read_volume`` applies for predict."""
    return window(read_slice(path, index), *window_)


def _mask_labels(path: str | Path, lesion_labels: list[int] | None) -> tuple[VolumeInfo, list]:
    """The lesion values of a mask volume: ``lesion_labels``, or without them (a binary mask,
    judged on the whole volume, not one slice) its non-zero value; ``MaskLabelError`` otherwise."""
    info = cache_volume(path, mask=True)
    if lesion_labels is not None:
        return info, list(lesion_labels)
    if not is_binary(list(info.values), np.dtype(info.dtype)):
        raise MaskLabelError(str(path), list(info.values))
    return info, [v for v in info.values if v != 0]


def read_mask_volume(path: str | Path, lesion_labels: list[int] | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A whole mask volume for per-case scoring: ``uint8 [Z, H, W]`` in {0, 1} in display
    order (as ``read_mask_slice`` and predict's slices) through ``io.lesion_mask``, and its
    ``display_spacing`` in mm."""
    info, labels = _mask_labels(path, lesion_labels)
    return lesion_mask(np.load(info.cache, mmap_mode="r"), labels, str(path)), display_spacing(np.array(info.affine))


def read_mask_slice(path: str | Path, index: int, lesion_labels: list[int] | None = None) -> np.ndarray:
    """Display slice ``index`` of a mask volume as ``uint8 [H, W]`` in {0, 1}, through the one
    label rule ``io.lesion_mask`` (the volume equivalent of ``io.read_mask``)."""
    _, labels = _mask_labels(path, lesion_labels)
    return lesion_mask(read_slice(path, index), labels, str(path))


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
