"""The viewer of ``covidseg predict`` (``covidseg.viewer``): opened with the run's title and model
line, and given each study's slices in the model's display. An uninterrupted run (``run``) and a
rebuilt viewer (``viewer_rebuild``) both go through here, so they draw the same pages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidseg.data.io import normalize_intensity
from covidseg.model.predictor import Predictor
from covidseg.viewer import ViewerWriter


def viewer_line(predictor: Predictor, window: tuple[float, float]) -> str:
    """The line under the viewer's title: models, threshold, TTA and the volumes' HU window."""
    s = predictor.card
    models = ", ".join(p.name for p in predictor.paths)
    return f"{models} \u00b7 threshold {s.threshold:g} \u00b7 TTA {'on' if s.tta else 'off'} \u00b7 volumes in window {window[0]:g}/{window[1]:g} HU"


def open_viewer(output: Path, line: str, *, lungs: bool, classes: bool) -> ViewerWriter:
    """The viewer of a predict run writing into ``output``, with ``line`` (``viewer_line``) under its title."""
    return ViewerWriter(output, f"covidseg predict: {output.resolve().name}", line, lungs=lungs, classes=classes)


def add_image(writer: ViewerWriter, case: str, raw: np.ndarray, mask: np.ndarray, *, normalization: str, source: str,
              lungs: np.ndarray | None = None, classes: np.ndarray | None = None) -> None:  # fmt: skip
    """Adds one predicted image file to ``case``, labelled with its file name.

    Shape:
        raw: ``[H, W]`` as read; mask, lungs: ``[H, W]`` (non-zero: lesion, lung); classes: ``[H, W]`` labels 0/1/2.
    """
    writer.add_slice(case, normalize_intensity(raw, normalization), mask > 0, lungs=None if lungs is None else lungs > 0,
                     label=Path(source).name, kind="image", source=source, classes=classes)  # fmt: skip


def add_volume(writer: ViewerWriter, case: str, slices: Sequence[np.ndarray], mask: np.ndarray, *, normalization: str, source: str, ml_per_voxel: float,
               lungs: np.ndarray | None = None, classes: np.ndarray | None = None) -> None:  # fmt: skip
    """Adds every slice of one predicted volume to ``case``, in order (``slice K of N``).

    Shape:
        slices: ``Z`` windowed slices ``[H, W]``; mask, lungs: ``[Z, H, W]`` (non-zero: lesion, lung);
        classes: ``[Z, H, W]`` labels 0/1/2.
    """
    for k, raw in enumerate(slices):
        writer.add_slice(case, normalize_intensity(raw, normalization), mask[k] > 0, lungs=None if lungs is None else lungs[k] > 0,
                         label=f"slice {k + 1} of {len(slices)}", kind="volume", source=source, ml_per_voxel=ml_per_voxel,
                         classes=None if classes is None else classes[k])  # fmt: skip
