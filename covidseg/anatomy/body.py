"""The patient's body in a CT volume in HU: per slice, the largest connected component above
``BODY_HU`` after a small opening (which cuts the thin contacts of the table, blankets and
cables), its holes filled (the lungs, airways and bowel gas are inside the body).

Air around the patient, the table and whatever else lies outside that outline is never lung or
lesion (``covidseg.anatomy.clean_volume``).
"""

from __future__ import annotations

import cv2
import numpy as np

BODY_HU = -500.0  # tissue (fat -100, soft tissue 40, bone 700) above, air (-1000) and lung (-850) below
OPENING_MM = 3.0  # radius: detaches a table or blanket touching the skin over less than this
MIN_BODY_FRACTION = 0.005  # of the slice: a smaller largest component is no body (slices beyond the patient)


def disc(radius_px: int) -> np.ndarray:
    """A disc structuring element of ``radius_px`` (``uint8 [2r+1, 2r+1]``)."""
    r = max(int(radius_px), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool with every region not reachable from the border filled."""
    m = np.asarray(mask, np.uint8)
    pad = np.zeros((m.shape[0] + 2, m.shape[1] + 2), np.uint8)
    pad[1:-1, 1:-1] = m
    flood = np.zeros((pad.shape[0] + 2, pad.shape[1] + 2), np.uint8)
    cv2.floodFill(pad, flood, (0, 0), 1)
    return m.astype(bool) | (pad[1:-1, 1:-1] == 0)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``[Z, H, W]`` bool, holes filled in each axial slice."""
    out = np.asarray(mask, bool).copy()
    for k in np.nonzero(out.any(axis=(1, 2)))[0]:
        out[k] = fill_holes(out[k])
    return out


def body_mask(hu: np.ndarray, pixel_mm: float = 1.0) -> np.ndarray:
    """The body (see the module docstring).

    Shape:
        hu: ``[Z, H, W]`` (or ``[H, W]``) HU; ``pixel_mm``: in-plane spacing -> bool, same shape.
    """
    hu = np.asarray(hu)
    if hu.ndim == 2:
        return body_mask(hu[None], pixel_mm)[0]
    kernel = disc(max(1, round(OPENING_MM / max(pixel_mm, 1e-3))))
    out = np.zeros(hu.shape, bool)
    tissue = (hu > BODY_HU).astype(np.uint8)
    for k in range(hu.shape[0]):
        opened = cv2.morphologyEx(tissue[k], cv2.MORPH_OPEN, kernel)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=4)
        if n <= 1:
            continue
        big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[big, cv2.CC_STAT_AREA] < MIN_BODY_FRACTION * tissue[k].size:
            continue
        part = (labels == big).astype(np.uint8)
        part = cv2.dilate(part, kernel) & tissue[k]  # the skin the opening shaved off, not the table
        out[k] = fill_holes(part)
    return out
