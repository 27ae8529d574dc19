"""Chooses inference settings (threshold, flip TTA, small-component removal) across all folds of a
cross-validation, never on one split: each fold's last checkpoint predicts its own validation
patients, and a setting is scored by the mean over sources of the fold-averaged per-image Dice.

    python scripts/experiments/cv_tune.py RUN_DIR [RUN_DIR ...]    (the runs of scripts/crossval.sh)

Prints one table row per setting (per-source means and per-fold values) and the best setting.
"""

import sys
from itertools import product
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from covidseg.data.io import read_image, read_mask
from covidseg.evaluation.crossval import fold_validation, print_fold_table
from covidseg.metrics.scores import image_dice
from covidseg.model.predictor import Predictor

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS = (0, 0.0005, 0.002)  # components smaller than this fraction of the slice are dropped


def drop_small(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    if min_fraction <= 0:
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_fraction * mask.size
    keep[0] = False
    return keep[labels]


def fold_scores(run: Path) -> dict[tuple, dict[str, float]]:
    """Setting -> source -> mean per-image Dice on the run's validation split."""
    ckpt_path, samples = fold_validation(run)
    per: dict[tuple, dict[str, list[float]]] = {}
    for tta in (False, True):
        predictor = Predictor(ckpt_path, device="cpu", tta=tta)
        probs = predictor.predict((read_image(s.image) for s in samples), batch_size=16)
        for s, prob in tqdm(zip(samples, probs), total=len(samples), desc=f"{run.parent.name} tta={tta}", leave=False):
            gt = read_mask(s.mask) > 0
            for t, a in product(THRESHOLDS, MIN_AREAS):
                per.setdefault((tta, t, a), {}).setdefault(s.source, []).append(image_dice(drop_small(prob >= t, a), gt))
    return {k: {src: float(np.mean(v)) for src, v in d.items()} for k, d in per.items()}


def main(runs: list[str]) -> None:
    folds = [fold_scores(Path(r)) for r in runs]
    (tta, t, a), overall = print_fold_table(runs, folds, ["tta", "threshold", "min component"])
    print(f"best: tta={tta} threshold={t} min_component={a} (mean of sources {overall:.4f})")


if __name__ == "__main__":
    main(sys.argv[1:])
