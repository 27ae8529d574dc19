"""Patient-level train/val/test splits and K-fold cross-validation, saved as ``splits.csv``.

A case (patient) never lands in two splits. Cases are shuffled with ``seed``; within each
source, the test split takes whole cases until it holds ``test_fraction`` of that source's
slices, then validation likewise, and the rest trains. With ``num_folds > 1`` each source's
non-test cases are dealt into folds (largest first, each to the fold with the fewest slices,
so folds hold similar slice counts) and fold ``fold`` validates.
"""

from __future__ import annotations

import csv
import os
import random
from collections import Counter, defaultdict
from pathlib import Path

from covidseg.data.samples import Sample
from covidseg.errors import DataError

SPLITS = ("train", "val", "test")


def _take(cases: list[str], sizes: dict[str, int], target: float) -> tuple[list[str], list[str]]:
    """Moves whole cases from the front of ``cases`` until ``target`` slices are taken, always
    leaving at least one case behind (a source never loses all of its training data)."""
    taken, total = [], 0
    while len(cases) > 1 and total < target:
        case = cases.pop(0)
        taken.append(case)
        total += sizes[case]
    return taken, cases


def assign_splits(
    samples: list[Sample],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    num_folds: int = 1,
    fold: int = 0,
) -> dict[str, str]:
    """Maps each image path to ``train``, ``val`` or ``test``, grouping by case id.

    Stratified by source: each data folder contributes its own share of slices to every split
    and every fold, so a small source is never left out of validation.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1")
    if num_folds > 1 and not 0 <= fold < num_folds:
        raise DataError(f"fold={fold} must be in [0, {num_folds - 1}] for num_folds={num_folds}")
    sizes: dict[str, int] = defaultdict(int)
    source_of: dict[str, str] = {}
    for s in samples:
        sizes[s.case_id] += 1
        source_of[s.case_id] = s.source
    if len(sizes) < 2:
        raise DataError(f"only {len(sizes)} case(s) found: patient-level splitting needs at least 2")
    cases = sorted(sizes)
    random.Random(seed).shuffle(cases)
    which: dict[str, str] = {}
    for source in sorted(set(source_of.values())):
        mine = [c for c in cases if source_of[c] == source]
        n = sum(sizes[c] for c in mine)
        test, rest = _take(mine, sizes, test_fraction * n) if test_fraction > 0 else ([], mine)
        if num_folds > 1:
            val = _fold(rest, sizes, num_folds, fold)
        else:
            val, _ = _take(list(rest), sizes, val_fraction * n) if val_fraction > 0 else ([], rest)
        which.update({c: "train" for c in rest})
        which.update({c: "val" for c in val})
        which.update({c: "test" for c in test})
    if "train" not in which.values():
        raise DataError("the split leaves no cases for training")
    return {s.image: which[s.case_id] for s in samples}


def single_slice_cases(samples: list[Sample]) -> tuple[int, int]:
    """``(cases holding one 2D slice, cases)``: a case of one slice file is a file whose case id
    is its own stem (no ``--data.case_regex`` match, no manifest ``case_id``), rarely a patient."""
    sizes = Counter(s.case_id for s in samples)
    slices_2d = {s.case_id for s in samples if s.slice is None}
    return sum(1 for c, n in sizes.items() if n == 1 and c in slices_2d), len(sizes)


def case_note(samples: list[Sample]) -> str | None:
    """One warning line when every case, or most, is a single slice (the case id fell back to
    the file stem), else ``None``: then slices of one patient can sit in train and validation."""
    single, cases = single_slice_cases(samples)
    if not cases or 2 * single <= cases:
        return None
    sizes = Counter(s.case_id for s in samples)
    others = sorted(n for n in sizes.values() if n > 1)
    held = "1 slice each" if single == cases else f"{single} of them 1 slice each, the other {cases - single} {others[0]}-{others[-1]} slices"
    return (
        f"warning: {cases} cases, {held}: without patient ids each file is its own case, so slices of one patient can land in "
        f"both train and validation (optimistic scores); give case ids with --data.case_regex (its first group on the file stem) "
        f"or a manifest.csv case_id column"
    )


def split_summary(samples: list[Sample], split: dict[str, str]) -> str:
    """The one line fit prints about a split: slices and cases per split; where most cases are
    single slices (``case_note``) they are not called cases, as they are not patients."""
    slices = Counter(split[s.image] for s in samples)
    ids = {k: {s.case_id for s in samples if split[s.image] == k} for k in SPLITS}
    if case_note(samples) is None:
        return "split: " + ", ".join(f"{k} {slices.get(k, 0)} slices / {len(ids[k])} cases" for k in SPLITS)
    sizes = Counter(s.case_id for s in samples)
    parts = []
    for k in SPLITS:
        multi = sum(1 for c in ids[k] if sizes[c] > 1)
        parts.append(f"{k} {slices.get(k, 0)} slices" + (f" ({multi} multi-slice cases)" if multi else ""))
    return "split: " + ", ".join(parts) + " (single slices split one by one: no patient ids)"


def _fold(cases: list[str], sizes: dict[str, int], num_folds: int, fold: int) -> list[str]:
    """Cases of fold ``fold``: largest cases first, each to the fold with the fewest slices."""
    if len(cases) < num_folds:
        raise DataError(f"{len(cases)} cases of one source cannot make {num_folds} folds")
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    load = [0] * num_folds
    order = {c: i for i, c in enumerate(cases)}
    for case in sorted(cases, key=lambda c: (-sizes[c], order[c])):
        k = min(range(num_folds), key=lambda i: (load[i], i))
        folds[k].append(case)
        load[k] += sizes[case]
    return folds[fold]


def write_splits(path: str | Path, samples: list[Sample], split: dict[str, str]) -> None:
    """Writes ``splits.csv`` (``key,case_id,split``; ``key`` is ``Sample.key``, the source folder's
    name and the path inside it) atomically: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "case_id", "split"])
        for s in samples:
            w.writerow([s.key, s.case_id, split[s.image]])
    os.replace(tmp, path)


def match_keys(table: dict[str, str], samples: list[Sample], where: str) -> dict[str, str]:
    """Image path -> split for ``samples`` from a ``{key: split}`` table (keys are ``Sample.key``,
    or absolute image paths in files written before keys existed); every sample must be listed
    and no case may be in two splits. Raises ``DataError`` naming ``where``."""
    split, missing = {}, []
    for s in samples:
        value = table.get(s.key) or table.get(str(Path(s.image).resolve()))
        if value is None:
            missing.append(s.key)
        else:
            split[s.image] = value
    if missing:
        raise DataError(f"{where}: {len(missing)} image(s) not in the split, e.g. {missing[0]} (is --data.root the data the run trained on?)")
    by_case = defaultdict(set)
    for s in samples:
        by_case[s.case_id].add(split[s.image])
    leaks = [c for c, v in by_case.items() if len(v) > 1]
    if leaks:
        raise DataError(f"{where}: case(s) {', '.join(sorted(leaks)[:5])} appear in more than one split")
    return split


def read_splits(path: str | Path, samples: list[Sample]) -> dict[str, str]:
    """Reads a ``splits.csv`` for ``samples`` (see ``match_keys``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not ({"key", "split"} <= set(rows[0]) or {"image", "split"} <= set(rows[0])):
        raise DataError(f"{path}: expected columns key,case_id,split")
    table = {}
    for row in rows:
        if row["split"] not in SPLITS:
            raise DataError(f"{path}: unknown split {row['split']!r} for {row.get('key') or row['image']}")
        key = row.get("key") or str(Path(row["image"]).resolve())
        table[key] = row["split"]
    return match_keys(table, samples, str(path))
