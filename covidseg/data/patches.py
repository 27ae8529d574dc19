"""Random training patches from a preprocessed slice (nnU-Net style patch training).

Training can draw a square patch from each whole slice instead of feeding the whole slice: the
network sees the slice at the target resolution (``data.image_size``) at the cost of a
``data.patch_size`` step. With probability ``foreground`` the patch is forced to contain lesion
(a lesion pixel is picked at random and the patch placed at random around it), the
oversampling nnU-Net uses for one third of each batch; slices without lesion always give a
uniformly placed patch. The U-Net is fully convolutional, so validation and inference run on
the whole slice at ``image_size`` with the same weights.

Randomness comes from torch's global generator, which the DataLoader seeds per worker.
"""

from __future__ import annotations

import numpy as np
import torch


def _draw(low: int, high: int) -> int:
    """A uniform integer in ``[low, high]``."""
    return low + int(torch.randint(high - low + 1, ()).item())


def patch_origin(mask: np.ndarray, size: int, foreground: bool) -> tuple[int, int]:
    """Top-left corner ``(y, x)`` of a ``size`` x ``size`` patch of a slice with ``mask``.

    Args:
        mask: ``[H, W]`` lesion mask (lesion ``> 0.5``; soft masks: any value ``> 0`` when no
            pixel is above one half), ``H, W >= size``.
        size: patch side.
        foreground: place the patch so that it contains a lesion pixel (when there is one).
    """
    h, w = mask.shape[:2]
    if foreground:
        ys, xs = np.nonzero(mask > 0.5)
        if not len(ys):
            ys, xs = np.nonzero(mask > 0)
        if len(ys):
            i = _draw(0, len(ys) - 1)
            py, px = int(ys[i]), int(xs[i])
            return _draw(max(0, py - size + 1), min(py, h - size)), _draw(max(0, px - size + 1), min(px, w - size))
    return _draw(0, h - size), _draw(0, w - size)


def patch_window(mask: np.ndarray, size: int, foreground_fraction: float = 0.0) -> tuple[slice, slice]:
    """A random ``size`` x ``size`` window of a slice, forced onto lesion with probability
    ``foreground_fraction``; index the image and every target (lesion mask, lung mask) with it.

    Args:
        mask: ``[H, W]`` lesion mask placing forced windows, at least ``size`` on each side.
        size: patch side in pixels.
        foreground_fraction: probability that the window is forced to contain lesion.
    """
    h, w = mask.shape[:2]
    if size > min(h, w):
        raise ValueError(f"patch size {size} exceeds the slice ({h}x{w})")
    foreground = foreground_fraction > 0 and float(torch.rand(()).item()) < foreground_fraction
    y, x = patch_origin(mask, size, foreground)
    return slice(y, y + size), slice(x, x + size)


def random_patch(image: np.ndarray, mask: np.ndarray, size: int, foreground_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The same random window (``patch_window``) of ``image`` and ``mask``.

    Shape:
        image ``[H, W]``, mask ``[H, W]`` -> ``[size, size]`` each (views, same dtypes).
    """
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
    window = patch_window(mask, size, foreground_fraction)
    return image[window], mask[window]
