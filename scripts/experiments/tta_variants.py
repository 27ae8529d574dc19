"""Experiment: which test-time augmentation variants help, across all folds of a cross-validation.

    python scripts/experiments/tta_variants.py RUN_DIR [RUN_DIR ...]    (the runs of scripts/crossval.sh)

Each fold's last checkpoint predicts its own validation patients with every variant below, and a
variant is scored at thresholds 0.3-0.5 by the per-source mean per-image Dice, averaged over
folds. ``flip4`` is exactly covidseg's ``--tta`` (``covidseg.model.unet.TTA_FLIPS``); the others (only the
horizontal flip, which is the flip the model trains with; and +-10% zoom about the centre) are
not covidseg options, only measured here. Zoomed predictions are warped back, and pixels a
zoomed-in view did not see are averaged over the views that did.
"""

import sys
from pathlib import Path

import cv2
import numpy as np

from covidseg.data.io import read_image, read_mask, resize
from covidseg.evaluation.crossval import fold_validation, print_fold_table
from covidseg.metrics.scores import image_dice
from covidseg.model.predictor import Predictor, flip
from covidseg.model.unet import TTA_FLIPS

# variant -> views (flip rows, flip columns, zoom factor)
VARIANTS = {
    "none": [(False, False, 1.0)],
    "hflip": [(False, False, 1.0), (False, True, 1.0)],
    "flip4": [(rows, cols, 1.0) for rows, cols in TTA_FLIPS],
    "hflip+zoom": [(False, cols, z) for cols in (False, True) for z in (0.9, 1.0, 1.1)],
}
THRESHOLDS = (0.3, 0.4, 0.5)


def zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Scales every ``[S, S]`` map of ``x [..., S, S]`` by ``factor`` about the centre (zero fill)."""
    size = x.shape[-1]
    centre = (size - 1) / 2
    matrix = cv2.getRotationMatrix2D((centre, centre), 0, factor)
    maps = x.reshape(-1, size, size)
    out = np.stack([cv2.warpAffine(m, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0) for m in maps])
    return out.reshape(x.shape)


def view(model, x: np.ndarray, rows: bool, cols: bool, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of one view mapped back to the input frame, and where the view saw it."""
    xi = flip(x, rows, cols)
    seen = np.ones_like(x)
    if factor != 1.0:
        xi = zoom(xi, factor)
    prob = np.concatenate([model(xi[i : i + 32]) for i in range(0, len(xi), 32)])
    if factor != 1.0:
        prob, seen = zoom(prob, 1 / factor), zoom(seen, 1 / factor)
    return flip(prob, rows, cols), flip(seen, rows, cols)


def variant_probs(predictor: Predictor, x: np.ndarray) -> dict[str, np.ndarray]:
    """Variant -> probabilities ``[B, 1, S, S]`` for preprocessed input ``x``."""
    (model,) = predictor.backends
    views = {v: view(model, x, *v) for vs in VARIANTS.values() for v in vs}
    out = {}
    for name, vs in VARIANTS.items():
        total = sum(views[v][0] for v in vs)
        seen = sum(views[v][1] for v in vs)
        out[name] = total / np.maximum(seen, 1e-6)
    return out


def fold_scores(run: Path) -> dict[tuple, dict[str, float]]:
    """(variant, threshold) -> source -> mean per-image Dice on the run's validation split."""
    ckpt_path, samples = fold_validation(run)
    predictor = Predictor(ckpt_path, device="cpu", tta=False)
    raws = [read_image(s.image) for s in samples]
    truths = [read_mask(s.mask) > 0 for s in samples]
    probs = variant_probs(predictor, np.stack([predictor.preprocess(r) for r in raws]))
    scores: dict[tuple, dict[str, float]] = {}
    for name, p in probs.items():
        full = [np.clip(resize(pi[0], raw.shape[:2]), 0, 1) for pi, raw in zip(p, raws)]
        for t in THRESHOLDS:
            per: dict[str, list[float]] = {}
            for s, prob, truth in zip(samples, full, truths):
                per.setdefault(s.source, []).append(image_dice(prob >= t, truth))
            scores[(name, t)] = {src: float(np.mean(v)) for src, v in per.items()}
    return scores


def main(runs: list[str]) -> None:
    (name, t), overall = print_fold_table(runs, [fold_scores(Path(r)) for r in runs], ["variant", "threshold"])
    print(f"best: {name} threshold={t} (mean of sources {overall:.4f})")


if __name__ == "__main__":
    main(sys.argv[1:])
