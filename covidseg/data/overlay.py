"""The one overlay drawing: a slice in gray with truth and prediction tinted, used by the
TensorBoard validation samples, the report's sample figure, ``predict --overlay`` and the
HTML viewer (``layer``: the same colours as a transparent layer the browser blends)."""

from __future__ import annotations

import numpy as np

PREDICTION_RGB = np.array([1.0, 0.2, 0.2])  # red
TRUTH_RGB = np.array([0.2, 1.0, 0.2])  # green; truth and prediction together read yellow
LUNG_RGB = np.array([0.35, 0.75, 1.0])  # light blue, for lung outlines
CLASS_RGB = {1: np.array([1.0, 0.75, 0.1]), 2: np.array([0.85, 0.15, 0.85])}  # ground-glass amber, consolidation magenta


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


def layer(pred: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """The tint of ``overlay`` alone: opaque where painted, transparent elsewhere (prediction
    red, truth green, both yellow), for a viewer that sets the opacity itself.

    Shape:
        pred, truth: ``[H, W]`` bool or {0, 1}; returns ``uint8 [H, W, 4]`` RGBA.
    """
    code = np.asarray(pred, bool).astype(np.uint8)
    if truth is not None:
        code |= np.asarray(truth, bool).astype(np.uint8) << 1
    return _LAYER_COLOURS[code]


# RGBA of layer() by code (pred + 2 * truth): nothing, prediction only, truth only, both
_LAYER_COLOURS = np.array(
    [[0, 0, 0, 0]] + [[*np.rint(np.clip(rgb, 0, 1) * 255), 255] for rgb in (PREDICTION_RGB, TRUTH_RGB, PREDICTION_RGB + TRUTH_RGB)], np.uint8
)


def class_layer(labels: np.ndarray) -> np.ndarray:
    """A class model's prediction as a layer: ground-glass (label 1) amber, consolidation
    (label 2) magenta, transparent elsewhere (the viewer's legend names them).

    Shape:
        labels: ``[H, W]`` in {0, 1, 2}; returns ``uint8 [H, W, 4]`` RGBA.
    """
    return _CLASS_COLOURS[np.clip(np.asarray(labels, np.uint8), 0, 2)]


_CLASS_COLOURS = np.array([[0, 0, 0, 0]] + [[*np.rint(CLASS_RGB[k] * 255), 255] for k in (1, 2)], np.uint8)
