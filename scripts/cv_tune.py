"""Chooses inference settings (threshold, flip TTA, small-component removal) across all folds of a
cross-validation, never on one split: each fold's last checkpoint predicts its own validation
patients, and a setting is scored by the mean over sources of the fold-averaged per-image Dice.

    python scripts/cv_tune.py RUN_DIR [RUN_DIR ...]    (the runs of scripts/crossval.sh)

Prints one table row per setting (per-source means and per-fold values) and the best setting.
"""

import statistics
import sys
from itertools import product
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from covidseg.evaluate import select_split, stored_data
from covidseg.inference import Predictor, load_checkpoint
from covidseg.io import read_image, read_mask
from covidseg.sources import Sample, scan

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS = (0, 0.0005, 0.002)  # components smaller than this fraction of the slice are dropped


def drop_small(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    if min_fraction <= 0:
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_fraction * mask.size
    keep[0] = False
    return keep[labels]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    inter, total = np.logical_and(pred, gt).sum(), pred.sum() + gt.sum()
    return 1.0 if total == 0 else 2.0 * inter / total


def validation_samples(run: Path) -> tuple[Path, list[Sample]]:
    """The run's last checkpoint and the slices of its validation split (its held-out fold)."""
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    roots, policies = stored_data(ckpt)
    return ckpt_path, select_split([ckpt_path], [ckpt], scan(roots, **policies).samples, "val")


def fold_scores(run: Path) -> dict[tuple, dict[str, float]]:
    """Setting -> source -> mean per-image Dice on the run's validation split."""
    ckpt_path, samples = validation_samples(run)
    per: dict[tuple, dict[str, list[float]]] = {}
    for tta in (False, True):
        predictor = Predictor(ckpt_path, device="cpu", tta=tta)
        probs = predictor.predict((read_image(s.image) for s in samples), batch_size=16)
        for s, prob in tqdm(zip(samples, probs), total=len(samples), desc=f"{run.parent.name} tta={tta}", leave=False):
            gt = read_mask(s.mask) > 0
            for t, a in product(THRESHOLDS, MIN_AREAS):
                per.setdefault((tta, t, a), {}).setdefault(s.source, []).append(dice(drop_small(prob >= t, a), gt))
    return {k: {src: float(np.mean(v)) for src, v in d.items()} for k, d in per.items()}


def print_table(runs: list[str], folds: list[dict[tuple, dict[str, float]]], columns: list[str]) -> tuple[tuple, float]:
    """Prints one markdown row per setting (``columns`` name the setting's key fields): per-source
    means over folds with the per-fold values, and the mean of sources. Returns the best row."""
    sources = sorted(folds[0][next(iter(folds[0]))])
    print(f"folds: {len(folds)} ({', '.join(runs)})")
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


def main(runs: list[str]) -> None:
    folds = [fold_scores(Path(r)) for r in runs]
    (tta, t, a), overall = print_table(runs, folds, ["tta", "threshold", "min component"])
    print(f"best: tta={tta} threshold={t} min_component={a} (mean of sources {overall:.4f})")


if __name__ == "__main__":
    main(sys.argv[1:])
