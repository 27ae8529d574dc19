"""Predicting image files (PNG, JPEG, TIFF slices) in batches: each one's mask, probability map,
overlay, lung mask and class label map written (staged), its summary row, and its slice in the viewer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from covidseg.anatomy import Anatomy, clean_slice
from covidseg.data.io import normalize_intensity, read_image, write_image, write_label_map, write_mask
from covidseg.data.overlay import overlay
from covidseg.metrics.severity import LUNG_THRESHOLD
from covidseg.model.predictor import Predictor
from covidseg.model.split import class_label_map, split_channel
from covidseg.prediction.jobs import Job, case_id_of
from covidseg.prediction.loader import READ_ERRORS
from covidseg.prediction.staging import Staging
from covidseg.prediction.summary import class_output, failed_row, lung_output, prediction_stats, summary_row
from covidseg.prediction.viewing import add_image
from covidseg.viewer import ViewerWriter

Finish = Callable[[int, dict], None]  # (index of the job, its row): outputs renamed into place, row appended


def overlay_image(raw: np.ndarray, mask: np.ndarray, normalization: str = "auto") -> np.ndarray:
    """The slice in gray with the lesion tinted red (``overlay.overlay``).

    Shape:
        raw: ``[H, W]`` raw slice; mask: ``[H, W]`` bool -> ``uint8 [H, W, 3]`` (BGR, for cv2).
    """
    rgb = overlay(normalize_intensity(raw, normalization), mask)
    return np.rint(rgb[..., ::-1] * 255).astype(np.uint8)


def predict_images(predictor: Predictor, jobs: list[Job], batch_size: int, bar: tqdm, stage: Staging, finish: Finish, viewer: ViewerWriter | None = None,
                   case_regex: str | None = None, use_anatomy: bool = True) -> None:  # fmt: skip
    """Predicts ``jobs`` (all images) in batches; ``finish(i, row)`` for each, in order."""
    for start in range(0, len(jobs), batch_size):
        loaded = []
        for i in range(start, min(start + batch_size, len(jobs))):
            try:
                loaded.append((i, read_image(jobs[i].path)))
            except READ_ERRORS as err:
                finish(i, failed_row(bar, jobs[i], str(err).removeprefix(f"{jobs[i].path}: ")))
                bar.update()
        maps = predictor.predict_maps([raw for _, raw in loaded], batch_size)
        for (i, raw), m in zip(loaded, maps):
            job, prob = jobs[i], m[0]
            lung_map = m[1] >= LUNG_THRESHOLD if predictor.card.lung_output else None
            anatomy = clean_slice(prob >= predictor.card.threshold, lung_map) if use_anatomy else Anatomy(prob >= predictor.card.threshold, lung_map)
            mask = anatomy.lesion
            lungs = anatomy.lungs if lung_output(job) else None
            labels = class_label_map(mask, m[split_channel(predictor.card.lung_output)]) if class_output(job) else None
            try:
                write_mask(stage.path(job.outputs[0]), mask)
                for out in job.outputs[1:]:
                    if out.suffix == ".npy":
                        np.save(stage.path(out), prob.astype(np.float32))
                    elif out == lung_output(job):
                        write_mask(stage.path(out), lungs)
                    elif out == class_output(job):
                        write_label_map(stage.path(out), labels)
                    else:
                        write_image(stage.path(out), overlay_image(raw, mask, predictor.card.normalization))
            except OSError as err:
                finish(i, failed_row(bar, job, f"cannot write output ({err})"))
            else:
                over = None if predictor.card.volume_threshold is None else prob >= predictor.card.volume_threshold
                finish(i, summary_row(job, shape="x".join(map(str, raw.shape)), **prediction_stats(job, anatomy, lungs=lungs is not None, labels=labels, over=over)))
                if viewer:
                    add_image(viewer, case_id_of(job, case_regex), raw, mask, normalization=predictor.card.normalization, source=str(job.path), lungs=lungs, classes=labels)
            bar.update()
