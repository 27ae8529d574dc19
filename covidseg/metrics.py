"""Metric names and torchmetrics collections.

Pixel metrics (``dice``, ``iou``, ``precision``, ``recall``, ``specificity``, ``accuracy``)
pool every pixel of the epoch at threshold 0.5, so a slice without lesion only contributes its
false positives. ``dice_image`` is the mean of per-slice Dice, where a slice with neither
lesion nor prediction scores 1 and a slice with only one of them scores 0. ``auroc`` is pixel
AUROC from 1000-bin probability histograms (exact AUROC would store every pixel).
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)

# Shared with callbacks' ``monitor`` and the reports.
VAL_DICE = "val/dice"
VAL_LOSS = "val/loss"
TRAIN_LOSS = "train/loss"
AUROC_BINS = 1000


def per_image_dice(pred: torch.Tensor, target: torch.Tensor, empty_score: float = 1.0) -> torch.Tensor:
    """Dice of each slice.

    Shape:
        pred, target: ``[B, ...]`` binary (bool or {0,1}); returns ``[B]``.
    """
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    inter = (p * t).sum(1)
    denom = p.sum(1) + t.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.full_like(denom, empty_score))


class PerImageDice(Metric):
    """Mean per-slice Dice (empty prediction on empty mask = 1)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        dice = per_image_dice(preds >= self.threshold, target > 0.5)
        self.total += dice.sum().double()
        self.count += dice.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class HistogramAUROC(Metric):
    """Pixel AUROC from histograms of lesion and background probabilities (``bins`` bins).

    One ``bincount`` per update, so it costs about as much as the other pixel metrics and its
    state is two ``[bins]`` counters, whatever the number of pixels (torchmetrics' binned
    ``BinaryAUROC`` loops over its thresholds at every update). The ROC is the one
    ``covidseg.report`` draws, so training logs and reports agree.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, bins: int = AUROC_BINS, **kwargs):
        super().__init__(**kwargs)
        self.bins = bins
        self.add_state("counts", torch.zeros(2 * bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        idx = (preds.detach().flatten().float() * self.bins).long().clamp_(0, self.bins - 1)
        self.counts += torch.bincount(idx + self.bins * (target.flatten() > 0).long(), minlength=2 * self.bins)

    def compute(self) -> torch.Tensor:
        from covidseg.report import roc_from_histograms

        counts = self.counts.cpu().numpy()
        auc = roc_from_histograms(counts[self.bins :], counts[: self.bins])[3]
        return torch.tensor(float("nan") if auc is None else auc, dtype=torch.float32)


def segmentation_metrics(prefix: str, threshold: float = 0.5) -> MetricCollection:
    """The full set for validation and test, keys ``{prefix}/dice`` etc."""
    return MetricCollection(
        {
            "dice": BinaryF1Score(threshold=threshold),
            "iou": BinaryJaccardIndex(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "specificity": BinarySpecificity(threshold=threshold),
            "accuracy": BinaryAccuracy(threshold=threshold),
            "auroc": HistogramAUROC(),
            "dice_image": PerImageDice(threshold=threshold),
        },
        prefix=f"{prefix}/",
    )


def loss_metric() -> MeanMetric:
    return MeanMetric()
