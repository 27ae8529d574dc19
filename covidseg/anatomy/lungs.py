"""Lungs as anatomy: the model's lung output cleaned up over the whole volume, split into the
right (1) and left (2) lung as lungmask labels them.

What is dropped, and why (each in mL in ``removed``):

* ``outside_body``: lung outside the patient (``body.body_mask``): air around them, the table.
* ``gas``: a 3D component that is almost all air (more than ``GAS_FRACTION`` of its voxels
  below ``AIR_HU``): lung parenchyma is about -850 HU with vessels, so even emphysematous
  lungs keep most voxels above -950; bowel and stomach gas, the trachea and outside air do not.
* ``not_air``: a component whose mean is above ``MAX_MEAN_HU``: soft tissue called lung.
* ``airways``: per axial slice, a small (under ``AIRWAY_MAX_CM2``) all-air component of the
  lung mask: the trachea and main bronchi where they run outside the lungs.
* ``small``: components under ``MIN_COMPONENT_ML`` or ``MIN_COMPONENT_SHARE`` of the largest.

Holes inside each lung (vessels, consolidation) are filled slice by slice: they are lung, and
the denominator of involvement. Without HU (2D exports) only the size and hole rules apply.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from covidseg.anatomy.body import fill_holes

AIR_HU = -950.0
GAS_FRACTION = 0.6
MAX_MEAN_HU = -400.0
AIRWAY_MAX_CM2 = 8.0  # the trachea is about 2-3 cm2 in cross-section, a main bronchus 1-2
MIN_COMPONENT_ML = 5.0
MIN_COMPONENT_SHARE = 0.05
MIN_SIDE_SHARE = 0.2  # two components are the two lungs when the smaller holds this share of both


def _ml(voxels: int | float, voxel_ml: float) -> float:
    return float(voxels) * voxel_ml


def clean_lungs(
    lungs: np.ndarray, hu: np.ndarray | None = None, body: np.ndarray | None = None, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    min_ml: float = MIN_COMPONENT_ML, min_share: float = MIN_COMPONENT_SHARE,
) -> tuple[np.ndarray, dict[str, float]]:  # fmt: skip
    """The lung output as anatomy (see the module docstring).

    Shape:
        lungs: ``[Z, H, W]`` bool (the thresholded lung output); hu: ``[Z, H, W]`` HU or None;
        body: ``[Z, H, W]`` bool or None; spacing: (slice, row, column) mm; min_ml,
        min_share: the ``small`` rule (2D exports use a share only).

    Returns:
        ``(labels, removed)``: ``uint8 [Z, H, W]`` 0 background, 1 right lung, 2 left lung, and
        the mL dropped by each rule.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    m = np.asarray(lungs, bool).copy()
    removed: dict[str, float] = {}
    if body is not None:
        removed["outside_body"] = _ml(np.count_nonzero(m & ~body), voxel_ml)
        m &= body
    labels, n = ndimage.label(m)
    if n:
        idx = labels[m]
        sizes = np.bincount(idx, minlength=n + 1).astype(np.float64)
        reason = np.zeros(n + 1, object)
        if hu is not None:
            values = np.asarray(hu, np.float32)[m]
            air = np.bincount(idx, weights=values < AIR_HU, minlength=n + 1) / np.maximum(sizes, 1)
            mean = np.bincount(idx, weights=values, minlength=n + 1) / np.maximum(sizes, 1)
            reason[air > GAS_FRACTION] = "gas"
            reason[(reason == 0) & (mean > MAX_MEAN_HU)] = "not_air"
        alive = np.array([r == 0 for r in reason]) & (sizes > 0)
        alive[0] = False
        largest = sizes[alive].max() if alive.any() else 0.0
        small = alive & ((sizes * voxel_ml < min_ml) | (sizes < min_share * largest))
        reason[small] = "small"
        for key in ("gas", "not_air", "small"):
            hit = reason == key
            hit[0] = False
            if hit.any():
                removed[key] = removed.get(key, 0.0) + _ml(sizes[hit].sum(), voxel_ml)
        keep = np.array([r == 0 for r in reason])
        keep[0] = False
        m = keep[labels]
    if hu is not None and m.any():
        airway = _airways(m, np.asarray(hu), spacing)
        removed["airways"] = _ml(np.count_nonzero(airway), voxel_ml)
        m &= ~airway
    sides = split_sides(m)
    for side in (1, 2):
        part = sides == side
        for k in np.nonzero(part.any(axis=(1, 2)))[0]:
            filled = fill_holes(part[k]) & (sides[k] == 0)
            sides[k][filled] = side
    return sides, {k: v for k, v in removed.items() if v > 0}


def _airways(m: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Small all-air 2D components of the lung mask (the trachea and main bronchi)."""
    out = np.zeros(m.shape, bool)
    max_px = AIRWAY_MAX_CM2 * 100.0 / (spacing[1] * spacing[2])
    for k in np.nonzero(m.any(axis=(1, 2)))[0]:
        n, lab, stats, _ = cv2.connectedComponentsWithStats(m[k].astype(np.uint8), connectivity=8)
        if n <= 1:
            continue
        air = np.bincount(lab.ravel(), weights=(hu[k] < AIR_HU).ravel(), minlength=n) / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
        hit = (air > GAS_FRACTION) & (stats[:, cv2.CC_STAT_AREA] <= max_px)
        hit[0] = False
        if hit.any():
            out[k] = hit[lab]
    return out


def split_sides(m: np.ndarray) -> np.ndarray:
    """Right (1) and left (2) lung of a lung mask in display order (columns run from the
    patient's right to left, so the right lung is on the image's left).

    Two large 3D components are the two lungs; one (lungs touching at the anterior junction)
    is cut per slice at the emptiest column of its middle third.

    Shape:
        m: ``[Z, H, W]`` bool -> ``uint8 [Z, H, W]``.
    """
    m = np.asarray(m, bool)
    out = np.zeros(m.shape, np.uint8)
    if not m.any():
        return out
    labels, n = ndimage.label(m)
    idx = labels[m]
    sizes = np.bincount(idx, minlength=n + 1)
    cols = np.nonzero(m)[2]
    centre = np.bincount(idx, weights=cols, minlength=n + 1) / np.maximum(sizes, 1)
    order = np.argsort(sizes[1:])[::-1] + 1
    if n >= 2 and sizes[order[1]] >= MIN_SIDE_SHARE * (sizes[order[0]] + sizes[order[1]]):
        a, b = sorted(order[:2], key=lambda i: centre[i])
        mid = (centre[a] + centre[b]) / 2
        side = np.where(centre < mid, 1, 2).astype(np.uint8)
        side[a], side[b], side[0] = 1, 2, 0
        return side[labels]
    w = m.shape[2]
    for k in np.nonzero(m.any(axis=(1, 2)))[0]:
        profile = m[k].sum(axis=0)
        cs = np.nonzero(profile)[0]
        lo, hi = cs[0] + (cs[-1] - cs[0]) // 3, cs[0] + 2 * (cs[-1] - cs[0]) // 3 + 1
        cut = lo + int(np.argmin(profile[lo:hi])) if hi > lo else w // 2
        out[k][:, :cut][m[k][:, :cut]] = 1
        out[k][:, cut:][m[k][:, cut:]] = 2
    return out
