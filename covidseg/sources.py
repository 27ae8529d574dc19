"""Finding image/mask pairs on disk, their patient (case) ids, and validating them.

Three layouts are detected from each root folder:

1. Kaggle "COVID-19 CT scan lesion segmentation": ``frames/`` and ``masks/`` with identical
   file names; the case id is parsed from the name (``Jun_coronacases_case10_100`` ->
   ``Jun_coronacases_case10``, ``Morozov_study_0255_12`` -> ``Morozov_study_0255``;
   ``bjorke_17`` has no patient id and stays one case per slice).
2. ``images/`` and ``masks/`` matched by file stem (``12.jpg`` with ``12.png``); the case id
   is the stem unless ``case_regex`` says otherwise.
3. A folder with ``manifest.csv`` (columns ``image,mask[,case_id]``, paths relative to it).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from tqdm.auto import tqdm

from covidseg.errors import CovidSegError
from covidseg.io import IMAGE_SUFFIXES, ImageReadError, binarize_mask, read_image

# Kaggle names: the source prefix and patient, then the slice index.
KAGGLE_CASE_REGEX = r"^((?:Jun|Morozov)_.+?)_\d+$"

EmptyMaskPolicy = Literal["keep", "drop", "error"]
NonBinaryMaskPolicy = Literal["binarize", "error"]


class DataError(CovidSegError):
    """Input data a user can fix; the message names each offending file."""


@dataclass(frozen=True)
class Sample:
    """One image/mask pair: paths as found, its case (patient) id, its source folder's name and
    ``rel``, the image path relative to that folder. ``key`` (``source/rel``) names the slice in
    ``splits.csv`` and checkpoints, so a split survives moving the data or the run."""

    image: str
    mask: str
    case_id: str
    source: str
    rel: str = ""
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
    nonbinary: int
    dropped: int

    def summary(self) -> str:
        cases = len({s.case_id for s in self.samples})
        roots = ", ".join(f"{root} ({layout})" for root, layout in self.layouts.items())
        return (
            f"data: {len(self.samples)} pairs, {cases} cases from {roots}; "
            f"{self.empty} masks without lesion{' (dropped %d)' % self.dropped if self.dropped else ''}, "
            f"{self.nonbinary} non-binary masks binarised, lesion fraction {100 * self.lesion_fraction:.2f}% of pixels; "
            f"{sum(s.lungs is not None for s in self.samples)} with lung masks"
        )


def case_id_from_name(stem: str, regex: str | None = None) -> str:
    """Patient id from a file stem: first group of ``regex`` if it matches, else the stem."""
    match = re.match(regex, stem) if regex else None
    if match:
        return match.group(1) if match.groups() else match.group(0)
    return stem


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def detect_layout(root: Path) -> str:
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "manifest.csv").is_file():
        return "manifest"
    if (root / "frames").is_dir() and (root / "masks").is_dir():
        return "kaggle"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "images-masks"
    raise DataError(
        f"{root}: no data layout found; expected manifest.csv, frames/+masks/ or images/+masks/"
    )


def _pairs_from_folders(root: Path, image_dir: str, regex: str | None, exact_names: bool, problems: list[str]) -> list[tuple[Path, Path, str]]:
    images, masks = _images_in(root / image_dir), _images_in(root / "masks")
    if exact_names:  # Kaggle: identical file names
        images = {p.name: p for p in images.values()}
        masks = {p.name: p for p in masks.values()}
    for key in sorted(images.keys() - masks.keys()):
        problems.append(f"{images[key]}: image without mask (expected masks/{key}{'' if exact_names else '.*'})")
    for key in sorted(masks.keys() - images.keys()):
        problems.append(f"{masks[key]}: mask without image")
    return [(images[k], masks[k], case_id_from_name(images[k].stem, regex)) for k in sorted(images.keys() & masks.keys())]


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
        bad = [f"{p}: {kind} listed on line {i} does not exist" for p, kind in ((image, "image"), (mask, "mask")) if not p.is_file()]
        if bad:
            problems.extend(bad)
            continue
        pairs.append((image, mask, (row.get("case_id") or "").strip() or image.stem))
    return pairs


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # a manifest may point outside its folder
        return path.resolve().as_posix()


def find_pairs(roots: Iterable[str | Path], case_regex: str | None = None) -> tuple[list[Sample], dict[str, str], list[str]]:
    """Lists (image, mask, case_id) for every root, with the problems found on the way.

    With several roots, case ids are prefixed with the root's folder name so that two
    sources never share a patient id by accident.
    """
    roots = [Path(r) for r in roots]
    samples, layouts, problems = [], {}, []
    prefix = len(roots) > 1
    for root in roots:
        layout = detect_layout(root)
        layouts[str(root)] = layout
        if layout == "manifest":
            pairs = _pairs_from_manifest(root, problems)
            if case_regex:
                pairs = [(i, m, case_id_from_name(i.stem, case_regex)) for i, m, _ in pairs]
        elif layout == "kaggle":
            pairs = _pairs_from_folders(root, "frames", case_regex or KAGGLE_CASE_REGEX, True, problems)
        else:
            pairs = _pairs_from_folders(root, "images", case_regex, False, problems)
        if not pairs and not problems:
            problems.append(f"{root}: no image/mask pairs found ({layout} layout)")
        source = root.resolve().name
        lungs = lung_masks(root, layout, [i for i, _, _ in pairs])
        samples += [Sample(str(i), str(m), f"{source}/{c}" if prefix else c, source, _relative(i, root), lungs.get(i)) for i, m, c in pairs]
    return samples, layouts, problems


def lung_masks(root: Path, layout: str, images: list[Path]) -> dict[Path, str]:
    """Image -> lung mask path, where the source has them: the ``lung_mask`` column of a manifest
    (empty cells: none) or a ``lungs/`` folder beside ``masks/`` (same file name, else same stem).
    Images without one train the lesion output only (partial labels)."""
    if layout == "manifest":
        with (root / "manifest.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        by_image = {root / r["image"]: (r.get("lung_mask") or "").strip() for r in rows if "image" in r}
        return {i: str(root / by_image[i]) for i in images if by_image.get(i)}
    folder = root / "lungs"
    if not folder.is_dir():
        return {}
    found = _images_in(folder)
    by_name = {p.name: p for p in found.values()}
    out = {}
    for image in images:
        match = by_name.get(image.name) or found.get(image.stem)
        if match is not None:
            out[image] = str(match)
    return out


def scan(
    roots: Iterable[str | Path],
    case_regex: str | None = None,
    empty_masks: EmptyMaskPolicy = "keep",
    nonbinary_masks: NonBinaryMaskPolicy = "binarize",
    progress: bool = True,
) -> ScanReport:
    """Finds and validates every pair; raises ``DataError`` listing every problem at once.

    Checks: image and mask readable, same height and width, mask binary (or binarised by
    policy), mask with lesion (or kept/dropped by policy). Nothing is dropped silently: the
    report counts what was dropped.
    """
    samples, layouts, problems = find_pairs(roots, case_regex)
    kept, empty, nonbinary, lesion_px, total_px = [], 0, 0, 0, 0
    for s in tqdm(samples, desc="checking pairs", disable=not progress or len(samples) < 200, leave=False):
        try:
            image = read_image(s.image)
            raw_mask = read_image(s.mask)
        except ImageReadError as err:
            problems.append(str(err))
            continue
        if image.shape != raw_mask.shape:
            problems.append(f"{s.image}: image {image.shape[1]}x{image.shape[0]} but mask {s.mask} is {raw_mask.shape[1]}x{raw_mask.shape[0]}")
            continue
        if s.lungs is not None:
            try:
                lung_shape = read_image(s.lungs).shape
            except ImageReadError as err:
                problems.append(str(err))
                continue
            if lung_shape != image.shape:
                problems.append(f"{s.image}: image {image.shape[1]}x{image.shape[0]} but lung mask {s.lungs} is {lung_shape[1]}x{lung_shape[0]}")
                continue
        if len(np.unique(raw_mask)) > 2:
            nonbinary += 1
            if nonbinary_masks == "error":
                problems.append(f"{s.mask}: mask is not binary ({len(np.unique(raw_mask))} distinct values)")
                continue
        mask = binarize_mask(raw_mask)
        lesion = int(mask.sum())
        if lesion == 0:
            empty += 1
            if empty_masks == "error":
                problems.append(f"{s.mask}: mask has no lesion (empty_masks=error)")
                continue
            if empty_masks == "drop":
                continue
        lesion_px += lesion
        total_px += mask.size
        kept.append(s)
    if problems:
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DataError(f"{len(problems)} problem(s) in the input data:\n  " + "\n  ".join(shown) + more)
    if not kept:
        raise DataError("no usable image/mask pairs in " + ", ".join(layouts))
    dropped = empty if empty_masks == "drop" else 0
    return ScanReport(kept, layouts, empty, lesion_px / max(total_px, 1), nonbinary, dropped)
