"""Helpers for the cross-validation scripts (``scripts/cv_tune.py``, ``scripts/tta_variants.py``):
each fold's last checkpoint scored on its own held-out patients, and the per-fold table."""

from __future__ import annotations

import statistics
from pathlib import Path

from covidseg.runs import split_samples
from covidseg.sources import Sample


def fold_validation(run: str | Path) -> tuple[Path, list[Sample]]:
    """A fold run's last checkpoint and the slices of its validation split (its held-out fold)."""
    ckpt = Path(run) / "checkpoints" / "last.ckpt"
    return ckpt, split_samples(ckpt, "val")


def print_fold_table(runs: list[str], folds: list[dict[tuple, dict[str, float]]], columns: list[str]) -> tuple[tuple, float]:
    """Prints one markdown row per setting (``columns`` name the setting's key fields): per-source
    means over folds with the per-fold values, and the mean of sources. Returns the best row."""
    sources = sorted(folds[0][next(iter(folds[0]))])
    print(f"folds: {len(folds)} ({', '.join(map(str, runs))})")
    print("| " + " | ".join(columns) + " | " + " | ".join(f"{s} mean (per fold)" for s in sources) + " | mean of sources |")
    print("|" + "---|" * (len(columns) + len(sources) + 1))
    best = None
    for key in folds[0]:
        means = {s: statistics.mean(f[key][s] for f in folds) for s in sources}
        overall = statistics.mean(means.values())
        cells = " | ".join(f"{means[s]:.3f} ({', '.join(f'{f[key][s]:.3f}' for f in folds)})" for s in sources)
        print("| " + " | ".join(str(k) for k in key) + f" | {cells} | {overall:.4f} |")
        if best is None or overall > best[1]:
            best = (key, overall)
    return best
