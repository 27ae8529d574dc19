"""Predicting a list of inputs: images in batches, volumes and DICOM series slice by slice,
with masks, probabilities, overlays, lung masks and the lesion burden written per input, one
``summary.csv`` row each, ``cases.csv`` per ``--data.case_regex`` case and the offline viewer.
``covidseg predict`` (``covidseg/predict.py``) is its command line."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from covidseg.anatomy import Anatomy, clean_slice, clean_volume
from covidseg.data.io import normalize_intensity, read_image, write_image, write_mask
from covidseg.data.overlay import overlay
from covidseg.data.samples import case_id_from_name, check_case_regex, compile_case_regex
from covidseg.data.volumes import apply_window, display_spacing, read_scan, volume_stem, voxel_ml, write_like
from covidseg.errors import CovidSegError
from covidseg.metrics.severity import LUNG_THRESHOLD, aggregate_cases, grade, involvement, write_cases
from covidseg.model.predictor import Predictor
from covidseg.prediction.jobs import SUMMARY, Job, check_outputs, plan, series_lines
from covidseg.viewer import OUTPUTS as VIEWER_OUTPUTS
from covidseg.viewer import ViewerWriter

SUMMARY_FIELDS = (
    "input", "type", "status", "reason", "shape", "lesion_pixels", "lesion_fraction", "lesion_ml",
    "lung_pixels", "lung_ml", "lung_right_ml", "lung_left_ml", "involvement_percent", "involvement_right_percent",
    "involvement_left_percent", "severity", "qc", "lung_removed_ml", "lesion_removed_ml", "mask", "lungs",
)  # fmt: skip
CASES = "cases.csv"
_READ_ERRORS = (ValueError, OSError, cv2.error)


def overlay_image(raw: np.ndarray, mask: np.ndarray, normalization: str = "auto") -> np.ndarray:
    """The slice in gray with the lesion tinted red (``overlay.overlay``).

    Shape:
        raw: ``[H, W]`` raw slice; mask: ``[H, W]`` bool -> ``uint8 [H, W, 3]`` (BGR, for cv2).
    """
    rgb = overlay(normalize_intensity(raw, normalization), mask)
    return np.rint(rgb[..., ::-1] * 255).astype(np.uint8)


def _row(job: Job, status: str = "ok", reason: str = "", **values) -> dict:
    row = dict.fromkeys(SUMMARY_FIELDS, "")
    row.update(input=str(job.path), type=job.kind, status=status, reason=reason, **values)
    return row


def _stats(job: Job, anatomy: Anatomy, ml_per_voxel: float | None = None, lungs: bool = False) -> dict:
    """The summary values of one prediction after the anatomy stage; with ``lungs``, the
    lesion burden per study and per side, graded only when the scan checks pass (``qc``)."""
    mask = anatomy.lesion
    n = int(mask.sum())
    stats = {"lesion_pixels": n, "lesion_fraction": n / max(mask.size, 1), "mask": str(job.outputs[0])}
    unit = ml_per_voxel or 1.0
    removed_lung = sum(v for k, v in anatomy.removed.items() if k.startswith("lung_"))
    removed_lesion = sum(v for k, v in anatomy.removed.items() if k.startswith("lesion_"))
    if ml_per_voxel is not None:
        stats.update(lesion_ml=n * ml_per_voxel, lesion_removed_ml=round(removed_lesion, 3))
    if lungs and anatomy.lungs is not None:
        inside, lung, percent = involvement(mask, anatomy.lungs)
        qc = list(anatomy.qc) or ([] if lung else ["no lungs found"])
        stats.update(lung_pixels=lung, lesion_in_lung_pixels=inside, lungs=str(_lung_output(job)), qc="; ".join(qc) or "ok")
        if not qc:
            stats.update(involvement_percent=percent, severity=grade(percent))
        for side, name in ((1, "right"), (2, "left")) if anatomy.sided else ():
            part = anatomy.lungs == side
            side_inside, side_lung, side_percent = involvement(mask, part)
            if ml_per_voxel is not None:
                stats[f"lung_{name}_ml"] = side_lung * unit
            if not qc and side_percent is not None:
                stats[f"involvement_{name}_percent"] = side_percent
        if ml_per_voxel is not None:
            stats.update(lung_ml=lung * ml_per_voxel, lung_removed_ml=round(removed_lung, 3))
    return stats


def _lung_output(job: Job) -> Path | None:
    return next((p for p in job.outputs if p.name.endswith(("_lungs.png", "_lungs.nii.gz"))), None)


def _report(bar: tqdm, job: Job, reason: str) -> dict:
    bar.write(f"failed: {job.path}: {reason}", file=sys.stderr)
    return _row(job, "failed", reason)


def case_id_of(job: Job, case_regex: str | None = None) -> str:
    """The case an input belongs to: a volume's name, or an image's ``case_regex`` case (else its stem)."""
    if job.kind == "image":
        return case_id_from_name(job.path.stem, case_regex) if case_regex else job.path.stem
    return job.name or (job.path.name if job.path.is_dir() else volume_stem(job.path))


def _predict_images(predictor: Predictor, jobs: list[Job], batch_size: int, bar: tqdm, viewer: ViewerWriter | None = None, case_regex: str | None = None, use_anatomy: bool = True) -> list[dict]:
    """Rows for ``jobs`` (all images), in their order."""
    rows: dict[int, dict] = {}
    for start in range(0, len(jobs), batch_size):
        loaded = []
        for i in range(start, min(start + batch_size, len(jobs))):
            try:
                loaded.append((i, read_image(jobs[i].path)))
            except _READ_ERRORS as err:
                rows[i] = _report(bar, jobs[i], str(err).removeprefix(f"{jobs[i].path}: "))
                bar.update()
        maps = predictor.predict_maps([raw for _, raw in loaded], batch_size)
        for (i, raw), m in zip(loaded, maps):
            job, prob = jobs[i], m[0]
            lung_map = m[1] >= LUNG_THRESHOLD if predictor.card.lung_output else None
            anatomy = clean_slice(prob >= predictor.card.threshold, lung_map) if use_anatomy else Anatomy(prob >= predictor.card.threshold, lung_map)
            mask = anatomy.lesion
            lungs = anatomy.lungs if _lung_output(job) else None
            try:
                write_mask(job.outputs[0], mask)
                for out in job.outputs[1:]:
                    if out.suffix == ".npy":
                        np.save(out, prob.astype(np.float32))
                    elif out == _lung_output(job):
                        write_mask(out, lungs)
                    else:
                        write_image(out, overlay_image(raw, mask, predictor.card.normalization))
            except OSError as err:
                rows[i] = _report(bar, job, f"cannot write output ({err})")
            else:
                rows[i] = _row(job, shape="x".join(map(str, raw.shape)), **_stats(job, anatomy, lungs=lungs is not None))
                if viewer:
                    viewer.add_slice(case_id_of(job, case_regex), normalize_intensity(raw, predictor.card.normalization), mask, lungs=None if lungs is None else lungs > 0,
                                     label=job.path.name, kind="image", source=str(job.path))  # fmt: skip
            bar.update()
    return [rows[i] for i in range(len(jobs))]


def _predict_volume(predictor: Predictor, job: Job, batch_size: int, window: tuple[float, float], bar: tqdm, viewer: ViewerWriter | None = None, use_anatomy: bool = True) -> dict:
    try:
        ref, hu, note = read_scan(job.path, job.series or None)
    except _READ_ERRORS as err:
        bar.update()
        return _report(bar, job, str(err).removeprefix(f"{job.path}: "))
    if note:
        bar.write(f"warning: {note}", file=sys.stderr)
    slices = apply_window(hu, *window)
    bar.total += len(slices) - 1
    lung_out = _lung_output(job)
    prob_out = next((p for p in job.outputs if p.name.endswith("_prob.nii.gz")), None)
    masks, probs, lungs = [], [], []
    for m in predictor.predict_maps(slices, batch_size):
        masks.append(m[0] >= predictor.card.threshold)
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
    try:
        write_like(job.outputs[0], mask, ref)
        if prob_out:
            write_like(prob_out, np.stack(probs), ref)
        if lung_out:
            write_like(lung_out, anatomy.lungs.astype(np.uint8), ref)
    except OSError as err:
        return _report(bar, job, f"cannot write output ({err})")
    row = _row(job, shape="x".join(map(str, ref.shape)), **_stats(job, anatomy, voxel_ml(ref), lungs=lung_out is not None))
    if row.get("qc") not in ("", "ok", None):
        bar.write(f"warning: {job.name or job.path}: not graded: {row['qc']}", file=sys.stderr)
    if viewer:
        if row.get("qc") not in ("", "ok", None):
            viewer.not_graded(case_id_of(job), row["qc"])
        view_lungs = None if not lung_out else anatomy.lungs > 0
        for k, raw in enumerate(slices):
            viewer.add_slice(case_id_of(job), normalize_intensity(raw, predictor.card.normalization), mask[k], lungs=None if view_lungs is None else view_lungs[k],
                             label=f"slice {k + 1} of {len(slices)}", kind="volume", source=str(job.path), ml_per_voxel=voxel_ml(ref))  # fmt: skip
    return row


def warn_kind_mismatch(card, jobs: list[Job], window) -> None:
    """One warning when inputs are of another kind than the model's training data."""
    kinds = {job.kind for job in jobs}
    if card.intensity == "image" and "volume" in kinds and window is None:
        center, width = card.window
        print(f"warning: the model was trained on 2D image exports (intensity 'image'), not on HU volumes; volumes are windowed "
              f"to 8-bit with center {center:g} / width {width:g} HU, which its training data may not match. Pass --data.window "
              f"\"[CENTER, WIDTH]\" to choose the window, or train on volumes for a model that knows them.", file=sys.stderr)  # fmt: skip
    elif card.intensity == "hu_window" and "image" in kinds:
        print("warning: the model was trained on HU volumes (intensity 'hu_window'), not on 2D image exports; image files are "
              "scaled by their own range, which its training never saw. Predict volumes (NIfTI/DICOM) with it, or train on image exports.",
              file=sys.stderr)  # fmt: skip


def predict_paths(
    predictor: Predictor,
    inputs: list[str | Path],
    output: str | Path,
    *,
    probabilities: bool = False,
    overlay: bool = False,
    batch_size: int = 16,
    window: tuple[float, float] | None = None,
    overwrite: bool = False,
    lungs: bool = False,
    case_regex: str | None = None,
    viewer: bool = False,
    anatomy: bool = True,
) -> list[dict]:
    """Predicts every input, writes the outputs and ``summary.csv``, and returns its rows.

    Args:
        predictor: the model(s) and their card (threshold, TTA, preprocessing).
        inputs: image files, folders of images, NIfTI volumes.
        output: folder for the results (created).
        probabilities, overlay: also write probability maps / overlay images.
        batch_size: slices per forward pass.
        window: ``(center, width)`` in HU for volumes; ``None``: the model's.
        overwrite: replace existing outputs; otherwise refuse up front.
        lungs: also write lung masks and the lesion burden (needs a model with a lung output).
        case_regex: group image files into cases (first group of the regex on the file stem)
            and write ``cases.csv`` with summed pixels, involvement and grade per case.
        viewer: also write ``index.html`` and ``viewer/``: the cases in a browser (``covidseg.viewer``).
        anatomy: pass every prediction through the anatomy stage (``covidseg.anatomy``: body,
            3D lungs, lesions inside the lungs, scan checks before a grade); ``False`` writes the
            network's thresholded maps as they are.

    Returns:
        One dict per input file, in input order, with the ``SUMMARY_FIELDS`` keys; ``status``
        is ``ok`` or ``failed`` (then ``reason`` says why and nothing was written for it).

    Raises:
        CovidSegError: clashing or existing outputs, before anything is written.
    """
    output = Path(output)
    if lungs and not predictor.card.lung_output:
        raise CovidSegError(f"--lungs: {', '.join(map(str, predictor.paths))} has no lung output (train with --data.lung_masks true)")
    jobs = plan(inputs, output, probabilities, overlay, lungs)
    check_outputs(jobs, output, overwrite, extra=extra_outputs(case_regex, viewer))
    stems = [job.path.stem for job in jobs if job.kind == "image"]
    if case_regex:
        compile_case_regex(case_regex)
    if case_regex and stems:  # stops when it matches no name
        print(check_case_regex(case_regex, stems))
    for line in series_lines(jobs):
        print(line)
    warn_kind_mismatch(predictor.card, jobs, window)
    window = tuple(window) if window is not None else predictor.card.window
    output.mkdir(parents=True, exist_ok=True)
    sink = _viewer(predictor, output, window, lungs) if viewer else None
    by_job: dict[int, dict] = {}
    with tqdm(total=len(jobs), unit="slice", desc="predict", disable=None) as bar:
        for i, job in enumerate(jobs):
            if job.error:
                by_job[i] = _report(bar, job, job.error)
                bar.update()
        images = [i for i, job in enumerate(jobs) if job.kind == "image"]
        by_job.update(zip(images, _predict_images(predictor, [jobs[i] for i in images], batch_size, bar, sink, case_regex, anatomy)))
        for i, job in enumerate(jobs):
            if job.kind == "volume":
                by_job[i] = _predict_volume(predictor, job, batch_size, window, bar, sink, anatomy)
    rows = [by_job[i] for i in range(len(jobs))]
    with open(output / SUMMARY, "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    if case_regex:
        write_cases(output / CASES, cases_of(rows, case_regex))
    if sink:
        for job, row in zip(jobs, rows):
            if row["status"] != "ok":
                sink.add_failed(case_id_of(job, case_regex) if job.kind else job.path.name, row["reason"], kind=job.kind, source=str(job.path))
        sink.write()
    return rows


def extra_outputs(case_regex: str | None, viewer: bool) -> list[str]:
    """Files and folders besides the per-input outputs that a run writes into ``--output``."""
    return ([CASES] if case_regex else []) + (list(VIEWER_OUTPUTS) if viewer else [])


def _viewer(predictor: Predictor, output: Path, window: tuple[float, float], lungs: bool) -> ViewerWriter:
    s = predictor.card
    models = ", ".join(p.name for p in predictor.paths)
    line = f"{models} \u00b7 threshold {s.threshold:g} \u00b7 TTA {'on' if s.tta else 'off'} \u00b7 volumes in window {window[0]:g}/{window[1]:g} HU"
    return ViewerWriter(output, f"covidseg predict: {output.resolve().name}", line, lungs=lungs)


def cases_of(rows: list[dict], case_regex: str) -> list[dict]:
    """Per-case sums of the successful image rows, grouped by ``case_regex`` on the file stem."""
    slices = [
        {"case_id": case_id_from_name(Path(r["input"]).stem, case_regex), "lesion_pixels": r["lesion_pixels"],
         "lung_pixels": r.get("lung_pixels") or 0, "lesion_in_lung_pixels": r.get("lesion_in_lung_pixels") or 0}
        for r in rows if r["status"] == "ok" and r["type"] == "image"
    ]  # fmt: skip
    cases = aggregate_cases(slices)
    if not any(r.get("lungs") for r in rows):  # no lung output: the burden is unknown, not 0 %
        for c in cases:
            c["involvement_percent"] = c["severity"] = None
    return cases
