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
