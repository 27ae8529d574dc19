"""Segmentation losses beyond smp's: soft Dice per slice and the partial-label loss of the
lung output (slices whose source has no lung mask add nothing)."""

from __future__ import annotations

import torch
from torch import nn


def soft_dice_per_image(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean over slices of (2|P*T| + s) / (|P| + |T| + s)``, ``P = sigmoid(logits)``;
    the smoothing ``s`` makes a lesion-free slice with an empty prediction score 1."""
    return 1 - soft_dice_scores(logits, target, smooth).mean()


def soft_dice_scores(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice of each slice. Shape: logits, target ``[B, ...]`` -> ``[B]``."""
    probs = logits.float().sigmoid().flatten(1)
    target = target.float().flatten(1)
    inter = (probs * target).sum(1)
    return (2 * inter + smooth) / (probs.sum(1) + target.sum(1) + smooth)


def partial_label_loss(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE of each slice, averaged over the labelled slices only (a slice whose
    source has no lung mask adds no loss and no gradient); 0 when none is labelled.

    Shape:
        logits, target: ``[B, 1, H, W]``; labelled: ``[B]`` bool.
    """
    w = labelled.float()
    bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1).mean(1)
    per_slice = bce + 1 - soft_dice_scores(logits, target)
    return (per_slice * w).sum() / w.sum().clamp_min(1.0)


def class_split_loss(split_logits: torch.Tensor, classes: torch.Tensor, has_classes: torch.Tensor) -> torch.Tensor:
    """The hierarchical head's split loss (``covidseg.model.split``): BCE of "consolidation, given
    lesion" over the lesion pixels of the slices whose source has class labels, averaged over
    those pixels; slices of binary sources, and background pixels, add no loss and no gradient.
    0 when no pixel is supervised.

    Shape:
        split_logits: ``[B, 1, H, W]``; classes: ``[B, 2, H, W]`` (GGO, consolidation) in
        {0, 1}; has_classes: ``[B]`` bool.
    """
    region = classes.float().amax(1, keepdim=True) * has_classes.float().view(-1, 1, 1, 1)
    target = classes[:, 1:2].float()
    bce = nn.functional.binary_cross_entropy_with_logits(split_logits.float(), target, reduction="none")
    return (bce * region).sum() / region.sum().clamp_min(1.0)
