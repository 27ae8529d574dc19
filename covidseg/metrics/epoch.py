"""The torchmetrics object training logs with: it accumulates per-slice confusion counts and
pooled probability histograms on the device (``metrics.confusion_counts`` / ``metrics.histograms``,
no host synchronisation per step) and computes the epoch's values with ``metrics.epoch_scores``,
the same maths ``evaluate`` uses. Under DDP the per-slice counts are gathered from every rank
(``cat``) and the histograms summed, so the result equals a single-process run.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import MeanMetric, Metric
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
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def loss_metric() -> MeanMetric:
    """Mean of the batch losses; ``nan_strategy='disable'`` skips the per-step NaN check (a host sync)."""
    return MeanMetric(nan_strategy="disable")
