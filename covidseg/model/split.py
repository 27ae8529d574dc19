"""The lesion classes' head: ground-glass (GGO) and consolidation from partial labels.

Hierarchical, not marginal. Channel 0 stays the lesion ("infection") logit, trained by the same
lesion loss as every covidseg model, on every slice of every source; one more channel (the last:
after the lungs' with ``lung_output``) is the split, the logit of "consolidation, given lesion",
trained only inside the true lesion of slices whose source has class labels
(``losses.class_split_loss``). Then ``P(GGO) = P(lesion) (1 - s)`` and ``P(consolidation) =
P(lesion) s``, and the label map is the cleaned lesion mask split at ``s >= 0.5``.

Why not a marginal loss (two class channels whose union is supervised where only "infection" is
known): there the binary output users have today would become a derived quantity (``1 - (1 -
p_ggo)(1 - p_cons)``) with a new calibration, so the stored threshold, the checkpoint selection
on ``val/dice_image``, the anatomy stage, severity and the viewer would all see a different lesion
output, and the few class slices (50 MedSeg slices against 1,319 binary ones) would pull on the
union through their class terms. With the hierarchy the union is learned exactly as before, from
all slices (so it is not worse by construction of its loss), the split learns from the class slices
alone, and binary labels can never be read as a class: they do not reach the split's loss at all.
Old models (no split channel) and new ones give the same channel 0.

**Detached split** (``--model.class_detach true``, ``detach_split``): the shared encoder and
decoder still learn from every loss but the split's, and the split channel reads their features
without changing them, so the class labels cannot move the lesion output at all (c6, the shared
version, cost the MedSeg union Dice 0.010-0.031 on every fold; docs/RESULTS.md). The weights and
the outputs are those of the plain head; only the gradient differs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covidseg.data.classes import CLASS_NAMES

SPLIT_THRESHOLD = 0.5  # consolidation where P(consolidation | lesion) >= this


def split_channel(lung_output: bool) -> int:
    """The split channel's index: after the lesion (0) and, with ``lung_output``, the lungs (1)."""
    return 1 + int(lung_output)


def class_probabilities(lesion: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """Per-class probabilities from the lesion and split probabilities.

    Shape:
        lesion, split: ``[B, 1, H, W]`` -> ``[B, 2, H, W]`` (GGO, consolidation); their sum is ``lesion``.
    """
    return torch.cat([lesion * (1 - split), lesion * split], 1)


def class_label_map(lesion_mask: np.ndarray, split: np.ndarray) -> np.ndarray:
    """The label map of a (cleaned) lesion mask: 0 background, 1 GGO, 2 consolidation, only
    inside ``lesion_mask``. Shape: both ``[..., H, W]`` -> ``uint8`` of the same shape."""
    out = np.zeros(lesion_mask.shape, np.uint8)
    inside = lesion_mask > 0
    out[inside] = np.where(split[inside] >= SPLIT_THRESHOLD, 2, 1)
    return out


LABEL_VALUES = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}  # the label map's values


class DetachedSplitConv(nn.Conv2d):
    """The segmentation head's convolution with its last output channel (the split) computed on
    detached features: the same weights and outputs as ``nn.Conv2d``, but the split loss's
    gradient reaches only that channel's own weights, never the features below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.out_channels - 1
        bias = self.bias
        rest = self._conv_forward(x, self.weight[:k], None if bias is None else bias[:k])
        split = self._conv_forward(x.detach(), self.weight[k:], None if bias is None else bias[k:])
        return torch.cat([rest, split], 1)


def detach_split(net: nn.Module) -> nn.Module:
    """Makes an smp U-Net's head compute its last channel (the split) on detached features
    (``DetachedSplitConv``), in place: parameters, state-dict keys and outputs unchanged."""
    conv = net.segmentation_head[0]
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected the segmentation head to start with a Conv2d, got {type(conv).__name__}")
    conv.__class__ = DetachedSplitConv  # same parameters and buffers; no re-initialisation, no RNG drawn
    return net
