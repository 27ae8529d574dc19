"""Predicting one volume (NIfTI or DICOM series, read by ``loader.read_studies``) slice by slice:
the anatomy stage on the whole volume, its mask, probabilities, lungs, class label map and
DICOM SEG written (staged) in the scan's geometry, its summary row, and its slices in the viewer."""

from __future__ import annotations

import sys

import numpy as np
from tqdm.auto import tqdm

from covidseg.anatomy import Anatomy, clean_volume
from covidseg.data.volumes import display_spacing, voxel_ml, write_like
from covidseg.metrics.severity import LUNG_THRESHOLD
from covidseg.model.predictor import Predictor
from covidseg.model.split import class_label_map, split_channel
from covidseg.prediction.jobs import Job, case_id_of
from covidseg.prediction.loader import Loaded
from covidseg.prediction.staging import Staging
from covidseg.prediction.summary import class_output, failed_row, lung_output, prediction_stats, summary_row
from covidseg.prediction.viewing import add_volume
from covidseg.viewer import ViewerWriter


def predict_volume(predictor: Predictor, job: Job, study: Loaded, batch_size: int, bar: tqdm, stage: Staging, viewer: ViewerWriter | None = None,
                   use_anatomy: bool = True, seg_model: tuple[str, str] | None = None) -> dict:  # fmt: skip
    """The row of one volume read by ``loader.read_studies``; its outputs are staged (``stage``)."""
    if study.error:
        bar.update()
        return failed_row(bar, job, study.error)
    ref, hu, slices = study.ref, study.hu, study.slices
    if study.note:
        bar.write(f"warning: {study.note}", file=sys.stderr)
    bar.total += len(slices) - 1
    lung_out = lung_output(job)
    prob_out = next((p for p in job.outputs if p.name.endswith("_prob.nii.gz")), None)
    seg_out = next((p for p in job.outputs if p.name.endswith("_seg.dcm")), None)
    class_out = class_output(job)
    masks, probs, lungs, splits, over = [], [], [], [], []
    volume_t = predictor.card.volume_threshold
    for m in predictor.predict_maps(slices, batch_size):
        masks.append(m[0] >= predictor.card.threshold)
        if volume_t is not None:
            over.append(m[0] >= volume_t)
        if class_out:
            splits.append(m[split_channel(predictor.card.lung_output)])
        if prob_out:
            probs.append(m[0].astype(np.float32))
        if predictor.card.lung_output:
            lungs.append(m[1] >= LUNG_THRESHOLD)
        bar.update()
    spacing = display_spacing(ref.affine)
    lung = np.stack(lungs) if lungs else None
    anatomy = clean_volume(np.stack(masks), lung, hu, spacing) if use_anatomy else Anatomy(np.stack(masks), None if lung is None else lung.astype(np.uint8))
    del hu
    mask = anatomy.lesion.astype(np.uint8)
    labels = class_label_map(mask, np.stack(splits)) if class_out else None
    try:
        write_like(stage.path(job.outputs[0]), mask, ref)
        if class_out:
            write_like(stage.path(class_out), labels, ref)
        if prob_out:
            write_like(stage.path(prob_out), np.stack(probs), ref)
        if lung_out:
            write_like(stage.path(lung_out), anatomy.lungs.astype(np.uint8), ref)
        if seg_out:
            from covidseg.prediction.dicom_seg import write_dicom_seg

            write_dicom_seg(stage.path(seg_out), job.path, ref, anatomy.lesion, anatomy.lungs if lung_out else None, *seg_model, series_uid=job.series or None, classes=labels)
    except OSError as err:
        return failed_row(bar, job, f"cannot write output ({err})")
    stats = prediction_stats(job, anatomy, voxel_ml(ref), lungs=lung_out is not None, labels=labels, over=np.stack(over) if over else None)
    row = summary_row(job, shape="x".join(map(str, ref.shape)), **stats)
    if row.get("qc") not in ("", "ok", None):
        bar.write(f"warning: {job.name or job.path}: not graded: {row['qc']}", file=sys.stderr)
    if viewer:
        if row.get("qc") not in ("", "ok", None):
            viewer.not_graded(case_id_of(job), row["qc"])
        add_volume(viewer, case_id_of(job), slices, mask, normalization=predictor.card.normalization, source=str(job.path), ml_per_voxel=voxel_ml(ref),
                   lungs=anatomy.lungs if lung_out else None, classes=labels)  # fmt: skip
    return row
