"""Patient-level train/val/test splits and K-fold cross-validation, saved as ``splits.csv``.

A case (patient) never lands in two splits. Cases are shuffled with ``seed``; the test split
takes whole cases until it holds ``test_fraction`` of the slices, then validation likewise,
and the rest trains. With ``num_folds > 1`` the non-test cases are dealt round-robin into
folds (largest first, so folds hold similar slice counts) and fold ``fold`` validates.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

from covidseg.sources import DataError, Sample

SPLITS = ("train", "val", "test")


def _take(cases: list[str], sizes: dict[str, int], target: float) -> tuple[list[str], list[str]]:
    taken, total = [], 0
    while cases and total < target:
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
    """Maps each image path to ``train``, ``val`` or ``test``, grouping by case id."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1")
    if num_folds > 1 and not 0 <= fold < num_folds:
        raise DataError(f"fold={fold} must be in [0, {num_folds - 1}] for num_folds={num_folds}")
    sizes: dict[str, int] = defaultdict(int)
    for s in samples:
        sizes[s.case_id] += 1
    cases = sorted(sizes)
    random.Random(seed).shuffle(cases)
    n = len(samples)
    n_cases = len(cases)
    if n_cases < 2:
        raise DataError(f"only {n_cases} case(s) found: patient-level splitting needs at least 2")
    test, rest = _take(cases, sizes, test_fraction * n) if test_fraction > 0 else ([], cases)
    if not rest:
        raise DataError("test_fraction leaves no cases for training")
    if num_folds > 1:
        if len(rest) < num_folds:
            raise DataError(f"{len(rest)} cases cannot make {num_folds} folds")
        folds: list[list[str]] = [[] for _ in range(num_folds)]
        load = [0] * num_folds
        for case in sorted(rest, key=lambda c: (-sizes[c], rest.index(c))):
            k = min(range(num_folds), key=lambda i: (load[i], i))
            folds[k].append(case)
            load[k] += sizes[case]
        val = folds[fold]
        train = [c for c in rest if c not in set(val)]
    else:
        val, train = _take(rest, sizes, val_fraction * n) if val_fraction > 0 else ([], rest)
        if val_fraction > 0 and not train:  # keep at least one training case
            train = [val.pop()]
    which = {**{c: "train" for c in train}, **{c: "val" for c in val}, **{c: "test" for c in test}}
    return {s.image: which[s.case_id] for s in samples}


def write_splits(path: str | Path, samples: list[Sample], split: dict[str, str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "case_id", "split"])
        for s in samples:
            w.writerow([s.image, s.case_id, split[s.image]])


def read_splits(path: str | Path, samples: list[Sample]) -> dict[str, str]:
    """Reads a ``splits.csv``; every current sample must be listed, with a known split."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"image", "split"} <= set(rows[0]):
        raise DataError(f"{path}: expected columns image,case_id,split")
    table = {}
    for row in rows:
        if row["split"] not in SPLITS:
            raise DataError(f"{path}: unknown split {row['split']!r} for {row['image']}")
        table[str(Path(row["image"]).resolve())] = row["split"]
    split, missing = {}, []
    for s in samples:
        key = str(Path(s.image).resolve())
        if key in table:
            split[s.image] = table[key]
        else:
            missing.append(s.image)
    if missing:
        raise DataError(f"{path}: {len(missing)} image(s) not in the split file, e.g. {missing[0]}")
    by_case = defaultdict(set)
    for s in samples:
        by_case[s.case_id].add(split[s.image])
    leaks = [c for c, v in by_case.items() if len(v) > 1]
    if leaks:
        raise DataError(f"{path}: case(s) {', '.join(sorted(leaks)[:5])} appear in more than one split")
    return split
