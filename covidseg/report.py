"""Evaluation report: metric maths (pure numpy), figures and the files of ``covidseg.evaluate``.

Conventions shared by every function here:

* A pixel is lesion when its probability is ``>= threshold`` (as ``metrics.PerImageDice``).
* Per-image Dice and IoU: a slice with neither lesion nor predicted lesion scores 1, a slice
  with only one of them scores 0 (as ``metrics.per_image_dice``).
* Per-image recall, precision, specificity and AUROC are undefined on some slices (recall
  without lesion, precision without predicted lesion ...); their per-image means skip those
  slices and ``per_image_n`` says how many slices each mean covers.
* Global metrics pool every pixel; a global value that is undefined is ``None`` (null).
* ROC, PR and AUROC come from probability histograms (``BINS`` bins on [0, 1]) of lesion and
  background pixels, so memory does not grow with the number of pixels. The curve's points
  are the bin edges; AUROC is the trapezoidal area (ties within a bin count half).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

BINS = 1000
RESAMPLES = 1000
SEED = 0
METRICS = ("dice", "iou", "recall", "specificity", "precision", "accuracy", "auroc")
LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "recall": "recall (sensitivity)",
    "specificity": "specificity",
    "precision": "precision",
    "accuracy": "accuracy",
    "auroc": "AUROC",
}
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
    "bootstrap": f"95% interval of the mean per-image Dice, resampling cases (patients) with replacement, {RESAMPLES} resamples, seed {SEED}",
}


# -- metric maths ----------------------------------------------------------------------------
def pixel_counts(prob: np.ndarray, gt: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """Confusion counts of one slice.

    Args:
        prob: ``float [H, W]`` lesion probabilities.
        gt: ``[H, W]`` ground truth in {0, 1} (or bool).
        threshold: lesion where ``prob >= threshold``.

    Returns:
        ``(tp, fp, fn, tn)`` pixel counts.
    """
    pred = prob >= threshold
    truth = gt > 0
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return tp, fp, fn, int(truth.size) - tp - fp - fn


def rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Dice, IoU, recall, specificity, precision and accuracy from confusion counts.

    Args:
        tp, fp, fn, tn: scalars or arrays ``[N]`` of counts (one entry per slice).

    Returns:
        Arrays shaped like the inputs (``float64``). Dice and IoU follow the empty rule (1 when
        there is neither lesion nor prediction); other undefined ratios are ``nan``.
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


def prob_histograms(prob: np.ndarray, gt: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of lesion and background probabilities; bin ``k`` holds ``[k/bins, (k+1)/bins)``.

    Args:
        prob: ``float [H, W]`` in [0, 1]; gt: ``[H, W]`` in {0, 1}.

    Returns:
        ``(pos, neg)``, each ``int64 [bins]``.
    """
    idx = np.clip((np.asarray(prob, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1).ravel()
    truth = np.asarray(gt).ravel() > 0
    return np.bincount(idx[truth], minlength=bins), np.bincount(idx[~truth], minlength=bins)


def _cumulative(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP ``[bins + 1]`` for thresholds ``k / bins``, ``k = bins .. 0`` (descending)."""
    tp = np.concatenate([[0], np.cumsum(pos[::-1])]).astype(np.float64)
    fp = np.concatenate([[0], np.cumsum(neg[::-1])]).astype(np.float64)
    thresholds = np.arange(len(pos), -1, -1) / len(pos)
    return tp, fp, thresholds


def roc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """ROC curve and its area from probability histograms.

    Args:
        pos, neg: ``[bins]`` counts of lesion and background pixels per probability bin.

    Returns:
        ``(fpr, tpr, thresholds, auc)``: arrays ``[bins + 1]`` ordered by ascending FPR
        (descending threshold); ``auc`` is ``None`` without lesion or without background.
    """
    tp, fp, thresholds = _cumulative(pos, neg)
    if tp[-1] == 0 or fp[-1] == 0:
        nan = np.full_like(tp, np.nan)
        return nan, nan, thresholds, None
    fpr, tpr = fp / fp[-1], tp / tp[-1]
    return fpr, tpr, thresholds, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def pr_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Precision-recall curve and average precision from probability histograms.

    Args:
        pos, neg: ``[bins]`` counts of lesion and background pixels per probability bin.

    Returns:
        ``(recall, precision, ap)``: arrays ``[M]`` over the thresholds that predict at least
        one pixel, by ascending recall; ``ap = sum((R_k - R_{k-1}) * P_k)`` (``None`` without lesion).
    """
    tp, fp, _ = _cumulative(pos, neg)
    keep = tp + fp > 0
    if tp[-1] == 0 or not keep.any():
        return np.zeros(0), np.zeros(0), None
    recall, precision = tp[keep] / tp[-1], tp[keep] / (tp[keep] + fp[keep])
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return recall, precision, ap


def dice_by_threshold(pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Global pixel Dice at each threshold (rounded to the nearest bin edge), from histograms.

    Args:
        pos, neg: ``[bins]`` histograms; thresholds: ``[T]`` in [0, 1].

    Returns:
        ``float64 [T]``.
    """
    bins = len(pos)
    k = np.clip(np.rint(np.asarray(thresholds) * bins).astype(np.int64), 0, bins)
    tp_at = np.concatenate([np.cumsum(pos[::-1])[::-1], [0]])[k]
    fp_at = np.concatenate([np.cumsum(neg[::-1])[::-1], [0]])[k]
    return rates(tp_at, fp_at, pos.sum() - tp_at, 0)["dice"]


def best_threshold(pos: np.ndarray, neg: np.ndarray, grid: np.ndarray | None = None) -> tuple[float, float]:
    """The grid threshold with the highest global Dice (the lowest one on ties) and that Dice."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else np.asarray(grid)
    dice = dice_by_threshold(pos, neg, grid)
    i = int(np.argmax(dice))
    return float(grid[i]), float(dice[i])


def bootstrap_ci(values: np.ndarray, groups: list[str], resamples: int = RESAMPLES, seed: int = SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``, resampling whole groups (cases).

    Each resample draws as many cases as there are, with replacement, and takes the mean over
    all slices of the drawn cases (a case drawn twice counts twice).

    Args:
        values: ``[N]`` one value per slice (e.g. per-image Dice).
        groups: ``[N]`` the case id of each slice.

    Returns:
        ``(low, high)``.
    """
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


def summarize(counts: np.ndarray, image_auroc: np.ndarray, pos: np.ndarray, neg: np.ndarray, cases: list[str], sources: list[str], threshold: float) -> dict:
    """Everything ``metrics.json`` holds except the run description.

    Args:
        counts: ``int [N, 4]`` per-slice ``(tp, fp, fn, tn)``.
        image_auroc: ``[N]`` per-slice AUROC (``nan`` where undefined).
        pos, neg: ``[bins]`` pooled probability histograms of lesion and background pixels.
        cases, sources: ``[N]`` case id and source folder of each slice.
        threshold: the threshold the counts were taken at.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    per_image = rates(*counts.T)
    per_image["auroc"] = np.asarray(image_auroc, dtype=np.float64)
    total = counts.sum(0)
    pooled = {k: _number(v) for k, v in rates(*total).items()}
    _, _, _, pooled["auroc"] = roc_from_histograms(pos, neg)
    _, _, pooled["average_precision"] = pr_from_histograms(pos, neg)
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
            }
            for s, idx in sorted(by_source.items())
        }
    out["policy"] = POLICY
    return out


# -- text outputs ----------------------------------------------------------------------------
def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def metric_table(metrics: dict) -> str:
    """The markdown table ``metric | per-image mean | global`` of a ``summarize`` result."""
    lines = ["| metric | per-image mean | global (pooled pixels) |", "|---|---|---|"]
    for k in METRICS:
        lines.append(f"| {LABELS[k]} | {_fmt(metrics['per_image_mean'][k])} | {_fmt(metrics['global'][k])} |")
    ci = metrics["dice_ci95"]
    lines.append(f"\nper-image Dice 95% CI (bootstrap over {ci['cases']} cases): [{_fmt(ci['low'])}, {_fmt(ci['high'])}]")
    return "\n".join(lines)


def markdown(metrics: dict) -> str:
    """The whole ``metrics.md``: run description, metric table, counts, sources and rules."""
    c = metrics["counts"]
    lines = [
        "# Evaluation report",
        "",
        f"- models: {', '.join(metrics.get('checkpoints', []))}",
        f"- data: {', '.join(metrics.get('roots', []))}" + (f" (split: {metrics['split']})" if metrics.get("split") else " (all pairs)"),
        f"- threshold: {metrics['threshold']:.2f} ({metrics.get('threshold_source', 'given')})"
        + ("" if "tta" not in metrics else f"; flip TTA {'on' if metrics['tta'] else 'off'}"),
        f"- images: {c['images']}, cases: {c['cases']}, images without lesion: {c['images_without_lesion']}",
        f"- pixels: {c['pixels']}, lesion: {c['lesion_pixels']}, predicted lesion: {c['predicted_pixels']}",
        f"- average precision (pixels): {_fmt(metrics['global']['average_precision'])}",
        "",
        metric_table(metrics),
    ]
    if "per_source" in metrics:
        lines += ["", "## Per source", "", "| source | images | cases | per-image Dice | global Dice |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {v['images']} | {v['cases']} | {v['dice_image']:.4f} | {v['dice_global']:.4f} |" for s, v in metrics["per_source"].items()]
    lines += ["", "## Rules", ""] + [f"- {k}: {v}" for k, v in metrics["policy"].items()]
    return "\n".join(lines) + "\n"


def write_json(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")


def write_per_image(path: Path, rows: list[dict]) -> None:
    """``per_image.csv``: file, case_id, dice, iou, gt_pixels, pred_pixels (one row per slice)."""
    fields = ["file", "case_id", "dice", "iou", "gt_pixels", "pred_pixels"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "dice": f"{r['dice']:.6f}", "iou": f"{r['iou']:.6f}"})


# -- figures ---------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def roc_figure(pos: np.ndarray, neg: np.ndarray, point: tuple[float, float] | None, threshold: float) -> Figure:
    """Pixel ROC curve with its AUC and the operating point ``(fpr, tpr)`` at ``threshold``."""
    fpr, tpr, _, auc = roc_from_histograms(pos, neg)
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="chance")
    if auc is not None:
        ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {auc:.4f})")
    if point is not None and None not in point:
        ax.plot(*point, "o", c="crimson", label=f"threshold {threshold:.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.02), xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)")
    ax.set_title("Pixel ROC" + (f", AUC = {auc:.4f}" if auc is not None else " (undefined: one class only)"))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def pr_figure(pos: np.ndarray, neg: np.ndarray, point: tuple[float | None, float | None] | None, threshold: float) -> Figure:
    """Pixel precision-recall curve with average precision, prevalence and the operating point."""
    recall, precision, ap = pr_from_histograms(pos, neg)
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    total = pos.sum() + neg.sum()
    if total:
        ax.axhline(pos.sum() / total, ls=":", c="grey", label=f"prevalence {pos.sum() / total:.3f}")
    if ap is not None:
        ax.plot(recall, precision, lw=2, label=f"PR (AP = {ap:.3f})")
    if point is not None and None not in point:
        ax.plot(*point, "o", c="crimson", label=f"threshold {threshold:.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.02), xlabel="recall (sensitivity)", ylabel="precision")
    ax.set_title("Pixel precision-recall" + (f", AP = {ap:.3f}" if ap is not None else " (undefined: no lesion)"))
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def confusion_figure(tp: int, fp: int, fn: int, tn: int, threshold: float) -> Figure:
    """2x2 pixel confusion matrix: counts and row-normalised rates (rows = ground truth)."""
    counts = np.array([[tn, fp], [fn, tp]], dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = _figure(5, 4.4)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{int(counts[i, j]):,}\n{100 * norm[i, j]:.1f}%", ha="center", va="center", fontsize=12, c="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks([0, 1], ["background", "lesion"])
    ax.set_yticks([0, 1], ["background", "lesion"])
    ax.set(xlabel="predicted", ylabel="ground truth")
    ax.set_title(f"Pixel confusion matrix (threshold {threshold:.2f})\ncounts and share of each true class")
    fig.colorbar(im, ax=ax, label="row-normalised rate")
    return fig


def samples_figure(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], threshold: float, among: str = "all slices") -> Figure:
    """``image | ground truth | prediction | overlay`` for a few slices.

    Args:
        rows: ``(title, image, gt, prob)`` with ``image`` float ``[H, W]`` in [0, 1], ``gt``
            ``[H, W]`` in {0, 1} and ``prob`` ``[H, W]`` (sizes may differ between rows).
        threshold: lesion where ``prob >= threshold``.
        among: which slices were ranked, for the title.
    """
    fig = _figure(12, 3.1 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for r, (title, image, gt, prob) in enumerate(rows):
        pred = prob >= threshold
        overlay = np.repeat(image[..., None], 3, axis=2) * 0.7
        overlay[gt > 0] += np.array([0.0, 0.3, 0.0])
        overlay[pred] += np.array([0.3, 0.0, 0.0])
        panels = [(image, "image"), (gt, "ground truth"), (pred, f"prediction (p >= {threshold:.2f})"), (np.clip(overlay, 0, 1), "overlay (truth green,\nprediction red, both yellow)")]
        for c, (panel, name) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=10)
        axes[r, 0].set_ylabel(title, fontsize=9)
    fig.suptitle(f"Prediction samples: best, median and worst by per-image Dice ({among})")
    return fig


def read_learning_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per-epoch ``train/loss``, ``val/loss``, ``train/dice``, ``val/dice`` of a TensorBoard run.

    Returns:
        ``{tag: {epoch: value}}`` for the tags found (steps are mapped to epochs with the
        ``epoch`` scalar Lightning logs; the last value of an epoch wins).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "images": 1, "histograms": 1, "compressedHistograms": 1, "tensors": 1, "audio": 1}
    acc = EventAccumulator(str(run_dir), size_guidance=guidance)
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    epoch_of = {e.step: int(e.value) for e in acc.Scalars("epoch")} if "epoch" in tags else {}
    curves = {}
    for tag in ("train/loss", "val/loss", "train/dice", "val/dice"):
        if tag in tags:
            curves[tag] = {epoch_of.get(e.step, e.step): e.value for e in acc.Scalars(tag)}
    return curves


def learning_curves_figure(runs: dict[str, dict[str, dict[int, float]]]) -> Figure:
    """Loss and Dice per epoch, train (solid) and validation (dashed), one colour per run."""
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for i, (name, curves) in enumerate(runs.items()):
        colour = f"C{i}"
        for ax, metric in zip(axes, ("loss", "dice")):
            for stage, style in (("train", "-"), ("val", "--")):
                points = sorted(curves.get(f"{stage}/{metric}", {}).items())
                if points:
                    label = f"{stage}" if len(runs) == 1 else f"{name} {stage}"
                    ax.plot(*zip(*points), style, marker="o", ms=3, c=colour if len(runs) > 1 else ("C0" if stage == "train" else "C1"), label=label)
    for ax, title in zip(axes, ("Loss (Dice + BCE)", "Pixel Dice")):
        ax.set(xlabel="epoch", ylabel=title.split()[0].lower() if title.startswith("Loss") else "Dice", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle("Learning curves")
    return fig
