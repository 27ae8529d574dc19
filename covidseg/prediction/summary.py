"""The ``summary.csv`` row of one predicted input: pixel counts, lesion and lung mL, involvement
per study and per side, the grade (only when the scan checks pass) and a class model's
GGO/consolidation figures, or the reason it failed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from covidseg.anatomy import Anatomy
from covidseg.data.classes import CLASS_NAMES
from covidseg.metrics.severity import grade, involvement
from covidseg.prediction.jobs import Job

SUMMARY_FIELDS = (
    "input", "series", "study_id", "type", "status", "reason", "shape", "lesion_pixels", "lesion_fraction", "lesion_ml",
    "lung_pixels", "lesion_in_lung_pixels", "lung_ml", "lung_right_ml", "lung_left_ml", "involvement_percent", "involvement_right_percent",
    "involvement_left_percent", "severity", "qc", "lung_removed_ml", "lesion_removed_ml", "mask", "lungs",
    # a class model's (card.classes): GGO and consolidation inside the cleaned lesion, of the lungs
    "ggo_pixels", "consolidation_pixels", "ggo_ml", "consolidation_ml", "ggo_in_lung_pixels", "consolidation_in_lung_pixels", "ggo_percent", "consolidation_percent",
    "ggo_right_percent", "ggo_left_percent", "consolidation_right_percent", "consolidation_left_percent", "classes",
)  # fmt: skip


def summary_row(job: Job, status: str = "ok", reason: str = "", **values) -> dict:
    """The row of ``job`` with every ``SUMMARY_FIELDS`` key (``""`` where no value is given)."""
    row = dict.fromkeys(SUMMARY_FIELDS, "")
    row.update(input=str(job.path), series=job.series, type=job.kind, status=status, reason=reason, **values)
    return row


def failed_row(bar: tqdm, job: Job, reason: str) -> dict:
    """The ``failed`` row of ``job``, with ``reason`` also written to stderr (through the progress bar)."""
    bar.write(f"failed: {job.path}: {reason}", file=sys.stderr)
    return summary_row(job, "failed", reason)


def lung_output(job: Job) -> Path | None:
    """The lung mask among ``job``'s outputs (``--lungs true``), if any."""
    return next((p for p in job.outputs if p.name.endswith(("_lungs.png", "_lungs.nii.gz"))), None)


def class_output(job: Job) -> Path | None:
    """The GGO/consolidation label map among ``job``'s outputs (a class model), if any."""
    return next((p for p in job.outputs if p.name.endswith(("_classes.png", "_classes.nii.gz"))), None)


def _burden(anatomy: Anatomy, over: np.ndarray | None) -> np.ndarray:
    """The lesion that volumes are measured on: ``over`` (the lesion probability at the card's
    ``volume_threshold``) inside the anatomy stage's lesion region, or the mask itself."""
    if over is None:
        return anatomy.lesion
    return over & anatomy.region if anatomy.region is not None else over


def prediction_stats(job: Job, anatomy: Anatomy, ml_per_voxel: float | None = None, lungs: bool = False, labels: np.ndarray | None = None,
                     over: np.ndarray | None = None) -> dict:  # fmt: skip
    """The summary values of one prediction after the anatomy stage; with ``lungs``, the
    lesion burden per study and per side, graded only when the scan checks pass (``qc``);
    with a class model's ``labels`` (``split.class_label_map``), each class's pixels, mL and
    percent of the lungs (per side where the anatomy stage gives sides), under the same checks.
    Pixel counts describe the mask; lesion mL and involvement are measured at the model's
    volume operating point (``over``: the probability at ``volume_threshold``, when it has one).

    Shape:
        anatomy's maps, labels, over: ``[H, W]`` (an image) or ``[Z, H, W]`` (a volume).
    """
    lesion_pixels = int(anatomy.lesion.sum())
    burden = _burden(anatomy, over)
    burden_pixels = int(burden.sum())
    stats = {"lesion_pixels": lesion_pixels, "lesion_fraction": lesion_pixels / max(burden.size, 1), "mask": str(job.outputs[0])}
    removed_lung = sum(v for k, v in anatomy.removed.items() if k.startswith("lung_"))
    removed_lesion = sum(v for k, v in anatomy.removed.items() if k.startswith("lesion_"))
    if ml_per_voxel is not None:
        stats.update(lesion_ml=burden_pixels * ml_per_voxel, lesion_removed_ml=round(removed_lesion, 3))
    if lungs and anatomy.lungs is not None:
        inside, lung_pixels, percent = involvement(burden, anatomy.lungs)
        qc = list(anatomy.qc) or ([] if lung_pixels else ["no lungs found"])
        stats.update(lung_pixels=lung_pixels, lesion_in_lung_pixels=inside, lungs=str(lung_output(job)), qc="; ".join(qc) or "ok")
        if not qc:
            stats.update(involvement_percent=percent, severity=grade(percent))
        for side, name in ((1, "right"), (2, "left")) if anatomy.sided else ():
            _, side_pixels, side_percent = involvement(burden, anatomy.lungs == side)
            if ml_per_voxel is not None:
                stats[f"lung_{name}_ml"] = side_pixels * ml_per_voxel
            if not qc and side_percent is not None:
                stats[f"involvement_{name}_percent"] = side_percent
        if ml_per_voxel is not None:
            stats.update(lung_ml=lung_pixels * ml_per_voxel, lung_removed_ml=round(removed_lung, 3))
    if labels is not None:
        stats.update(class_stats(job, anatomy, labels, ml_per_voxel, graded=lungs and anatomy.lungs is not None and stats.get("qc") == "ok"))
    return stats


def class_stats(job: Job, anatomy: Anatomy, labels: np.ndarray, ml_per_voxel: float | None, graded: bool) -> dict:
    """Each class's pixels and mL in ``labels`` (1 GGO, 2 consolidation) and, when ``graded``,
    its percent of the lungs (per side where the anatomy stage gives sides)."""
    stats = {"classes": str(class_output(job))}
    for value, name in enumerate(CLASS_NAMES, 1):
        part = labels == value
        stats[f"{name}_pixels"] = int(part.sum())
        if ml_per_voxel is not None:
            stats[f"{name}_ml"] = stats[f"{name}_pixels"] * ml_per_voxel
        if not graded:
            continue
        stats[f"{name}_in_lung_pixels"], _, stats[f"{name}_percent"] = involvement(part, anatomy.lungs)
        for side, where in ((1, "right"), (2, "left")) if anatomy.sided else ():
            stats[f"{name}_{where}_percent"] = involvement(part, anatomy.lungs == side)[2]
    return stats
