"""The torchmetrics object training logs with: it accumulates per-slice confusion counts and
pooled probability histograms on the device (``metrics.confusion_counts`` / ``metrics.histograms``,
no host synchronisation per step) and computes the epoch's values with ``metrics.epoch_scores``,
the same maths ``evaluate`` uses. Under DDP the per-slice counts are gathered from every rank
(``cat``) and the histograms summed, so the result equals a single-process run.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from covidseg.metrics.scores import BINS, confusion_counts, epoch_scores, histograms


class SegmentationScores(Metric):
    """Global pixel Dice, IoU, precision, recall, specificity, accuracy, per-image Dice and
    (``auroc=True``) histogram AUROC of one stage.

    Args:
        threshold: lesion where ``probability >= threshold``.
        auroc: also keep the ``[2, bins]`` probability histograms.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, auroc: bool = True, bins: int = BINS, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.auroc = auroc
        self.bins = bins
        self.add_state("counts", default=[], dist_reduce_fx="cat")  # [N, 5]: tp, fp, fn, tn, labelled
        if auroc:
            self.add_state("hist", default=torch.zeros(2, bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> None:
        """Shape: probs ``[B, 1, H, W]`` float (cast to fp32 here), target ``[B, 1, H, W]``;
        ``labelled`` ``[B]`` bool: slices whose target exists (partial labels, e.g. lung masks
        only some sources have); the others are kept out of every score, without a host sync."""
        probs = probs.detach().float()
        flags = torch.ones(len(probs), dtype=torch.long, device=probs.device) if labelled is None else labelled.long()
        self.counts.append(torch.cat([confusion_counts(probs, target, self.threshold), flags[:, None]], 1))
        if self.auroc:
            self.hist += histograms(probs, target, self.bins, labelled)

    def compute(self) -> dict[str, torch.Tensor]:
        counts = dim_zero_cat(self.counts).cpu().numpy() if len(self.counts) else np.zeros((0, 5), np.int64)
        counts = counts[counts[:, 4] > 0, :4]
        hist = self.hist.cpu().numpy() if self.auroc else None
        values = epoch_scores(counts, *(() if hist is None else (hist[1], hist[0])))
        if not len(counts):  # no labelled slice: undefined, not the empty-mask rule's 1.0
            values = {k: float("nan") for k in values}
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


class WeightedMean(Metric):
    """Mean of values weighted by their counts (the batch losses by batch size), summed across
    ranks under DDP. No NaN check, so no host sync per update. torchmetrics' ``MeanMetric``
    cannot do both: with ``nan_strategy="disable"`` (1.5+; absent in 1.4) it replaces the
    weights by ones, so a short last batch weighed as much as a full one."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor | float, weight: torch.Tensor | float = 1.0) -> None:
        """Shape: ``value`` a scalar (or any shape, summed); ``weight`` broadcast to it."""
        value = torch.as_tensor(value, device=self.total.device).detach().to(torch.float32)
        weight = torch.broadcast_to(torch.as_tensor(weight, device=self.total.device, dtype=torch.float32), value.shape)
        self.total += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


def loss_metric() -> WeightedMean:
    """Mean of the batch losses, weighted by batch size (see ``WeightedMean``)."""
    return WeightedMean()
