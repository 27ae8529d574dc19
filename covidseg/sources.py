"""Finding image/mask pairs on disk, their patient (case) ids, and validating them.

(About 390 lines, past the ~300 of the house style on purpose: every layout's discovery and
its validation are one contract, kept in one place.)

Layouts detected from each root folder (slices are 2D image files, volumes NIfTI ``.nii(.gz)``):

1. Kaggle "COVID-19 CT scan lesion segmentation": ``frames/`` and ``masks/`` with identical
   file names; the case id is parsed from the name (``Jun_coronacases_case10_100`` ->
   ``Jun_coronacases_case10``, ``Morozov_study_0255_12`` -> ``Morozov_study_0255``;
   ``bjorke_17`` has no patient id and stays one case per slice).
2. ``images/`` and ``masks/`` matched by file stem (``12.jpg`` with ``12.png``,
   ``ct_01.nii.gz`` with ``ct_01.nii``); the case id is the stem unless ``case_regex`` says
   otherwise.
3. A folder with ``manifest.csv`` (columns ``image,mask[,case_id]``, paths relative to it),
   rows naming slices or volumes (NIfTI files, or DICOM series folders with NIfTI masks).
4. nnU-Net / Medical Segmentation Decathlon: ``imagesTr/CASE_0000.nii.gz`` with
   ``labelsTr/CASE.nii.gz``; ``dataset.json`` label names, when present, name the labels in
   the error that asks for ``lesion_labels``.

A volume is one case; each of its axial slices (display order, see ``covidseg.volumes``) is a
``Sample`` with ``slice`` set. Masks go through the one label rule ``io.lesion_mask``: binary
masks need nothing, label maps need ``lesion_labels`` (never a silent binarisation).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from tqdm.auto import tqdm

from covidseg.errors import CovidSegError
from covidseg.io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    format_values,
    grey_level_message,
    is_binary,
    is_grey_level,
    lesion_mask,
    lung_mask,
    mask_values,
    read_image,
    read_label_map,
    read_mask,
)
from covidseg.volumes import LUNG_WINDOW, VolumeReadError, cache_note, cache_volume, display_affine, is_volume, read_hu_slice, read_mask_slice, read_slice, volume_stem

# Kaggle names: the source prefix and patient, then the slice index.
KAGGLE_CASE_REGEX = r"^((?:Jun|Morozov)_.+?)_\d+$"
NNUNET_CHANNEL = "_0000"

EmptyMaskPolicy = Literal["keep", "drop", "error"]


class DataError(CovidSegError):
    """Input data a user can fix; the message names each offending file."""


@dataclass(frozen=True)
class Sample:
    """One image/mask pair: paths as found, its case (patient) id, its source folder's name and
    ``rel``, the image path relative to that folder; for a volume, ``slice`` is the axial slice
    (display order, see ``covidseg.volumes``) and the mask is a volume too. ``key``
    (``source/rel``) names the slice, or the volume, in ``splits.csv`` and checkpoints, so a
    split survives moving the data or the run (a volume is one case: all its slices share it)."""

    image: str
    mask: str
    case_id: str
    source: str
    rel: str = ""
    slice: int | None = None
    lungs: str | None = None  # lung mask, where the source has one (manifest lung_mask, lungs/ folder)

    @property
    def key(self) -> str:
        return f"{self.source}/{self.rel or Path(self.image).name}"


@dataclass
class ScanReport:
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
            f"{sum(s.lungs is not None for s in self.samples)} with lung masks"
        ) + "".join(f"; {note}" for note in self.notes)


def load_image(sample: Sample, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """The raw input of a sample, ``[H, W]``: the image file's own dtype, or the volume slice
    through the HU ``window`` (``uint8``, as predict windows volumes)."""
    if sample.slice is None:
        return read_image(sample.image)
    return read_hu_slice(sample.image, sample.slice, window)


def load_mask(sample: Sample, lesion_labels: list[int] | None = None) -> np.ndarray:
    """The mask of a sample, ``uint8 [H, W]`` in {0, 1}: ``io.read_mask`` or its volume
    equivalent, one label rule for training and evaluation."""
    if sample.slice is None:
        return read_mask(sample.mask, lesion_labels)
    return read_mask_slice(sample.mask, sample.slice, lesion_labels)


def load_lungs(sample: Sample, lung_labels: list[int] | None = None) -> np.ndarray:
    """The lung mask of a sample that has one, ``uint8 [H, W]`` in {0, 1} through the lung
    rule ``io.lung_mask`` (every non-zero value, or ``lung_labels``): a 2D file read as stored,
    or the sample's slice of a lung mask volume."""
    assert sample.lungs is not None
    raw = read_label_map(sample.lungs) if sample.slice is None else read_slice(sample.lungs, sample.slice)
    return lung_mask(raw, lung_labels)


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


def _stem(path: Path) -> str:
    return volume_stem(path) if is_volume(path) else path.name if path.is_dir() else path.stem


def _is_3d(path: str | Path) -> bool:
    """A NIfTI file or a folder (a DICOM series, e.g. named in a manifest)."""
    return is_volume(path) or Path(path).is_dir()


def _files_in(folder: Path) -> dict[str, Path]:
    """Slices and volumes in ``folder`` by stem."""
    return {_stem(p): p for p in sorted(folder.iterdir()) if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_volume(p))}


def detect_layout(root: Path) -> str:
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "manifest.csv").is_file():
        return "manifest"
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return "nnunet"
    if (root / "frames").is_dir() and (root / "masks").is_dir():
        return "kaggle"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "images-masks"
    raise DataError(
        f"{root}: no data layout found; expected manifest.csv, imagesTr/+labelsTr/, frames/+masks/ or images/+masks/"
    )


def label_names(root: str | Path) -> dict[int, str]:
    """Label value -> name from an nnU-Net/MSD ``dataset.json`` (v1 ``{"1": "GGO"}`` or v2
    ``{"GGO": 1}``); empty when there is none or it cannot be read."""
    path = Path(root) / "dataset.json"
    try:
        labels = json.loads(path.read_text()).get("labels", {})
        names = {}
        for k, v in labels.items():
            value, name = (int(k), str(v)) if str(k).lstrip("-").isdigit() else (int(v), str(k))
            names[value] = name
        return names
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _pairs_from_folders(root: Path, image_dir: str, regex: str | None, exact_names: bool, problems: list[str], mask_dir: str = "masks") -> list[tuple[Path, Path, str]]:
    images, masks = _files_in(root / image_dir), _files_in(root / mask_dir)
    if image_dir == "imagesTr":  # nnU-Net: CASE_0000.nii.gz is channel 0 of CASE
        for key, path in images.items():
            if not key.endswith(NNUNET_CHANNEL):
                problems.append(f"{path}: not named CASE{NNUNET_CHANNEL}.nii.gz (covidseg reads one CT channel, _0000)")
        images = {k.removesuffix(NNUNET_CHANNEL): p for k, p in images.items() if k.endswith(NNUNET_CHANNEL)}
    if exact_names:  # Kaggle: identical file names
        images = {p.name: p for p in images.values()}
        masks = {p.name: p for p in masks.values()}
    for key in sorted(images.keys() - masks.keys()):
        problems.append(f"{images[key]}: image without mask (expected {mask_dir}/{key}{'' if exact_names else '.*'})")
    for key in sorted(masks.keys() - images.keys()):
        problems.append(f"{masks[key]}: mask without image")
    return [(images[k], masks[k], case_id_from_name(k if image_dir == "imagesTr" else _stem(images[k]), regex)) for k in sorted(images.keys() & masks.keys())]


def _pairs_from_manifest(root: Path, problems: list[str]) -> list[tuple[Path, Path, str]]:
    manifest = root / "manifest.csv"
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}; expected image,mask[,case_id]")
        rows = list(reader)
    pairs = []
    for i, row in enumerate(rows, start=2):
        image, mask = root / row["image"], root / row["mask"]
        bad = [f"{p}: {kind} listed on line {i} does not exist" for p, kind in ((image, "image"), (mask, "mask")) if not p.exists()]
        if bad:
            problems.extend(bad)
            continue
        pairs.append((image, mask, (row.get("case_id") or "").strip() or _stem(image)))
    return pairs


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # a manifest may point outside its folder
        return path.resolve().as_posix()


def find_pairs(
    roots: Iterable[str | Path], case_regex: str | None = None, notes: list[str] | None = None
) -> tuple[list[Sample], dict[str, str], list[str]]:
    """Lists (image, mask, case_id) for every root, with the problems found on the way. With
    ``case_regex``, how many stems it matched goes to ``notes`` (``DataError`` when none).

    A volume pair comes out as one ``Sample`` with ``slice=None``; ``scan`` checks it and
    expands it into its slices. With several roots, case ids are prefixed with the root's
    folder name so that two sources never share a patient id by accident.
    """
    roots = [Path(r) for r in roots]
    samples, layouts, problems = [], {}, []
    stems: list[str] = []  # what case_regex is matched against
    if case_regex:
        compile_case_regex(case_regex)
    prefix = len(roots) > 1
    for root in roots:
        layout = detect_layout(root)
        layouts[str(root)] = layout
        if layout == "manifest":
            pairs = _pairs_from_manifest(root, problems)
            if case_regex:
                pairs = [(i, m, case_id_from_name(_stem(i), case_regex)) for i, m, _ in pairs]
        elif layout == "kaggle":
            pairs = _pairs_from_folders(root, "frames", case_regex or KAGGLE_CASE_REGEX, True, problems)
        elif layout == "nnunet":
            pairs = _pairs_from_folders(root, "imagesTr", case_regex, False, problems, mask_dir="labelsTr")
        else:
            pairs = _pairs_from_folders(root, "images", case_regex, False, problems)
        if not pairs and not problems:
            problems.append(f"{root}: no image/mask pairs found ({layout} layout)")
        stems += [_stem(i).removesuffix(NNUNET_CHANNEL) if layout == "nnunet" else _stem(i) for i, _, _ in pairs]
        source = root.resolve().name
        lungs = lung_masks(root, layout, [i for i, _, _ in pairs])
        samples += [Sample(str(i), str(m), f"{source}/{c}" if prefix else c, source, _relative(i, root), lungs=lungs.get(i)) for i, m, c in pairs]
    if case_regex:
        line = check_case_regex(case_regex, stems)
        if notes is not None:
            notes.append(line)
    return samples, layouts, problems


def lung_masks(root: Path, layout: str, images: list[Path]) -> dict[Path, str]:
    """Image -> lung mask path, where the source has them (slices or volumes): the ``lung_mask``
    column of a manifest (empty cells: none) or a ``lungs/`` folder beside ``masks/`` (or
    ``labelsTr/``; same file name, else same stem, nnU-Net: ``CASE``). Images without one train
    the lesion output only (partial labels)."""
    if layout == "manifest":
        with (root / "manifest.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        by_image = {root / r["image"]: (r.get("lung_mask") or "").strip() for r in rows if "image" in r}
        return {i: str(root / by_image[i]) for i in images if by_image.get(i)}
    folder = root / "lungs"
    if not folder.is_dir():
        return {}
    found = _files_in(folder)
    by_name = {p.name: p for p in found.values()}
    out = {}
    for image in images:
        stem = _stem(image)
        match = by_name.get(image.name) or found.get(stem) or (found.get(stem.removesuffix(NNUNET_CHANNEL)) if layout == "nnunet" else None)
        if match is not None:
            out[image] = str(match)
    return out


def data_kind(roots: Iterable[str | Path]) -> str:
    """``volume`` or ``image``: what the roots hold, judged from their first pair (cheap, no
    decoding). Raises ``DataError`` for a missing root or roots of both kinds."""
    kinds = set()
    for root in map(Path, roots):
        samples, _, _ = find_pairs([root])
        kinds |= {"volume" if _is_3d(s.image) else "image" for s in samples[:1]}
    if len(kinds) > 1:
        raise DataError("the data roots hold both 2D slices and volumes; their intensity protocols differ (8-bit image vs HU window): train on one kind")
    return kinds.pop() if kinds else "image"


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


def _check_lungs(path: str, values: list, problems: list[str], lung_values: set) -> bool:
    """A lung mask's values: anything but grey levels (lungs are every non-zero value, or the
    ``lung_labels``); records the problem and returns ``False`` otherwise."""
    if is_grey_level(values):
        problems.append(f"{path}: lung {grey_level_message(values)}")
        return False
    lung_values |= set(values)
    return True


def _check_volume(
    s: Sample, lesion_labels: list[int] | None, problems: list[str], labelled: list, lung_values: set
) -> tuple[list[tuple[Sample, int]], list, int] | None:
    """Decodes (into the slice cache) and checks one volume pair and its lung mask volume, if
    any. Returns its slice samples (each with its lung mask) with their lesion pixel counts, the
    mask's values and the pixels per slice, or ``None`` with the problem recorded."""
    if not _is_3d(s.mask):
        problems.append(f"{s.mask}: the mask of volume {s.image} is not a volume")
        return None
    if s.lungs is not None and not is_volume(s.lungs):
        problems.append(f"{s.lungs}: the lung mask of volume {s.image} is not a NIfTI volume")
        return None
    try:
        image, mask = cache_volume(s.image), cache_volume(s.mask, mask=True)
        lungs = cache_volume(s.lungs, mask=True) if s.lungs is not None else None
    except VolumeReadError as err:
        problems.append(str(err))
        return None
    bad = [_geometry_problem(image, m, p, w, s.image) for m, p, w in ((mask, s.mask, ""), (lungs, s.lungs, "the lung mask ")) if m is not None]
    if any(bad):
        problems.extend(b for b in bad if b)
        return None
    values = list(mask.values)
    if is_grey_level(values) or (lesion_labels is None and not is_binary(values, np.dtype(mask.dtype))):
        labelled.append((s.mask, values))
        return None
    if lungs is not None and not _check_lungs(s.lungs, list(lungs.values), problems, lung_values):
        return None
    arr = np.load(mask.cache, mmap_mode="r")
    slices = [(replace(s, slice=k), int(lesion_mask(arr[k], lesion_labels, s.mask).sum())) for k in range(arr.shape[0])]
    return slices, values, mask.shape[1] * mask.shape[2]


def scan(
    roots: Iterable[str | Path],
    case_regex: str | None = None,
    empty_masks: EmptyMaskPolicy = "keep",
    lesion_labels: list[int] | None = None,
    progress: bool = True,
    lung_labels: list[int] | None = None,
) -> ScanReport:
    """Finds and validates every pair; raises ``DataError`` listing every problem at once.

    Checks: image and mask readable, same height and width (volumes: 3D, same shape and
    affine; truncated files are found here, before training), masks binary unless
    ``lesion_labels`` map them, mask with lesion (or kept/dropped by policy); lung masks
    readable, on the image's pixels, not grey levels, and holding a ``lung_labels`` value
    somewhere when those are given (lungs: every non-zero value otherwise). Nothing is
    dropped silently: the report counts what was dropped. Volumes are decoded once into the
    slice cache on the way (``volumes.cache_volume``).
    """
    roots = list(roots)
    notes: list[str] = []
    samples, layouts, problems = find_pairs(roots, case_regex, notes)
    labelled: list[tuple[str, list]] = []
    kept, empty, dropped, lesion_px, total_px, volumes, values, any_lesion, lung_values = [], 0, 0, 0, 0, 0, set(), False, set()
    for s in tqdm(samples, desc="checking pairs", disable=not progress or len(samples) < 200, leave=False):
        if _is_3d(s.image):
            checked = _check_volume(s, lesion_labels, problems, labelled, lung_values)
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
            if image.shape != raw_mask.shape:
                problems.append(f"{s.image}: image {image.shape[1]}x{image.shape[0]} but mask {s.mask} is {raw_mask.shape[1]}x{raw_mask.shape[0]}")
                continue
            if s.lungs is not None:
                try:
                    raw_lungs = read_label_map(s.lungs)
                except ImageReadError as err:
                    problems.append(str(err))
                    continue
                if raw_lungs.shape != image.shape:
                    problems.append(f"{s.image}: image {image.shape[1]}x{image.shape[0]} but lung mask {s.lungs} is {raw_lungs.shape[1]}x{raw_lungs.shape[0]}")
                    continue
                if not _check_lungs(s.lungs, mask_values(raw_lungs), problems, lung_values):
                    continue
            found = mask_values(raw_mask)
            if is_grey_level(found) or (lesion_labels is None and not is_binary(found, raw_mask.dtype)):
                labelled.append((s.mask, found))
                continue
            values |= set(found)
            pixels = raw_mask.size
            pairs = [(s, int(lesion_mask(raw_mask, lesion_labels, s.mask).sum()))]
        # empty_masks applies to the unit of a case: a slice file, or a whole volume (a volume
        # with lesion keeps its lesion-free slices; one without is kept, dropped or refused whole)
        volume_empty = _is_3d(s.image) and not any(lesion for _, lesion in pairs)
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
    if volumes and (note := cache_note()):
        notes.append(note)
    return ScanReport(kept, layouts, empty, lesion_px / max(total_px, 1), dropped, volumes, sorted(values), None if lesion_labels is None else list(lesion_labels), notes)

