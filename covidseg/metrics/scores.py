"""The one implementation of every score: pixel counts, rates, curves and thresholds, used by
training (``metrics.epoch``), evaluate, the report (through ``metrics.summary``) and the
cross-validation scripts, so that no score is computed in two places.

Rules, stated once (``summary.POLICY`` repeats them in every ``metrics.json``):

* A pixel is lesion when its probability is ``>= threshold``; a true pixel is lesion when its
  mask value is ``> 0.5`` (masks are {0, 1}; soft training targets count above one half).
* Per-image Dice and IoU: a slice with neither lesion nor predicted lesion scores 1, a slice
  with only one of them scores 0.
* Per-image recall, precision, specificity and AUROC are undefined on some slices (recall
  without lesion, precision without predicted lesion ...); their per-image means skip those
  slices and ``per_image_n`` says how many slices each mean covers.
* Global metrics pool every pixel; Dice/IoU are 1 when there is no lesion and no prediction at
  all; any other undefined global value is ``None`` (``nan`` in training logs).
* ROC, PR and AUROC come from probability histograms (``BINS`` bins on [0, 1]; bin ``k`` holds
  ``[k/BINS, (k+1)/BINS)``) of lesion and background pixels, so memory does not grow with the
  number of pixels. The curve's points are the bin edges; AUROC is the trapezoidal area.

Per-slice counting (``confusion_counts``, ``histograms``) is torch, batched, on the model's
device and without host synchronisation; everything after it is numpy on small arrays.
"""

from __future__ import annotations

import numpy as np
import torch

BINS = 1000
METRICS = ("dice", "iou", "recall", "specificity", "precision", "accuracy", "auroc")
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 .. 0.95
# Logged names, shared with callbacks' ``monitor`` and the reports. The headline is per-image Dice.
VAL_DICE_IMAGE = "val/dice_image"
# volume sources: most axial slices hold no lesion and score 1.0 when left empty, so fit monitors
# the per-image Dice over the slices whose truth has lesion (issue 23, item 5)
VAL_DICE_LESION_IMAGE = "val/dice_lesion_image"
VAL_LOSS = "val/loss"
TRAIN_LOSS = "train/loss"

# -- per-slice counting (torch) -------------------------------------------------------------------
def confusion_counts(probs: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixel confusion counts of each slice.

    Shape:
        probs: ``[B, ...]`` float probabilities; target: ``[B, ...]`` mask (lesion ``> 0.5``);
        returns ``int64 [B, 4]``: ``(tp, fp, fn, tn)`` per slice.
    """
    pred = (probs >= threshold).flatten(1)
    truth = (target > 0.5).flatten(1)
    tp = (pred & truth).sum(1)
    fp = pred.sum(1) - tp
    fn = truth.sum(1) - tp
    tn = pred.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], 1)


def histograms(probs: torch.Tensor, target: torch.Tensor, bins: int = BINS, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Histograms of background and lesion probabilities, by ``scatter_add_`` (no host sync).

    Shape:
        probs, target: ``[B, ...]``; labelled: optional ``[B]`` bool, slices to count (the
        others add nothing); returns ``int64 [2, bins]``: row 0 background, row 1 lesion.
    """
    idx = (probs.detach().reshape(-1).float() * bins).long().clamp_(0, bins - 1)
    idx += bins * (target.reshape(-1) > 0.5).long()
    if labelled is None:
        src = torch.ones_like(idx)
    else:
        src = labelled.long().view(-1, 1).expand(len(probs), idx.numel() // max(len(probs), 1)).reshape(-1)
    out = torch.zeros(2 * bins, dtype=torch.long, device=probs.device)
    out.scatter_add_(0, idx, src)
    return out.view(2, bins)


# -- from counts and histograms (numpy) ------------------------------------------------------------
def rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Dice, IoU, recall, specificity, precision and accuracy from confusion counts.

    Args:
        tp, fp, fn, tn: scalars or arrays ``[N]`` of counts.

    Returns:
        ``float64`` arrays shaped like the inputs; Dice and IoU follow the empty rule, other
        undefined ratios are ``nan``.
    """
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    with np.errstate(divide="ignore", invalid="ignore"):
        empty = tp + fp + fn == 0
        return {
            "dice": np.where(empty, 1.0, 2 * tp / (2 * tp + fp + fn)),
            "iou": np.where(empty, 1.0, tp / (tp + fp + fn)),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
        }


def _cumulative(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TP, FP ``[..., bins + 1]`` at thresholds ``k / bins`` for ``k = bins .. 0`` (descending)."""
    zero = np.zeros((*np.shape(pos)[:-1], 1))
    tp = np.concatenate([zero, np.cumsum(np.asarray(pos)[..., ::-1], -1)], -1)
    fp = np.concatenate([zero, np.cumsum(np.asarray(neg)[..., ::-1], -1)], -1)
    return tp, fp


def roc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
    """ROC curve and its area.

    Args:
        pos, neg: ``[bins]`` lesion and background counts per probability bin.

    Returns:
        ``(fpr, tpr, auc)``: arrays ``[bins + 1]`` by descending threshold; ``auc`` is ``None``
        without lesion or without background.
    """
    tp, fp = _cumulative(pos, neg)
    if tp[-1] == 0 or fp[-1] == 0:
        nan = np.full_like(tp, np.nan)
        return nan, nan, None
    fpr, tpr = fp / fp[-1], tp / tp[-1]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def pr_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Precision-recall curve over the thresholds that predict at least one pixel, and average
    precision ``sum((R_k - R_{k-1}) * P_k)`` (``None`` without lesion)."""
    tp, fp = _cumulative(pos, neg)
    keep = tp + fp > 0
    if tp[-1] == 0 or not keep.any():
        return np.zeros(0), np.zeros(0), None
    recall, precision = tp[keep] / tp[-1], tp[keep] / (tp[keep] + fp[keep])
    return recall, precision, float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def dice_by_threshold(pos: np.ndarray, neg: np.ndarray, thresholds=THRESHOLD_GRID) -> np.ndarray:
    """Dice at each threshold (a multiple of ``1 / bins``), from histograms.

    Shape:
        pos, neg: ``[bins]`` (pooled: global Dice) or ``[N, bins]`` (per slice: per-image
        Dice of each slice); returns ``[T]`` or ``[N, T]``.
    """
    pos, neg = np.asarray(pos), np.asarray(neg)
    bins = pos.shape[-1]
    k = np.clip(np.rint(np.asarray(thresholds) * bins).astype(np.int64), 0, bins)
    tp_at = np.concatenate([np.cumsum(pos[..., ::-1], -1)[..., ::-1], np.zeros((*pos.shape[:-1], 1))], -1)[..., k]
    fp_at = np.concatenate([np.cumsum(neg[..., ::-1], -1)[..., ::-1], np.zeros((*neg.shape[:-1], 1))], -1)[..., k]
    return rates(tp_at, fp_at, pos.sum(-1, keepdims=True) - tp_at, 0)["dice"]


def best_threshold(per_image_dice: np.ndarray, thresholds=THRESHOLD_GRID) -> tuple[float, float]:
    """The threshold with the highest mean per-image Dice (the lowest one on ties) and that mean.

    Shape:
        per_image_dice: ``[N, T]``, e.g. ``dice_by_threshold`` of per-slice histograms.
    """
    mean = np.asarray(per_image_dice, dtype=np.float64).mean(0)
    i = int(np.argmax(mean))
    return float(thresholds[i]), float(mean[i])


def epoch_scores(counts: np.ndarray, pos: np.ndarray | None = None, neg: np.ndarray | None = None) -> dict[str, float]:
    """The training-log metrics: global pixel rates, per-image Dice and (with histograms) AUROC.

    Args:
        counts: ``int [N, 4]`` per-slice ``(tp, fp, fn, tn)``.
        pos, neg: optional pooled ``[bins]`` lesion / background histograms.

    Returns:
        ``{dice, iou, recall, specificity, precision, accuracy, dice_image, dice_lesion_image[, auroc]}``
        (floats, ``nan`` if undefined); ``dice_lesion_image`` is the per-image Dice over the
        slices whose truth has lesion (``nan`` without one).
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    out = {k: float(v) for k, v in rates(*counts.sum(0)).items()}
    out["dice_image"] = float(rates(*counts.T)["dice"].mean()) if len(counts) else float("nan")
    lesion = counts[counts[:, 0] + counts[:, 2] > 0]
    out["dice_lesion_image"] = float(rates(*lesion.T)["dice"].mean()) if len(lesion) else float("nan")
    if pos is not None:
        auc = roc_from_histograms(pos, neg)[2]
        out["auroc"] = float("nan") if auc is None else auc
    return out


def image_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Per-image Dice of one binary prediction ``[H, W]`` against its truth ``[H, W]`` (the empty rule applies)."""
    p = torch.from_numpy(np.asarray(pred, np.float32))[None]
    t = torch.from_numpy(np.asarray(truth, np.float32))[None]
    tp, fp, fn, tn = confusion_counts(p, t, 0.5)[0].tolist()
    return float(rates(tp, fp, fn, tn)["dice"])


