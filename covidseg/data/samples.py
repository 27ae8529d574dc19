"""A sample: one image/mask pair (or one axial slice of a volume pair) with its case, and how its
arrays are read.

``read_*`` functions read files (``io``, ``volumes``, ``cache``); the functions here take a
``Sample`` and read what it names: ``image_of`` (the model's raw input), ``mask_of`` (the lesion
mask through the one label rule), ``lung_mask_of`` (its lung mask through the lung rule) and
``classes_of`` (its GGO and consolidation targets, where its source has classes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidseg.data.cache import read_hu_slice, read_mask_slice, read_slice
from covidseg.data.classes import class_targets
from covidseg.data.io import lung_mask, read_image, read_label_map, read_mask
from covidseg.data.volumes import LUNG_WINDOW, apply_window
from covidseg.errors import DataError


@dataclass(frozen=True)
class Sample:
    """One image/mask pair: paths as found, its case (patient) id, its source folder's name and
    ``rel``, the image path relative to that folder; for a volume, ``slice`` is the axial slice
    (display order, see ``covidseg.data.volumes``) and the mask is a volume too. ``key``
    (``source/rel``) names the slice, or the volume, in ``splits.csv`` and checkpoints, so a
    split survives moving the data or the run (a volume is one case: all its slices share it)."""

    image: str
    mask: str
    case_id: str
    source: str
    rel: str = ""
    slice: int | None = None
    lung_mask: str | None = None  # where the source has one (manifest lung_mask column, lungs/ folder)
    class_mask: str | None = None  # a class source's label map (``covidseg.data.classes``)
    classes: tuple[tuple[int, int], ...] | None = None  # its label value -> class index pairs

    @property
    def key(self) -> str:
        return f"{self.source}/{self.rel or Path(self.image).name}"


def image_of(sample: Sample, window: tuple[float, float] = LUNG_WINDOW, hu: np.ndarray | None = None) -> np.ndarray:
    """The raw input of a sample, ``[H, W]``: the image file's own dtype, or the volume slice
    through the HU ``window`` (``uint8``, as predict windows volumes). ``hu``: that slice in HU
    when the caller has read it already (``cache.read_slice``), so the cache is not read twice."""
    if sample.slice is None:
        return read_image(sample.image)
    return read_hu_slice(sample.image, sample.slice, window) if hu is None else apply_window(hu, *window)


def lesion_labels_of(sample: Sample, lesion_labels: list[int] | None = None) -> list[int] | None:
    """The lesion values of a sample's mask: ``lesion_labels``, or where the mask is itself its
    class label map, every class value (``classes.union_labels``)."""
    if sample.classes is not None and sample.class_mask == sample.mask:
        return [v for v, _ in sample.classes]
    return lesion_labels


def mask_of(sample: Sample, lesion_labels: list[int] | None = None) -> np.ndarray:
    """The mask of a sample, ``uint8 [H, W]`` in {0, 1}: ``io.read_mask`` or its volume
    equivalent, one label rule for training and evaluation."""
    lesion_labels = lesion_labels_of(sample, lesion_labels)
    if sample.slice is None:
        return read_mask(sample.mask, lesion_labels)
    return read_mask_slice(sample.mask, sample.slice, lesion_labels)


def lung_mask_of(sample: Sample, lung_labels: list[int] | None = None) -> np.ndarray:
    """The lung mask of a sample that has one, ``uint8 [H, W]`` in {0, 1} through the lung
    rule ``io.lung_mask`` (every non-zero value, or ``lung_labels``): a 2D file read as stored,
    or the sample's slice of a lung mask volume."""
    assert sample.lung_mask is not None
    raw = read_label_map(sample.lung_mask) if sample.slice is None else read_slice(sample.lung_mask, sample.slice)
    return lung_mask(raw, lung_labels)


def classes_of(sample: Sample) -> np.ndarray | None:
    """The class targets of a sample whose source has class labels, ``uint8 [2, H, W]`` (GGO,
    consolidation; ``classes.class_targets``); ``None`` for a binary source."""
    if sample.classes is None:
        return None
    raw = read_label_map(sample.class_mask) if sample.slice is None else read_slice(sample.class_mask, sample.slice)
    return class_targets(raw, sample.classes)


def case_id_from_name(stem: str, regex: str | None = None) -> str:
    """Patient id from a file stem: first group of ``regex`` if it matches, else the stem."""
    match = re.match(regex, stem) if regex else None
    if match:
        return match.group(1) if match.groups() else match.group(0)
    return stem


def compile_case_regex(regex: str, flag: str = "--data.case_regex") -> re.Pattern:
    try:
        return re.compile(regex)
    except re.error as err:
        raise DataError(f"{flag} {regex!r}: not a valid regular expression ({err})") from None


def check_case_regex(regex: str, stems: list[str], flag: str = "--data.case_regex") -> str:
    """How many of ``stems`` (file names without extension: the pattern is matched against
    them, from their start) ``regex`` matches, as one line; ``DataError`` when the pattern is
    invalid or matches none of them (every file would silently be its own case)."""
    pattern = compile_case_regex(regex, flag)
    matched = [s for s in stems if pattern.match(s)]
    cases = len({case_id_from_name(s, regex) for s in matched})
    if stems and not matched:
        raise DataError(
            f"{flag} {regex!r} matches none of the {len(stems)} file name(s): it is applied to the file stem (the name "
            f"without extension, such as {stems[0]!r}) from its start; without a match each file would be its own case"
        )
    return f"{flag}: {len(matched)} of {len(stems)} file stems matched ({cases} cases; the others are a case each)"
