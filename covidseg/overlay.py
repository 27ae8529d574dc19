"""The one overlay drawing: a slice in gray with truth and prediction tinted, used by the
TensorBoard validation samples, the report's sample figure and ``predict --overlay``."""

from __future__ import annotations

import numpy as np

PREDICTION_RGB = np.array([1.0, 0.2, 0.2])  # red
TRUTH_RGB = np.array([0.2, 1.0, 0.2])  # green; truth and prediction together read yellow


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None, alpha: float = 0.35) -> np.ndarray:
    """Tints ``pred`` red and ``truth`` green over the gray slice.

    Shape:
        image: ``[H, W]`` float in [0, 1]; pred, truth: ``[H, W]`` bool or {0, 1};
        returns ``float32 [H, W, 3]`` RGB in [0, 1].
    """
    gray = np.repeat(np.clip(np.asarray(image, np.float32), 0, 1)[..., None], 3, axis=2)
    tint = np.asarray(pred, bool)[..., None] * PREDICTION_RGB
    if truth is not None:
        tint = np.clip(tint + np.asarray(truth, bool)[..., None] * TRUTH_RGB, 0, 1)
    painted = np.asarray(pred, bool) if truth is None else np.asarray(pred, bool) | np.asarray(truth, bool)
    out = np.where(painted[..., None], (1 - alpha) * gray + alpha * tint, gray)
    return out.astype(np.float32)
