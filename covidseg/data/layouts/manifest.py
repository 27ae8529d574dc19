"""The manifest layout: a folder with ``manifest.csv`` (columns ``image,mask[,case_id][,lung_mask]``,
paths relative to it), rows naming slices or volumes (NIfTI files, or DICOM series folders with
NIfTI masks)."""

from __future__ import annotations

import csv
from pathlib import Path

from covidseg.data.layouts.folders import file_stem
from covidseg.errors import DataError


def pairs_from_manifest(root: Path, problems: list[str]) -> list[tuple[Path, Path, str]]:
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
        pairs.append((image, mask, (row.get("case_id") or "").strip() or file_stem(image)))
    return pairs


def lung_masks_from_manifest(root: Path, images: list[Path]) -> dict[Path, str]:
    """Image -> lung mask path from the manifest's ``lung_mask`` column (empty cells: none)."""
    with (root / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_image = {root / r["image"]: (r.get("lung_mask") or "").strip() for r in rows if "image" in r}
    return {i: str(root / by_image[i]) for i in images if by_image.get(i)}
