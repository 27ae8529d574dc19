"""DICOM CT series: a folder of slices -> the ``(nibabel image, voxel array)`` pair that
``volumes.read_voxels`` returns for NIfTI, so predict windows, orients and writes
``NAME_mask.nii.gz`` aligned with the series exactly as for a NIfTI input.

Reader: pydicom. It is pure Python (numpy only for uncompressed pixel data), maintained by
the pydicom organisation, and reads every attribute needed here; SimpleITK would add a
~50 MB compiled wheel for the same job. Compressed transfer syntaxes (JPEG, JPEG 2000) need
pydicom's optional decoders (``pylibjpeg`` or ``gdcm``); without them the error names the
folder and the syntax.

    folder (one series; any file names) -> slices sorted by ImagePositionPatient projected on
    the slice normal (row x column direction) -> RescaleSlope/Intercept applied (HU, float32)
    -> voxel data [X = column, Y = row, Z = slice], affine from ImageOrientationPatient,
    PixelSpacing and the positions, converted from DICOM's LPS to NIfTI's RAS

Scanners and PACS exports often put several series in one flat folder: ``list_series`` groups
its files by SeriesInstanceUID (as dcm2niix does) and ``read_series(folder, uid)`` reads one of
them; ``covidseg predict`` predicts each, named ``FOLDER_seriesN`` (N its SeriesNumber). Files
without the 128-byte preamble and ``DICM`` (older scanners, some exports) are DICOM too when
pydicom reads image attributes from them (``is_dicom_file``).

Without a series chosen, a folder with several series is refused, as are slices of different
size or orientation, repeated positions or uneven spacing (missing slices): one
``VolumeReadError`` naming the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from covidseg.errors import VolumeReadError

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SPACING_TOLERANCE = 0.1  # relative deviation from the median slice gap that counts as uneven


# a data set written without preamble and file meta starts with a group 0x0002 or 0x0008 element
_RAW_STARTS = (b"\x02\x00", b"\x08\x00")


def is_dicom_file(path: str | Path) -> bool:
    """A ``.dcm``/``.dicom``/``.ima`` file, a file with the ``DICM`` preamble marker, or a data set
    without preamble (starting with a group 0x0002/0x0008 element) from which pydicom reads an
    image (``SOPClassUID``, ``Rows``); not a ``DICOMDIR`` (the index a CD/PACS export puts
    beside its study folders, no image)."""
    path = Path(path)
    if not path.is_file() or path.name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if head[:2] not in _RAW_STARTS:
        return False
    try:
        ds = _dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM after all
        return False
    return "SOPClassUID" in ds and "Rows" in ds


def _dcmread(path: Path, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` that also reads a data set without preamble and file meta (then its
    transfer syntax is the encoding it was read with, so its pixels decode)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds


def list_series(folder: str | Path) -> list[tuple[str, str, int]]:
    """The series of a DICOM folder as ``(SeriesInstanceUID, label, files)``, by SeriesNumber:
    ``label`` is ``seriesN`` (N the SeriesNumber), or ``series-K`` (K its place) where the numbers
    are missing or repeat. Unreadable files are left to ``read_series`` to name."""
    found: dict[str, list] = {}
    for file in series_files(folder):
        try:
            ds = _dcmread(file, stop_before_pixels=True)
        except Exception:
            continue
        number = getattr(ds, "SeriesNumber", None)
        found.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), [number, 0])[1] += 1
    order = sorted(found, key=lambda uid: (found[uid][0] is None, str(found[uid][0]).zfill(8), uid))
    numbers = [found[uid][0] for uid in order]
    unique = None not in numbers and len(set(map(str, numbers))) == len(numbers)
    return [(uid, f"series{found[uid][0]}" if unique else f"series-{k + 1}", found[uid][1]) for k, uid in enumerate(order)]


def series_files(folder: str | Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if is_dicom_file(p)) if folder.is_dir() else []


def is_series(folder: str | Path) -> bool:
    """Whether ``folder`` holds DICOM files (then it is read as one series)."""
    folder = Path(folder)
    return folder.is_dir() and any(is_dicom_file(p) for p in folder.iterdir())


def find_series(folder: str | Path) -> list[Path]:
    """Every folder at any depth under ``folder`` (itself included) that holds DICOM files: the
    series of a study export (``STUDY/SERIES/*.dcm``, nested one or more levels, often beside a
    ``DICOMDIR``), sorted by path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if any(is_dicom_file(Path(root, f)) for f in files):
            found.append(Path(root))
    return sorted(found)


def _floats(ds, name: str, folder: Path, file: Path) -> np.ndarray:
    value = getattr(ds, name, None)
    if value is None:
        raise VolumeReadError(f"{folder}: {file.name} has no {name}; cannot place the slice in space")
    return np.atleast_1d(np.array(list(value) if hasattr(value, "__len__") else value, dtype=np.float64))


def position_order(datasets: list) -> np.ndarray:
    """The slice order of a series: ImagePositionPatient projected on the slice normal (the
    first slice's row x column direction), ascending; the Z order of ``read_series``'s voxels."""
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([np.array(ds.ImagePositionPatient, dtype=np.float64) for ds in datasets])
    return np.argsort(positions @ normal, kind="stable")


def series_headers(folder: str | Path, series: str | None = None) -> list:
    """The series' datasets without pixel data, in ``read_series``'s slice order (for the
    DICOM SEG that references them); ``series``: only that SeriesInstanceUID's files."""
    import pydicom

    datasets = [pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in series_files(folder)]
    if series:
        datasets = [ds for ds in datasets if str(getattr(ds, "SeriesInstanceUID", "")) == series]
    return [datasets[i] for i in position_order(datasets)]


def read_series(folder: str | Path, series: str | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Reads one DICOM series (see the module docstring): the folder's only one, or the one
    whose SeriesInstanceUID is ``series``.

    Returns:
        ``(image, hu)``: a ``Nifti1Image`` (RAS affine, spacing in mm; its data is ``hu``) and
        ``float32 [X, Y, Z]`` Hounsfield units.

    Raises:
        VolumeReadError: naming the folder: no DICOM files, several series, missing geometry,
            mixed sizes or orientations, repeated or unevenly spaced positions, pixel data
            that cannot be decoded.
    """
    folder = Path(folder)
    files = series_files(folder)
    if not files:
        raise VolumeReadError(f"{folder}: no DICOM files in folder")
    slices = []
    for file in files:
        try:
            ds = _dcmread(file)
        except Exception as err:  # pydicom raises InvalidDicomError, EOFError, ValueError ...
            raise VolumeReadError(f"{folder}: {file.name} is not readable DICOM ({(str(err).splitlines() or [type(err).__name__])[0][:100]})") from None
        if "PixelData" not in ds or "Rows" not in ds:  # force=True reads almost anything: an image it must hold
            raise VolumeReadError(f"{folder}: {file.name} is not readable DICOM (no image in it)")
        slices.append((file, ds))
    if series is not None:
        slices = [(f, ds) for f, ds in slices if str(getattr(ds, "SeriesInstanceUID", "")) == series]
        if not slices:
            raise VolumeReadError(f"{folder}: no DICOM file of series {series}")
    uids = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices})
    if len(uids) > 1:
        raise VolumeReadError(f"{folder}: {len(uids)} DICOM series in one folder (SeriesInstanceUID {', '.join(uids[:3])}); covidseg predict "
                              f"splits such a folder by series; to train, put each series in its own folder")  # fmt: skip
    orientation = _floats(slices[0][1], "ImageOrientationPatient", folder, slices[0][0])
    spacing = _floats(slices[0][1], "PixelSpacing", folder, slices[0][0])  # [between rows, between columns]
    size = (int(slices[0][1].Rows), int(slices[0][1].Columns))
    for file, ds in slices:
        if (int(ds.Rows), int(ds.Columns)) != size or not np.allclose(_floats(ds, "ImageOrientationPatient", folder, file), orientation, atol=1e-4):
            raise VolumeReadError(f"{folder}: {file.name} differs in size or orientation from {slices[0][0].name}; mixed series in one folder?")
    row_dir, col_dir = orientation[:3], orientation[3:]  # directions of increasing column / row index
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_floats(ds, "ImagePositionPatient", folder, file) for file, ds in slices])
    order = position_order([ds for _, ds in slices])
    slices, positions = [slices[i] for i in order], positions[order]
    gaps = np.diff(positions @ normal)
    if len(gaps):
        median = float(np.median(gaps))
        if gaps.min() < 1e-3:
            raise VolumeReadError(f"{folder}: {int((gaps < 1e-3).sum())} slice(s) share a position; mixed series or duplicate files?")
        uneven = np.abs(gaps - median) > SPACING_TOLERANCE * median
        if uneven.any():
            k = int(np.argmax(uneven))
            raise VolumeReadError(
                f"{folder}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, median {median:.3g}; "
                f"first gap after {slices[k][0].name}): missing slices?"
            )
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        step = normal * float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    hu = np.empty((size[1], size[0], len(slices)), np.float32)
    for k, (file, ds) in enumerate(slices):
        try:
            pixels = ds.pixel_array
        except Exception as err:  # missing decoder for a compressed syntax, corrupt pixel data
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax)
            raise VolumeReadError(f"{folder}: {file.name}: cannot decode pixel data ({name}; {str(err).splitlines()[0][:100]})") from None
        slope, intercept = float(getattr(ds, "RescaleSlope", 1.0)), float(getattr(ds, "RescaleIntercept", 0.0))
        hu[:, :, k] = (pixels.astype(np.float32) * slope + intercept).T
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    img = nib.Nifti1Image(hu, affine)
    img.header.set_xyzt_units("mm")
    return img, hu
