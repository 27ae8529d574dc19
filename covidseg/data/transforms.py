"""Albumentations presets. Augmentation runs after the shared preprocessing, on the training
split only; image and mask go through the same geometric transform (the mask with
nearest-neighbour interpolation, or bilinear for soft masks)."""

from __future__ import annotations

import albumentations as A
import cv2


def train_transforms(
    *,
    rotate: float = 0.0,
    zoom: float = 0.0,
    shift: float = 0.0,
    hflip: float = 0.0,
    vflip: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    gamma: float = 0.0,
    blur: float = 0.0,
    soft_masks: bool = False,
) -> A.Compose:
    """The seed's set (rotate degrees, zoom and shift fractions, flip probabilities), plus
    optional intensity augmentation (brightness/contrast limits, gamma range around 1 and
    blur probability) for sources that differ in contrast. Zero (the default here) disables a
    transform; the product's defaults live in one place, ``CTDataModule``'s signature.
    ``soft_masks``: the masks are float lesion fractions, resampled bilinearly."""
    ops: list = []
    if rotate or zoom or shift:
        ops.append(
            A.Affine(
                rotate=(-rotate, rotate),
                scale=(1 - zoom, 1 + zoom),
                translate_percent=(-shift, shift),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_LINEAR if soft_masks else cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=1.0,
            )
        )
    if hflip:
        ops.append(A.HorizontalFlip(p=hflip))
    if vflip:
        ops.append(A.VerticalFlip(p=vflip))
    if brightness or contrast:
        ops.append(A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=0.8))
    if gamma:
        ops.append(A.RandomGamma(gamma_limit=(100 * (1 - gamma), 100 * (1 + gamma)), p=0.8))
    if blur:
        ops.append(A.GaussianBlur(blur_limit=(3, 5), p=blur))
    # lung masks (data.lung_masks) and class targets (data.lesion_classes) follow the lesion mask's geometry
    return A.Compose(ops, additional_targets={"lung_mask": "mask", "ggo": "mask", "consolidation": "mask"})
