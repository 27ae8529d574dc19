"""The report's figures: pixel ROC and PR curves, the confusion matrix, Dice by lesion size and
prediction samples (matplotlib, no metric maths: curves and bins come from ``covidseg.metrics.scores``)."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from covidseg.data.overlay import overlay
from covidseg.metrics.scores import pr_from_histograms, roc_from_histograms


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def roc_figure(pos: np.ndarray, neg: np.ndarray, point: tuple[float, float] | None, threshold: float) -> Figure:
    """Pixel ROC curve with its AUC and the operating point ``(fpr, tpr)`` at ``threshold``."""
    fpr, tpr, auc = roc_from_histograms(pos, neg)
    fig = new_figure(5, 5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="chance")
    if auc is not None:
        ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {auc:.4f})")
    title = "Pixel ROC" + (f", AUC = {auc:.4f}" if auc is not None else " (undefined: one class only)")
    _finish_curve(ax, point, threshold, "false positive rate (1 - specificity)", "true positive rate (sensitivity)", title, "lower right")
    return fig


def pr_figure(pos: np.ndarray, neg: np.ndarray, point: tuple[float | None, float | None] | None, threshold: float) -> Figure:
    """Pixel precision-recall curve with average precision, prevalence and the operating point."""
    recall, precision, ap = pr_from_histograms(pos, neg)
    fig = new_figure(5, 5)
    ax = fig.add_subplot()
    total = pos.sum() + neg.sum()
    if total:
        ax.axhline(pos.sum() / total, ls=":", c="grey", label=f"prevalence {pos.sum() / total:.3f}")
    if ap is not None:
        ax.plot(recall, precision, lw=2, label=f"PR (AP = {ap:.3f})")
    title = "Pixel precision-recall" + (f", AP = {ap:.3f}" if ap is not None else " (undefined: no lesion)")
    _finish_curve(ax, point, threshold, "recall (sensitivity)", "precision", title, "lower left")
    return fig


def _finish_curve(ax, point, threshold: float, xlabel: str, ylabel: str, title: str, legend: str) -> None:
    """The operating point, unit axes, labels, title, legend and grid shared by ROC and PR."""
    if point is not None and None not in point:
        ax.plot(*point, "o", c="crimson", label=f"threshold {threshold:.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title)
    ax.legend(loc=legend)
    ax.grid(alpha=0.3)


def confusion_figure(tp: int, fp: int, fn: int, tn: int, threshold: float) -> Figure:
    """2x2 pixel confusion matrix: counts and row-normalised rates (rows = ground truth)."""
    return matrix_figure(np.array([[tn, fp], [fn, tp]]), ["background", "lesion"], f"Pixel confusion matrix (threshold {threshold:.2f})\ncounts and share of each true class")


def matrix_figure(counts: np.ndarray, labels: list[str], title: str) -> Figure:
    """A K x K pixel confusion matrix (rows = ground truth): counts and row-normalised rates;
    2x2 for the lesion, 3x3 for background / GGO / consolidation (``evaluation.classes``)."""
    counts = np.asarray(counts, dtype=np.float64)
    k = len(labels)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = new_figure(5 + 0.8 * (k - 2), 4.4 + 0.8 * (k - 2))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(counts[i, j]):,}\n{100 * norm[i, j]:.1f}%", ha="center", va="center", fontsize=12, c="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted", ylabel="ground truth")
    ax.set_title(title)
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
    fig = new_figure(12, 3.1 * len(rows) + 0.4)
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for r, (title, image, gt, prob) in enumerate(rows):
        pred = prob >= threshold
        panels = [(image, "image"), (gt, "ground truth"), (pred, f"prediction (p >= {threshold:.2f})"), (overlay(image, pred, gt > 0), "overlay (truth green,\nprediction red, both yellow)")]
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


def involvement_figure(cases: list[dict]) -> Figure:
    """Predicted vs true lesion burden (% of lung) per case, with the CT grade edges."""
    from covidseg.metrics.severity import EDGES

    fig = new_figure(5, 5)
    ax = fig.add_subplot()
    true = [c["true_percent"] for c in cases]
    pred = [c["pred_percent"] for c in cases]
    top = max([*true, *pred, 10.0]) * 1.1
    ax.plot([0, top], [0, top], ls=":", c="grey", label="agreement")
    for edge in EDGES:
        if edge < top:
            ax.axvline(edge, c="lightgrey", lw=0.8)
            ax.axhline(edge, c="lightgrey", lw=0.8)
    ax.plot(true, pred, "o", c="C0", label=f"{len(cases)} cases")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="true involvement (% of lung)", ylabel="predicted involvement (% of lung)")
    shown = [f"{e:g} %" for e in EDGES if e < top]
    ax.set_title("Lesion burden per case\n" + (f"(grey lines: grade edges at {', '.join(shown)})" if shown else "(all below 25 %: CT-1 or CT-0)"))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def lesion_size_figure(by_size: dict) -> Figure:
    """Mean per-image Dice per lesion-size bin (``metrics.by_lesion_size``), slice count on each bar."""
    labels = list(by_size)
    values = [by_size[k]["dice_image"] for k in labels]
    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    bars = ax.bar(x, [0.0 if v is None else v for v in values], color=["0.6"] + ["tab:blue"] * (len(labels) - 1))
    for bar, label, v in zip(bars, labels, values):
        n = by_size[label]["images"]
        text = f"n={n}" if v is None else f"{v:.3f}\nn={n}"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, text, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, ["no lesion" if k == "none" else k for k in labels])
    ax.set(ylim=(0, 1.18), xlabel="ground-truth lesion pixels per slice (original resolution)", ylabel="mean per-image Dice")
    ax.set_title("Per-image Dice by lesion size")
    ax.grid(axis="y", alpha=0.3)
    return fig
