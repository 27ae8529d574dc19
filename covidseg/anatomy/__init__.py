"""The anatomy stage: what the network's outputs mean as anatomy, in one place for predict,
evaluate and the viewer, so what evaluate scores is what a user gets.

    network maps (lesion, lung) + the scan -> clean_volume / clean_slice -> Anatomy:
        body        the patient (HU only; ``body``)
        lungs       uint8 labels 1 right, 2 left: 3D components, gas and airways out, holes
                    filled (``lungs``)
        lesion      bool, only inside the lungs grown by ``LESION_MARGIN_MM`` (pleural lesions),
                    and counted as lung (lesions are lung tissue, the denominator of involvement)
        removed     mL (volumes) or pixels (images) dropped by each rule, so a user sees it
        qc          why the study may not be graded (``checks.grade_checks``; volumes only)

On a 2D export (no HU, no spacing) there is no body; lungs keep their size and hole rules and
lesions are kept within ``LESION_MARGIN_PX`` of them. Without a lung output (lesion-only
models) only the body applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from covidseg.anatomy.body import body_mask, disc
from covidseg.anatomy.checks import grade_checks, hu_protocol
from covidseg.anatomy.lungs import clean_lungs

__all__ = ["Anatomy", "clean_slice", "clean_volume", "hu_protocol", "grade_checks", "body_mask"]

LESION_MARGIN_MM = 5.0
LESION_MARGIN_PX = 3  # 2D exports: about 5 mm at a 256-px chest slice
MIN_SLICE_SHARE = 0.02  # 2D: a lung component under this share of the largest is dropped


@dataclass
class Anatomy:
    """The cleaned outputs of one study (see the module docstring). Shapes: ``[Z, H, W]``
    for volumes, ``[H, W]`` for images."""

    lesion: np.ndarray
    lungs: np.ndarray | None = None
    body: np.ndarray | None = None
    removed: dict[str, float] = field(default_factory=dict)
    qc: list[str] = field(default_factory=list)
    sided: bool = False  # lungs carry right (1) / left (2) labels
    region: np.ndarray | None = None  # where lesion may lie (grown lungs, inside the body); None: anywhere


def _grow_sides(lungs: np.ndarray, radius_px: int) -> np.ndarray:
    """Each lung label grown by ``radius_px`` in every slice (the right lung wins ties)."""
    out = np.zeros_like(lungs)
    kernel = disc(radius_px)
    for k in np.nonzero(lungs.any(axis=(1, 2)))[0]:
        for side in (2, 1):
            out[k][cv2.dilate((lungs[k] == side).astype(np.uint8), kernel) > 0] = side
    return out


def _gate(lesion: np.ndarray, lungs: np.ndarray, radius_px: int, body: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Lesion inside the grown lungs (and the body); lungs with those lesions added; pixels
    dropped; the region lesions may lie in."""
    grown = _grow_sides(lungs, radius_px)
    region = grown > 0
    if body is not None:
        region &= body
    keep = np.asarray(lesion, bool) & region
    dropped = int(np.count_nonzero(lesion)) - int(np.count_nonzero(keep))
    lungs = lungs.copy()
    add = keep & (lungs == 0)
    lungs[add] = grown[add]
    return keep, lungs, dropped, region


def clean_volume(lesion: np.ndarray, lungs: np.ndarray | None, hu: np.ndarray | None, spacing: tuple[float, float, float]) -> Anatomy:
    """The anatomy of one volume.

    Shape:
        lesion: ``[Z, H, W]`` bool (thresholded lesion output); lungs: the same for the lung
        output, or None; hu: ``[Z, H, W]`` HU (display order, as the slices), or None;
        spacing: (slice, row, column) mm.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    body = body_mask(hu, min(spacing[1:])) if hu is not None else None
    lesion = np.asarray(lesion, bool)
    removed: dict[str, float] = {}
    if lungs is None:
        if body is not None:
            removed["lesion_outside_body"] = float(np.count_nonzero(lesion & ~body)) * voxel_ml
            lesion = lesion & body
        return Anatomy(lesion, None, body, {k: v for k, v in removed.items() if v > 0})
    labels, lung_removed = clean_lungs(lungs, hu, body, spacing)
    removed.update({f"lung_{k}": v for k, v in lung_removed.items()})
    radius = max(1, round(LESION_MARGIN_MM / max(min(spacing[1:]), 1e-3)))
    lesion, labels, dropped, region = _gate(lesion, labels, radius, body)
    removed["lesion_outside_lungs"] = dropped * voxel_ml
    return Anatomy(lesion, labels, body, {k: v for k, v in removed.items() if v > 0}, grade_checks(labels, spacing), sided=True, region=region)


def clean_slice(lesion: np.ndarray, lungs: np.ndarray | None, hu: np.ndarray | None = None, spacing: tuple[float, float] | None = None) -> Anatomy:
    """The anatomy of one 2D slice: an image export (``hu`` None) or a slice in HU.

    ``removed`` counts pixels. Shape: lesion, lungs ``[H, W]`` bool; hu ``[H, W]`` or None.
    """
    pixel = spacing if spacing is not None else (1.0, 1.0)
    body = body_mask(hu, min(pixel)) if hu is not None else None
    lesion = np.asarray(lesion, bool)
    if lungs is None:
        if body is None:
            return Anatomy(lesion)
        return Anatomy(lesion & body, None, body, {"lesion_outside_body": float(np.count_nonzero(lesion & ~body))}, region=body)
    labels, removed = clean_lungs(np.asarray(lungs, bool)[None], None if hu is None else hu[None], None if body is None else body[None], (1.0, *pixel), min_ml=0.0, min_share=MIN_SLICE_SHARE)
    px = 1000.0 / float(np.prod(pixel))  # mL back to pixels: clean_lungs counts mL of 1-mm slices
    removed = {f"lung_{k}": v * px for k, v in removed.items()}
    radius = LESION_MARGIN_PX if spacing is None else max(1, round(LESION_MARGIN_MM / min(pixel)))
    kept, labels, dropped, region = _gate(lesion[None], labels, radius, None if body is None else body[None])
    removed["lesion_outside_lungs"] = float(dropped)
    return Anatomy(kept[0], labels[0], None if body is None else body, {k: v for k, v in removed.items() if v > 0}, sided=True, region=region[0])
