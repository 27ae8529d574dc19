"""Semi-supervised training on unlabelled slices: the mean teacher (Tarvainen & Valpola, NeurIPS
2017), as used for medical segmentation by UA-MT (Yu et al., MICCAI 2019) and many since.

The teacher is an exponential moving average of the network (``ema_decay``, buffers included);
on each unlabelled slice the network, given the slice with a little Gaussian noise, is pulled
towards the teacher's probabilities on the clean slice (mean squared error over every output
channel, lesion and lungs). The weight ramps up over the first ``rampup_epochs`` (``exp(-5 (1 -
t)^2)``), while the teacher is still close to a random network. The teacher lives beside the
model, not in its checkpoint: the network (the student) is what is saved and predicts; a resumed
run starts its teacher again from the network.

Knobs (``LitUNet``): ``consistency_weight`` (0 turns it off; 1.0 by default, used only when the
data module has ``--data.unlabelled``), ``ema_decay`` (0.99), ``consistency_rampup`` (epochs, 5),
``consistency_noise`` (sd of the student's input noise, 0.05 on the [0, 1] image).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class MeanTeacher:
    """The EMA teacher of ``net`` and the consistency loss (see the module docstring)."""

    def __init__(self, net: nn.Module, decay: float = 0.99, noise: float = 0.05):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay {decay}: must be in [0, 1)")
        self.decay, self.noise = decay, noise
        self.teacher = copy.deepcopy(net).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """teacher = decay * teacher + (1 - decay) * net, parameters and float buffers alike."""
        for t, s in zip(self.teacher.state_dict().values(), net.state_dict().values()):
            if t.dtype.is_floating_point:
                t.mul_(self.decay).add_(s.detach(), alpha=1.0 - self.decay)
            else:
                t.copy_(s)

    def consistency(self, forward, x: torch.Tensor) -> torch.Tensor:
        """Mean squared difference of the network's probabilities on ``x`` with noise and the
        teacher's on ``x``.

        Shape:
            x: ``[B, 1, H, W]`` unlabelled slices in [0, 1] -> scalar.
        """
        with torch.no_grad():
            target = self.teacher(x.contiguous(memory_format=torch.channels_last)).float().sigmoid()
        noisy = (x + torch.clamp(self.noise * torch.randn_like(x), -2 * self.noise, 2 * self.noise)).clamp(0, 1)
        return torch.mean((forward(noisy).float().sigmoid() - target) ** 2)


def rampup(epoch: float, epochs: int) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = epoch / epochs`` clipped to [0, 1]; 1 when ``epochs`` is 0."""
    if epochs <= 0:
        return 1.0
    t = min(max(epoch / epochs, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
