"""DICOM Segmentation objects (highdicom) for a DICOM series input: ``--dicom_seg true``.

    masks, display-ordered [Z, H, W] -> the series' voxel layout [X, Y, Z] (``volumes.from_display``;
    Z in ``dicom.position_order``) -> one frame per source slice and segment, [rows, columns]
    -> NAME_seg.dcm: a BINARY SEG referencing every source image (SOP Instance UID per frame),
       the series' frame of reference and study, with segments
         1 lesion        Morphologically abnormal structure / Lesion (SCT 49755003 / 52988006)
         2 right lung    Anatomical structure / Right lung (SCT 91723000 / 3341006)  } with --lungs
         3 left lung     Anatomical structure / Left lung (SCT 44029006)             }
       and the algorithm: covidseg VERSION, model NAME VERSION (its card).

Frames with no segment are left out (highdicom's default), as viewers expect.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from covidseg.data.dicom import series_headers
from covidseg.data.volumes import from_display
from covidseg.errors import CovidSegError

# patient and study attributes a SEG copies from its source (type 2: present, may be empty); an
# anonymised export often drops them, and highdicom then stops with an AttributeError
_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def _highdicom():
    try:
        import highdicom
    except ImportError:
        raise CovidSegError("--dicom_seg: highdicom is not installed (a dependency of covidseg); pip install highdicom") from None
    return highdicom


def check_available() -> None:
    """Raises ``CovidSegError`` (one line, naming the extra) when highdicom is missing."""
    _highdicom()


def _segments(hd, algorithm, lungs: bool, classes: bool = False) -> list:
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    auto = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    spec = [("lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion)]
    if lungs:
        spec += [("right lung", codes.SCT.AnatomicalStructure, Code("3341006", "SCT", "Right lung")),
                 ("left lung", codes.SCT.AnatomicalStructure, Code("44029006", "SCT", "Left lung"))]  # fmt: skip
    if classes:  # SNOMED CT findings: ground-glass opacity, consolidation of lung
        spec += [("ground-glass opacity", codes.SCT.MorphologicallyAbnormalStructure, Code("50196008", "SCT", "Ground glass opacity")),
                 ("consolidation", codes.SCT.MorphologicallyAbnormalStructure, Code("95436008", "SCT", "Lung consolidation"))]  # fmt: skip
    return [
        hd.seg.SegmentDescription(segment_number=n, segment_label=label, segmented_property_category=category, segmented_property_type=kind,
                                  algorithm_type=auto, algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=f"covidseg {label}")
        for n, (label, category, kind) in enumerate(spec, start=1)
    ]  # fmt: skip


def write_dicom_seg(path: str | Path, series: str | Path, ref: nib.Nifti1Image, lesion: np.ndarray, lungs: np.ndarray | None, model: str, model_version: str,
                    series_uid: str | None = None, classes: np.ndarray | None = None) -> Path:  # fmt: skip
    """Writes the SEG of one DICOM series.

    Args:
        path: the ``.dcm`` to write. series: the source series folder (as predicted).
        ref: the image ``read_series`` made of it (its affine orders the display slices).
        lesion: ``[Z, H, W]`` bool, display order; lungs: ``[Z, H, W]`` uint8 labels 1 right,
            2 left (or None: a lesion segment only).
        model, model_version: what the algorithm identification names.
        series_uid: the SeriesInstanceUID predicted, when the folder holds several series.
        classes: ``[Z, H, W]`` a class model's labels (1 ground-glass, 2 consolidation): two more segments.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    import covidseg

    sources = series_headers(series, series_uid)
    for ds in sources:
        for name in _COPIED:
            if name not in ds:
                setattr(ds, name, "")
    planes = [from_display(np.asarray(lesion, np.uint8), ref.affine)]
    if lungs is not None:
        planes += [from_display((lungs == side).astype(np.uint8), ref.affine) for side in (1, 2)]
    if classes is not None:
        planes += [from_display((classes == value).astype(np.uint8), ref.affine) for value in (1, 2)]
    # [X = column, Y = row, Z = slice] -> [frames, rows, columns, segments]
    pixels = np.stack([np.transpose(v, (2, 1, 0)) for v in planes], axis=-1).astype(bool)
    if pixels.shape[:3] != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"{series}: mask shape {pixels.shape[:3]} does not match the series ({len(sources)} x {sources[0].Rows} x {sources[0].Columns})")
    version = getattr(covidseg, "__version__", "0")
    algorithm = hd.AlgorithmIdentificationSequence(name="covidseg", version=f"{version}; model {model} {model_version}"[:64], family=codes.cid7162.ArtificialIntelligence)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segments(hd, algorithm, lungs is not None, classes is not None), series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="covidseg", manufacturer_model_name=f"covidseg {model}"[:64],
        software_versions=f"covidseg {version}", device_serial_number="0", series_description=f"covidseg {model} {model_version}"[:64],
    )  # fmt: skip
    path = Path(path)
    seg.save_as(path)
    return path


def model_identity(paths) -> tuple[str, str]:
    """``(name, version)`` of the model(s) for the algorithm identification: a built-in model's
    card name and version; a plain checkpoint or ONNX file: its file stem, version ``unversioned``."""
    from covidseg.model.pretrained import card

    names, versions = [], []
    for path in map(Path, paths):
        info = card(path) if path.suffix.lower() == ".ckpt" else {}
        names.append(str(info.get("name") or path.stem))
        versions.append(str(info.get("version") or "unversioned"))
    return "+".join(names), "+".join(dict.fromkeys(versions))
