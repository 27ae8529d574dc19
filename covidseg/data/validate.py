"""Validating the pairs the layouts find, every problem named at once, before anything trains.

``validate_data(roots, ...)`` finds the pairs of every root (``layouts.find``) and checks them:
images and masks readable and of one size (volumes: 3D, same shape and affine; decoded once into
the slice cache on the way), masks binary unless ``lesion_labels`` map them (never a silent
binarisation: a label map without them is refused, naming the values, and ``dataset.json``
names, when there are some), lung masks on their image's pixels and not grey levels, empty
masks kept, dropped (counted) or refused. A volume is one case; each of its axial slices
(display order, see ``covidseg.data.volumes``) becomes a ``Sample`` with ``slice`` set. All
problems are raised together as one ``DataError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from tqdm.auto import tqdm

from covidseg.data.cache import cache_note, cache_volume
from covidseg.data.io import ImageReadError, format_values, grey_level_message, is_binary, is_grey_level, lesion_mask, mask_values, read_image, read_label_map
from covidseg.data.classes import attach_classes, class_problem, class_targets, resolve_lesion_classes
from covidseg.data.layouts.find import find_pairs, source_names
from covidseg.data.layouts.folders import is_3d
from covidseg.data.layouts.nnunet import label_names
from covidseg.data.samples import Sample, lesion_labels_of
from covidseg.data.volumes import display_affine, is_volume
from covidseg.errors import DataError, VolumeReadError

EmptyMaskPolicy = Literal["keep", "drop", "error"]


@dataclass
class DataReport:
    """What ``validate_data`` found: the usable samples and what was counted on the way."""

    samples: list[Sample]
    layouts: dict[str, str]
    empty: int
    lesion_fraction: float
    dropped: int
    volumes: int = 0
    mask_values: list = field(default_factory=list)
    lesion_labels: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        cases = len({s.case_id for s in self.samples})
        roots = ", ".join(f"{root} ({layout})" for root, layout in self.layouts.items())
        labels = f"lesion labels {self.lesion_labels} of {format_values(self.mask_values)}" if self.lesion_labels is not None else "binary masks"
        return (
            f"data: {len(self.samples)} {'slices' if self.volumes else 'pairs'}, {cases} cases{f' ({self.volumes} volumes)' if self.volumes else ''} from {roots}; "
            f"{self.empty} masks without lesion{' (dropped %d)' % self.dropped if self.dropped else ''}, "
            f"{labels}, lesion fraction {100 * self.lesion_fraction:.2f}% of pixels; "
            f"{sum(s.lung_mask is not None for s in self.samples)} with lung masks"
        ) + "".join(f"; {note}" for note in self.notes)


def _files(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _label_problems(labelled: list[tuple[str, list]], names: dict[int, str]) -> list[str]:
    """One line for the label maps (every non-zero value listed, as a ``lesion_labels`` to
    start from) and one for grey-level masks (no label list can fix those)."""
    out = []
    grey = [(f, vs) for f, vs in labelled if is_grey_level(vs)]
    maps = [(f, vs) for f, vs in labelled if not is_grey_level(vs)]
    if maps:
        values = sorted({v for _, vs in maps for v in vs})
        nonzero = [v for v in values if v != 0]
        named = [f"{v} {names[v]}" for v in nonzero if v in names]
        hint = f" (dataset.json: {', '.join(named)})" if named else ""
        example = "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in nonzero) + "]"
        out.append(
            f"{len(maps)} mask(s) have label values {format_values(values)}{hint} ({_files([f for f, _ in maps])}); "
            f'pass --data.lesion_labels to say which labels are lesion, e.g. "{example}" for every non-zero value'
        )
    if grey:
        values = sorted({v for _, vs in grey for v in vs})
        out.append(f"{len(grey)} {grey_level_message(values).replace('mask holds', 'mask(s) hold', 1)} ({_files([f for f, _ in grey])})")
    return out


def _geometry_problem(image, other, path: str, what: str, image_path: str) -> str | None:
    """Why a mask volume ``other`` does not lie on its image's voxels, or ``None``.

    Compared in world space on the display grid (``volumes.display_affine``), where both cached
    arrays already are: a mask stored in another voxel order (another tool's writer) but on the
    same voxels is accepted, and is read reoriented like its image; only a real mismatch of
    shape, position, spacing or direction is refused."""
    if image.shape == other.shape:
        a, b = display_affine(np.array(image.affine), image.shape), display_affine(np.array(other.affine), other.shape)
        if np.allclose(a, b, rtol=1e-4, atol=1e-3):
            return None
    diff = float(np.abs(np.subtract(a, b)).max()) if image.shape == other.shape else None
    why = f"affine differs by up to {diff:.3g} mm, compared in world space" if diff is not None else f"shape {'x'.join(map(str, other.shape))} vs image {'x'.join(map(str, image.shape))} (slices x rows x columns)"
    return f"{path}: {what}does not match its image {image_path}: {why}"


def _size_problem(image: np.ndarray, other: np.ndarray, path: str, what: str, image_path: str) -> str | None:
    """A 2D mask of another height or width than its image (width x height, as viewers show)."""
    if image.shape == other.shape:
        return None
    return f"{image_path}: image {image.shape[1]}x{image.shape[0]} but {what} {path} is {other.shape[1]}x{other.shape[0]}"


def _check_lungs(path: str, values: list, problems: list[str], lung_values: set) -> bool:
    """A lung mask's values: anything but grey levels (lungs are every non-zero value, or the
    ``lung_labels``); records the problem and returns ``False`` otherwise."""
    if is_grey_level(values):
        problems.append(f"{path}: lung {grey_level_message(values)}")
        return False
    lung_values |= set(values)
    return True


def _check_classes(s: Sample, image: np.ndarray, raw_mask: np.ndarray, lesion: np.ndarray, problems: list[str]) -> bool:
    """A 2D class label map: readable, on the image's pixels, no value its mapping does not name
    and, when it is a file of its own, its classes' union is the mask's lesion; records the
    problem and returns ``False`` otherwise."""
    try:
        raw = raw_mask if s.class_mask == s.mask else read_label_map(s.class_mask)
    except ImageReadError as err:
        problems.append(str(err))
        return False
    if why := _size_problem(image, raw, s.class_mask, "class label map", s.image):
        problems.append(why)
        return False
    if s.class_mask != s.mask and (why := class_problem(s.class_mask, mask_values(raw), s.classes, s.source)):
        problems.append(why)
        return False
    differ = int((class_targets(raw, s.classes).any(0) != lesion.astype(bool)).sum())
    if differ:
        problems.append(f"{s.class_mask}: its classes' union differs from the lesion of its mask {s.mask} on {differ} pixels")
        return False
    return True


def _check_volume(
    s: Sample, lesion_labels: list[int] | None, problems: list[str], labelled: list, lung_values: set
) -> tuple[list[tuple[Sample, int]], list, int] | None:
    """Decodes (into the slice cache) and checks one volume pair and its lung mask volume, if
    any. Returns its slice samples (each with its lung mask) with their lesion pixel counts, the
    mask's values and the pixels per slice, or ``None`` with the problem recorded."""
    if not is_3d(s.mask):
        problems.append(f"{s.mask}: the mask of volume {s.image} is not a volume")
        return None
    if s.lung_mask is not None and not is_volume(s.lung_mask):
        problems.append(f"{s.lung_mask}: the lung mask of volume {s.image} is not a NIfTI volume")
        return None
    separate = s.classes is not None and s.class_mask != s.mask
    try:
        image, mask = cache_volume(s.image), cache_volume(s.mask, mask=True)
        lungs = cache_volume(s.lung_mask, mask=True) if s.lung_mask is not None else None
        labels = cache_volume(s.class_mask, mask=True) if separate else None
    except VolumeReadError as err:
        problems.append(str(err))
        return None
    bad = [_geometry_problem(image, m, p, w, s.image) for m, p, w in ((mask, s.mask, ""), (lungs, s.lung_mask, "the lung mask "), (labels, s.class_mask, "the class label map ")) if m is not None]
    if any(bad):
        problems.extend(b for b in bad if b)
        return None
    values = list(mask.values)
    if is_grey_level(values) or (lesion_labels is None and not is_binary(values, np.dtype(mask.dtype))):
        labelled.append((s.mask, values))
        return None
    if labels is not None and (why := class_problem(s.class_mask, list(labels.values), s.classes, s.source)):
        problems.append(why)
        return None
    if lungs is not None and not _check_lungs(s.lung_mask, list(lungs.values), problems, lung_values):
        return None
    arr = np.load(mask.cache, mmap_mode="r")
    slices = [(replace(s, slice=k), int(lesion_mask(arr[k], lesion_labels, s.mask).sum())) for k in range(arr.shape[0])]
    return slices, values, mask.shape[1] * mask.shape[2]


def validate_data(
    roots: Iterable[str | Path],
    case_regex: str | None = None,
    empty_masks: EmptyMaskPolicy = "keep",
    lesion_labels: list[int] | None = None,
    progress: bool = True,
    lung_labels: list[int] | None = None,
    lesion_classes: dict | None = None,
) -> DataReport:
    """Finds and validates every pair; raises ``DataError`` listing every problem at once.

    Checks: image and mask readable, same height and width (volumes: 3D, same shape and
    affine; truncated files are found here, before training), masks binary unless
    ``lesion_labels`` map them, mask with lesion (or kept/dropped by policy); lung masks
    readable, on the image's pixels, not grey levels, and holding a ``lung_labels`` value
    somewhere when those are given (lungs: every non-zero value otherwise). Nothing is
    dropped silently: the report counts what was dropped. Volumes are decoded once into the
    slice cache on the way (``cache.cache_volume``). ``lesion_classes`` (``data.lesion_classes``)
    names the sources whose masks carry classes (``covidseg.data.classes``): their samples get
    ``class_mask`` and ``classes``, their label maps are checked too.
    """
    roots = list(roots)
    notes: list[str] = []
    samples, layouts, problems = find_pairs(roots, case_regex, notes)
    names = source_names([Path(r) for r in roots])
    classes = resolve_lesion_classes(lesion_classes, [str(r) for r in roots], names)
    samples = attach_classes(samples, [str(r) for r in roots], names, classes)
    labelled: list[tuple[str, list]] = []
    kept, empty, dropped, lesion_px, total_px, volumes, values, any_lesion, lung_values = [], 0, 0, 0, 0, 0, set(), False, set()
    for s in tqdm(samples, desc="checking pairs", disable=not progress or len(samples) < 200, leave=False):
        labels = lesion_labels_of(s, lesion_labels)
        if is_3d(s.image):
            checked = _check_volume(s, labels, problems, labelled, lung_values)
            if checked is None:
                continue
            pairs, found, pixels = checked
            volumes += 1
            values |= set(found)
        else:
            try:
                image = read_image(s.image)
                raw_mask = read_label_map(s.mask)
            except ImageReadError as err:
                problems.append(str(err))
                continue
            if why := _size_problem(image, raw_mask, s.mask, "mask", s.image):
                problems.append(why)
                continue
            if s.lung_mask is not None:
                try:
                    raw_lungs = read_label_map(s.lung_mask)
                except ImageReadError as err:
                    problems.append(str(err))
                    continue
                if why := _size_problem(image, raw_lungs, s.lung_mask, "lung mask", s.image):
                    problems.append(why)
                    continue
                if not _check_lungs(s.lung_mask, mask_values(raw_lungs), problems, lung_values):
                    continue
            found = mask_values(raw_mask)
            if is_grey_level(found) or (labels is None and not is_binary(found, raw_mask.dtype)):
                labelled.append((s.mask, found))
                continue
            lesion = lesion_mask(raw_mask, labels, s.mask)
            if s.classes is not None and not _check_classes(s, image, raw_mask, lesion, problems):
                continue
            values |= set(found)
            pixels = raw_mask.size
            pairs = [(s, int(lesion.sum()))]
        # empty_masks applies to the unit of a case: a slice file, or a whole volume (a volume
        # with lesion keeps its lesion-free slices; one without is kept, dropped or refused whole)
        volume_empty = is_3d(s.image) and not any(lesion for _, lesion in pairs)
        if volume_empty and empty_masks == "error":
            problems.append(f"{s.mask}: mask volume has no lesion (empty_masks=error)")
            continue
        for sample, lesion in pairs:
            any_lesion |= lesion > 0
            if lesion == 0:
                empty += 1
                if (sample.slice is None or volume_empty) and empty_masks == "error":
                    problems.append(f"{sample.mask}: mask has no lesion (empty_masks=error)")
                    continue
                if (sample.slice is None or volume_empty) and empty_masks == "drop":
                    dropped += 1
                    continue
            lesion_px += lesion
            total_px += pixels
            kept.append(sample)
    if labelled:
        names = {}
        for root in roots:
            names.update(label_names(root))
        label_lines = _label_problems(labelled, names)
        problems[:0] = label_lines
        if len(problems) == 1:
            raise DataError(problems[0])
    if problems:
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DataError(f"{len(problems)} problem(s) in the input data:\n  " + "\n  ".join(shown) + more)
    if lesion_labels is not None and not any_lesion and any(v != 0 for v in values):
        raise DataError(f"lesion_labels {list(lesion_labels)} match no mask value; the masks hold {format_values(sorted(values), limit=16)}")
    if not kept:
        raise DataError("no usable image/mask pairs in " + ", ".join(layouts))
    if lung_labels is not None and lung_values and not set(lung_labels) & lung_values:
        raise DataError(f"lung_labels {list(lung_labels)} match no lung mask value; the lung masks hold {format_values(sorted(lung_values), limit=16)}")
    if classes:
        n = sum(s.classes is not None for s in kept)
        notes.append(f"lesion classes (ggo, consolidation) on {n} of {len(kept)} {'slices' if volumes else 'pairs'} ({', '.join(classes)}); the others supervise their union only")
    if volumes and (note := cache_note()):
        notes.append(note)
    return DataReport(kept, layouts, empty, lesion_px / max(total_px, 1), dropped, volumes, sorted(values), None if lesion_labels is None else list(lesion_labels), notes)

