"""Scoring the lesion classes (issue 33): ground-glass (GGO) and consolidation per class.

For each slice whose source has class labels (``Sample.classes``) and a class model
(``card.classes``), the predicted label map (``split.class_label_map`` of the cleaned lesion
mask, as predict writes it) is compared with the true one as a 3x3 pixel confusion matrix
(rows truth, columns prediction: background, GGO, consolidation). ``class_summary`` gives what
Inf-Net's multi-class table reports, per class: Dice, sensitivity and specificity as per-image
means (one class against the rest of the slice), plus the pooled Dice and the summed matrix.
``scoring.score(..., class_thresholds=...)`` also splits at several lesion thresholds from the
same maps (a cross-validation fold's record, so the classes can be read at the operating point
the folds choose).
"""

from __future__ import annotations

import numpy as np

from covidseg.data.classes import CLASS_NAMES
from covidseg.metrics import scores as M

LABELS = ("background", *CLASS_NAMES)


def true_label_map(classes: np.ndarray) -> np.ndarray:
    """Class targets ``[2, H, W]`` -> label map ``uint8 [H, W]`` (consolidation over GGO where both)."""
    out = np.zeros(classes.shape[1:], np.uint8)
    for k in range(len(CLASS_NAMES)):
        out[classes[k] > 0] = k + 1
    return out


def confusion(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """3x3 pixel counts ``int64``, rows truth, columns prediction. Shape: label maps ``[H, W]``."""
    n = len(LABELS)
    return np.bincount(n * truth.astype(np.int64).ravel() + pred.astype(np.int64).ravel(), minlength=n * n).reshape(n, n)


def class_counts(cm: np.ndarray, c: int) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of label ``c`` (1 GGO, 2 consolidation) against the rest."""
    tp = int(cm[c, c])
    fp, fn = int(cm[:, c].sum()) - tp, int(cm[c, :].sum()) - tp
    return tp, fp, fn, int(cm.sum()) - tp - fp - fn


def class_summary(matrices: list[np.ndarray]) -> dict:
    """Per class: per-image mean Dice, sensitivity, specificity (``nan`` ratios skipped) and the
    pooled Dice; with the slices counted and the summed 3x3 matrix (``confusion``)."""
    out: dict = {"slices": len(matrices), "labels": list(LABELS)}
    total = np.sum(matrices, 0) if matrices else np.zeros((3, 3), np.int64)
    for c, name in enumerate(CLASS_NAMES, 1):
        counts = np.array([class_counts(cm, c) for cm in matrices]).reshape(-1, 4).T
        r = M.rates(*counts)
        mean = {k: (float(np.nanmean(r[key])) if np.isfinite(r[key]).any() else None) for k, key in (("dice", "dice"), ("sensitivity", "recall"), ("specificity", "specificity"))}
        out[name] = {**mean, "dice_global": float(M.rates(*class_counts(total, c))["dice"])}
    out["confusion"] = total.tolist()
    return out


def class_table(summary: dict) -> str:
    """The markdown table ``class | Dice | sensitivity | specificity | pooled Dice``."""
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"per-class scores ({summary['slices']} slices with class labels; per-image means, as Inf-Net's multi-class table):", "",
             "| class | Dice | sensitivity | specificity | Dice (pooled pixels) |", "|---|---|---|---|---|"]  # fmt: skip
    for name in CLASS_NAMES:
        s = summary[name]
        lines.append(f"| {name} | {fmt(s['dice'])} | {fmt(s['sensitivity'])} | {fmt(s['specificity'])} | {fmt(s['dice_global'])} |")
    return "\n".join(lines)
