"""The one implementation of every score: used by training (``lightning_metrics``), evaluate,
the report and the cross-validation scripts. (About 370 lines, past the house style's ~300 on
purpose: every score lives here, so that none is computed in two places.)

Rules, stated once (``POLICY`` repeats them in every ``metrics.json``):

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

import math
from collections import defaultdict

import numpy as np
import torch

BINS = 1000
RESAMPLES = 1000
SEED = 0
METRICS = ("dice", "iou", "recall", "specificity", "precision", "accuracy", "auroc")
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 .. 0.95
LESION_SIZE_EDGES = (500, 2000)  # lesion pixels per slice at its original resolution

# Logged names, shared with callbacks' ``monitor`` and the reports. The headline is per-image Dice.
VAL_DICE_IMAGE = "val/dice_image"
# volume sources: most axial slices hold no lesion and score 1.0 when left empty, so fit monitors
# the per-image Dice over the slices whose truth has lesion (issue 23, item 5)
VAL_DICE_LESION_IMAGE = "val/dice_lesion_image"
VAL_LOSS = "val/loss"
TRAIN_LOSS = "train/loss"

POLICY = {
    "threshold": "a pixel is lesion when its probability is >= threshold",
    "resolution": "scored at each slice's original resolution: probabilities are resized to the slice, the ground truth never is",
    "dice_iou_empty": "per-image Dice and IoU: a slice with neither lesion nor predicted lesion scores 1, a slice with only one of them scores 0",
    "undefined_per_image": (
        "per-image recall is averaged over slices with lesion only, precision over slices with predicted lesion only, "
        "specificity over slices with background, AUROC over slices with both lesion and background (per_image_n gives each count)"
    ),
    "global": "global metrics pool the pixels of all slices; Dice/IoU are 1 when there is no lesion and no prediction at all; other undefined values are null",
    "auroc": f"pixel ROC, PR and AUROC from {BINS}-bin probability histograms (trapezoidal area, average precision as a step sum)",
    "lesion_size": (
        f"by_lesion_size bins slices by their ground-truth lesion pixels at the original resolution (edges {list(LESION_SIZE_EDGES)}: "
        "a bin holds low <= pixels < high); slices without lesion form the bin 'none'; each bin has its mean per-image Dice and slice count"
    ),
    "bootstrap": f"95% interval of the mean per-image Dice, resampling cases (patients) with replacement, {RESAMPLES} resamples, seed {SEED}",
}


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


def bootstrap_ci(values: np.ndarray, groups: list[str], resamples: int = RESAMPLES, seed: int = SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` ``[N]``, resampling whole groups
    (cases) ``[N]`` with replacement; a resample's mean is over all slices of its drawn cases."""
    values = np.asarray(values, dtype=np.float64)
    cases, index = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(cases))
    counts = np.bincount(index, minlength=len(cases)).astype(np.float64)
    draw = np.random.default_rng(seed).integers(0, len(cases), size=(resamples, len(cases)))
    stats = sums[draw].sum(1) / counts[draw].sum(1)
    alpha = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [alpha, 100 - alpha])
    return float(low), float(high)


def _number(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def lesion_size_labels(edges=LESION_SIZE_EDGES) -> list[str]:
    """Bin names: ``none`` (no lesion), then ``<e0``, ``e0-e1`` ..., ``>=eK`` for ``edges``."""
    edges = list(edges)
    inner = [f"{a}-{b}" for a, b in zip(edges, edges[1:])]
    return ["none", f"<{edges[0]}", *inner, f">={edges[-1]}"]


def by_lesion_size(counts: np.ndarray, edges=LESION_SIZE_EDGES) -> dict[str, dict]:
    """Per-image Dice by ground-truth lesion size.

    Args:
        counts: ``int [N, 4]`` per-slice ``(tp, fp, fn, tn)`` at the slice's own resolution; a
            slice's lesion size is ``tp + fn`` pixels.
        edges: increasing bin edges in pixels: slices with ``0 < size < edges[0]``, then
            ``edges[i] <= size < edges[i + 1]``, then ``size >= edges[-1]``; ``size == 0`` is
            ``none``.

    Returns:
        ``{label: {"images", "dice_image", "dice_global", "min_px", "max_px"}}`` in bin order
        (``lesion_size_labels``); ``dice_image`` is the mean per-image Dice of the bin's slices
        and ``dice_global`` their pooled Dice (``None`` for an empty bin); ``min_px`` and
        ``max_px`` bound the bin (``max_px`` exclusive, ``None`` when open).
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    size = counts[:, 0] + counts[:, 2]
    dice = rates(*counts.T)["dice"]
    bounds = [(0, 1), (1, edges[0]), *zip(edges, edges[1:]), (edges[-1], None)]
    out = {}
    for label, (low, high) in zip(lesion_size_labels(edges), bounds):
        sel = (size >= low) & (size < high if high is not None else True)
        n = int(sel.sum())
        out[label] = {
            "images": n,
            "dice_image": float(dice[sel].mean()) if n else None,
            "dice_global": float(rates(*counts[sel].sum(0))["dice"]) if n else None,
            "min_px": int(low),
            "max_px": None if high is None else int(high),
        }
    return out


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


def summarize(counts: np.ndarray, image_auroc: np.ndarray, pos: np.ndarray, neg: np.ndarray, cases: list[str], sources: list[str], threshold: float) -> dict:
    """Everything ``metrics.json`` holds except the run description.

    Args:
        counts: ``int [N, 4]`` per-slice ``(tp, fp, fn, tn)``.
        image_auroc: ``[N]`` per-slice AUROC (``nan`` where undefined).
        pos, neg: ``[bins]`` pooled lesion / background histograms.
        cases, sources: ``[N]`` case id and source folder of each slice.
        threshold: the threshold the counts were taken at.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    per_image = rates(*counts.T)
    per_image["auroc"] = np.asarray(image_auroc, dtype=np.float64)
    total = counts.sum(0)
    pooled = {k: _number(v) for k, v in rates(*total).items()}
    pooled["auroc"] = roc_from_histograms(pos, neg)[2]
    pooled["average_precision"] = pr_from_histograms(pos, neg)[2]
    defined = {k: ~np.isnan(per_image[k]) for k in METRICS}
    out = {
        "threshold": float(threshold),
        "counts": {
            "images": len(counts),
            "cases": len(set(cases)),
            "images_without_lesion": int(np.count_nonzero(counts[:, 0] + counts[:, 2] == 0)),
            "pixels": int(total.sum()),
            "lesion_pixels": int(total[0] + total[2]),
            "predicted_pixels": int(total[0] + total[1]),
        },
        "per_image_mean": {k: _number(per_image[k][defined[k]].mean()) if defined[k].any() else None for k in METRICS},
        "per_image_n": {k: int(defined[k].sum()) for k in METRICS},
        "global": {k: pooled[k] for k in (*METRICS, "average_precision")},
        "by_lesion_size": by_lesion_size(counts),
    }
    low, high = bootstrap_ci(per_image["dice"], cases)
    out["dice_ci95"] = {"mean": out["per_image_mean"]["dice"], "low": low, "high": high, "cases": len(set(cases)), "resamples": RESAMPLES, "seed": SEED}
    if len(set(sources)) > 1:
        by_source = defaultdict(list)
        for i, s in enumerate(sources):
            by_source[s].append(i)
        out["per_source"] = {
            s: {
                "images": len(idx),
                "cases": len({cases[i] for i in idx}),
                "dice_image": float(per_image["dice"][idx].mean()),
                "dice_global": float(rates(*counts[idx].sum(0))["dice"]),
                "by_lesion_size": by_lesion_size(counts[idx]),
            }
            for s, idx in sorted(by_source.items())
        }
    out["policy"] = POLICY
    return out


def headline(metrics: dict) -> dict[str, float]:
    """The flat ``{name: value}`` a ``summarize`` result is logged as (``test/*`` in TensorBoard,
    the table ``fit`` prints): per-image Dice first, then the global pixel metrics; for volumes
    (``per_case``), the per-case 3D Dice comes first: the case is the unit there."""
    out = {"dice_case": metrics["per_case"]["mean"]["dice"]} if metrics.get("per_case") else {}
    out["dice_image"] = metrics["per_image_mean"]["dice"]
    out.update({k: v for k, v in metrics["global"].items() if v is not None})
    return out


def image_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Per-image Dice of one binary prediction ``[H, W]`` against its truth ``[H, W]`` (the empty rule applies)."""
    p = torch.from_numpy(np.asarray(pred, np.float32))[None]
    t = torch.from_numpy(np.asarray(truth, np.float32))[None]
    tp, fp, fn, tn = confusion_counts(p, t, 0.5)[0].tolist()
    return float(rates(tp, fp, fn, tn)["dice"])


def case_summary(cases: list[dict]) -> dict:
    """Summary of per-volume rows (``volume_metrics.case_metrics`` plus ``case_id``): means of
    3D Dice, NSD, lesion mL error (signed and absolute) and HD95 over the cases where it is
    defined (``hd95_undefined`` counts the others: lesion in only one of truth and prediction)."""
    if not cases:
        return {}
    hd = [c["hd95_mm"] for c in cases if not math.isnan(c["hd95_mm"])]
    return {
        "cases": len(cases),
        "tolerance_mm": cases[0]["tolerance_mm"],
        "mean": {
            "dice": float(np.mean([c["dice"] for c in cases])),
            "nsd": float(np.mean([c["nsd"] for c in cases])),
            "diff_ml": float(np.mean([c["diff_ml"] for c in cases])),
            "abs_diff_ml": float(np.mean([abs(c["diff_ml"]) for c in cases])),
            "hd95_mm": float(np.mean(hd)) if hd else None,
        },
        "hd95_undefined": len(cases) - len(hd),
        "cases_table": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in c.items()} for c in cases],
    }


def lung_summary(rows: list[dict]) -> dict:
    """Lung segmentation and lesion-burden agreement from per-slice rows (``scoring._lung_row``):
    per-image and global lung Dice, and per case the true and predicted involvement and grade
    (``severity.compare_cases``: summed pixels per case, never a mean of slice percentages)."""
    from covidseg.severity import aggregate_cases, compare_cases

    if not rows:
        return {}
    counts = np.array([r["counts"] for r in rows], dtype=np.int64)

    def cases(which: str) -> list[dict]:
        return aggregate_cases({"case_id": r["case_id"], "lesion_pixels": r["lesion"][which == "true"], "lesion_in_lung_pixels": r[which][0], "lung_pixels": r[which][1]} for r in rows)

    return {
        "slices": len(rows),
        "lung_dice_image": float(rates(*counts.T)["dice"].mean()),
        "lung_dice_global": float(rates(*counts.sum(0))["dice"]),
        "severity": compare_cases(cases("true"), cases("pred")),
    }
