"""The Dataset: one sample per slice, read through the shared preprocessing, augmented for
training (see ``covidseg.data.datamodule`` for the data flow)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from covidseg.data.io import Normalization, preprocess_image, preprocess_mask
from covidseg.data.patches import patch_window
from covidseg.data.classes import CLASS_NAMES
from covidseg.data.samples import Sample, classes_of, image_of, lung_mask_of, mask_of
from covidseg.data.volumes import LUNG_WINDOW


class SliceDataset(Dataset):
    """Image/mask pairs, preprocessed, optionally augmented.

    Shape:
        image: ``float32 [1, S, S]`` in [0, 1]; mask: ``float32 [1, S, S]`` in {0, 1}, or the
        lesion fraction of each pixel in [0, 1] with ``soft_masks``. With ``lung_masks`` also
        lung_mask: ``float32 [1, S, S]`` in {0, 1} (zeros where the source has none) and
        has_lung_mask: ``bool`` (whether it has one: the lung loss skips the others). With
        ``lesion_classes`` also classes: ``float32 [2, S, S]`` in {0, 1} (GGO, consolidation;
        zeros where the source is binary) and has_classes: ``bool`` (whether its source has
        class labels: a binary source supervises only the union, ``mask``). With
        ``patch_size`` ``P``: one random ``[1, P, P]`` window of the image and every target
        (forced onto lesion with probability ``foreground_fraction``).
    """

    def __init__(
        self,
        samples: list[Sample],
        image_size: int,
        normalization: Normalization = "auto",
        transform=None,
        soft_masks: bool = False,
        lesion_labels: list[int] | None = None,
        window: tuple[float, float] = LUNG_WINDOW,
        lung_masks: bool = False,
        patch_size: int | None = None,
        foreground_fraction: float = 0.0,
        lung_labels: list[int] | None = None,
        lesion_classes: bool = False,
    ):
        self.lesion_classes = lesion_classes
        self.samples = samples
        self.lesion_labels = lesion_labels
        self.window = tuple(window)
        self.lung_masks = lung_masks
        self.lung_labels = lung_labels
        self.soft_masks = soft_masks
        self.image_size = image_size
        self.normalization = normalization
        self.transform = transform
        self.patch_size = patch_size
        self.foreground_fraction = foreground_fraction

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        image = preprocess_image(image_of(s, self.window), self.image_size, self.normalization)
        mask = preprocess_mask(mask_of(s, self.lesion_labels), self.image_size, self.soft_masks)
        targets = {"mask": mask}
        if self.lung_masks:
            has = s.lung_mask is not None
            targets["lung_mask"] = preprocess_mask(lung_mask_of(s, self.lung_labels), self.image_size) if has else np.zeros_like(mask, dtype=np.uint8)
        if self.lesion_classes:
            classes = classes_of(s)
            for k, name in enumerate(CLASS_NAMES):
                targets[name] = preprocess_mask(classes[k], self.image_size) if classes is not None else np.zeros(mask.shape, np.uint8)
        if self.transform is not None:
            out = self.transform(image=image, **targets)
            image, targets = out["image"], {k: out[k] for k in targets}
        if self.patch_size is not None and self.patch_size < self.image_size:
            window = patch_window(targets["mask"], self.patch_size, self.foreground_fraction)
            image, targets = image[window], {k: v[window] for k, v in targets.items()}
        item = {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None], "index": index}
        classes = [targets.pop(name) for name in CLASS_NAMES] if self.lesion_classes else None
        item.update({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None] for k, v in targets.items()})
        if self.lung_masks:
            item["has_lung_mask"] = s.lung_mask is not None
        if classes is not None:
            item["classes"] = torch.from_numpy(np.ascontiguousarray(np.stack(classes), dtype=np.float32))
            item["has_classes"] = s.classes is not None
        return item
