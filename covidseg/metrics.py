"""Metric names and torchmetrics collections.

Pixel metrics (``dice``, ``iou``, ``precision``, ``recall``, ``specificity``, ``accuracy``)
pool every pixel of the epoch at threshold 0.5, so a slice without lesion only contributes its
false positives. ``dice_image`` is the mean of per-slice Dice, where a slice with neither
lesion nor prediction scores 1 and a slice with only one of them scores 0. ``auroc`` is pixel
AUROC on a fixed grid of thresholds (exact AUROC would store every pixel).
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
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
AUROC_THRESHOLDS = 200


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
            "auroc": BinaryAUROC(thresholds=AUROC_THRESHOLDS),
            "dice_image": PerImageDice(threshold=threshold),
        },
        prefix=f"{prefix}/",
    )


def loss_metric() -> MeanMetric:
    return MeanMetric()
