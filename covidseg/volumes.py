"""NIfTI CT volumes for inference: reading, Hounsfield windowing, display orientation, writing.

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
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

VOLUME_SUFFIXES = (".nii", ".nii.gz")
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


def from_display(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of ``to_display``: ``[Z, H, W]`` -> the volume's voxel layout ``[X, Y, Z]``."""
    out = apply_orientation(np.moveaxis(slices, 0, -1), ornt_transform(axcodes2ornt(DISPLAY_AXCODES), _display_ornt(affine)))
    return np.ascontiguousarray(out)


def read_volume(path: str | Path, center: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Loads a CT volume in HU and returns it with its windowed display slices.

    Returns:
        ``(image, slices)``: the nibabel image (affine and header for the outputs; its voxel
        data is not kept in memory) and ``uint8 [Z, H, W]`` windowed slices.

    Raises:
        VolumeReadError: naming the file, when it cannot be read or is not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeReadError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        hu = img.get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as err:  # nibabel, gzip and zlib raise many unrelated types
        first = (str(err).strip().splitlines() or [err.__class__.__name__])[0][:120]
        raise VolumeReadError(f"{path}: unreadable or corrupt NIfTI ({first})") from None
    if hu.ndim == 4 and hu.shape[3] == 1:
        hu = hu[..., 0]
    if hu.ndim != 3 or hu.size == 0:
        raise VolumeReadError(f"{path}: expected a 3D volume, got shape {hu.shape}")
    return img, to_display(window(hu, center, width), img.affine)


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
