"""Predicting a list of inputs: images in batches, volumes and DICOM series slice by slice,
with masks, probabilities, overlays, lung masks, a class model's GGO/consolidation label map
(``NAME_classes``: 0 background, 1 GGO, 2 consolidation, inside the cleaned lesion mask) and
the lesion burden written per input, one
``summary.csv`` row each, ``cases.csv`` per ``--data.case_regex`` case and the offline viewer.
``covidseg predict`` (``covidseg/predict.py``) is its command line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from covidseg.anatomy import Anatomy, clean_slice, clean_volume
from covidseg.data.classes import CLASS_NAMES
from covidseg.data.io import normalize_intensity, read_image, write_image, write_label_map, write_mask
from covidseg.data.overlay import overlay
from covidseg.data.samples import case_id_from_name, check_case_regex, compile_case_regex
from covidseg.data.volumes import display_spacing, voxel_ml, write_like
from covidseg.errors import CovidSegError
from covidseg.metrics.severity import LUNG_THRESHOLD, aggregate_cases, grade, involvement, write_cases
from covidseg.model.predictor import Predictor
from covidseg.model.split import class_label_map, split_channel
from covidseg.prediction.jobs import Job, case_id_of, series_lines
from covidseg.prediction.journal import read_cohort, Journal, latest_rows, merge, write_cohort
from covidseg.prediction.loader import READ_ERRORS, Loaded, read_studies
from covidseg.prediction.progress import Progress
from covidseg.prediction.cohort import job_key, select
from covidseg.prediction.staging import Staging, remove_leftovers
from covidseg.prediction.viewing import add_image, add_volume, open_viewer, viewer_line
from covidseg.viewer import OUTPUTS as VIEWER_OUTPUTS
from covidseg.viewer import ViewerWriter

SUMMARY_FIELDS = (
    "input", "series", "study_id", "type", "status", "reason", "shape", "lesion_pixels", "lesion_fraction", "lesion_ml",
    "lung_pixels", "lesion_in_lung_pixels", "lung_ml", "lung_right_ml", "lung_left_ml", "involvement_percent", "involvement_right_percent",
    "involvement_left_percent", "severity", "qc", "lung_removed_ml", "lesion_removed_ml", "mask", "lungs",
    # a class model's (card.classes): GGO and consolidation inside the cleaned lesion, of the lungs
    "ggo_pixels", "consolidation_pixels", "ggo_ml", "consolidation_ml", "ggo_percent", "consolidation_percent",
    "ggo_right_percent", "ggo_left_percent", "consolidation_right_percent", "consolidation_left_percent", "classes",
)  # fmt: skip
CASES = "cases.csv"


def overlay_image(raw: np.ndarray, mask: np.ndarray, normalization: str = "auto") -> np.ndarray:
    """The slice in gray with the lesion tinted red (``overlay.overlay``).

    Shape:
        raw: ``[H, W]`` raw slice; mask: ``[H, W]`` bool -> ``uint8 [H, W, 3]`` (BGR, for cv2).
    """
    rgb = overlay(normalize_intensity(raw, normalization), mask)
    return np.rint(rgb[..., ::-1] * 255).astype(np.uint8)


def _row(job: Job, status: str = "ok", reason: str = "", **values) -> dict:
    row = dict.fromkeys(SUMMARY_FIELDS, "")
    row.update(input=str(job.path), series=job.series, type=job.kind, status=status, reason=reason, **values)
    return row


def _burden(anatomy: Anatomy, over: np.ndarray | None) -> np.ndarray:
    """The lesion that volumes are measured on: ``over`` (the lesion probability at the card's
    ``volume_threshold``) inside the anatomy stage's lesion region, or the mask itself."""
    if over is None:
        return anatomy.lesion
    return over & anatomy.region if anatomy.region is not None else over


def _stats(job: Job, anatomy: Anatomy, ml_per_voxel: float | None = None, lungs: bool = False, labels: np.ndarray | None = None, over: np.ndarray | None = None) -> dict:
    """The summary values of one prediction after the anatomy stage; with ``lungs``, the
    lesion burden per study and per side, graded only when the scan checks pass (``qc``);
    with a class model's ``labels`` (``split.class_label_map``), each class's pixels, mL and
    percent of the lungs (per side where the anatomy stage gives sides), under the same checks.
    Pixel counts describe the mask; lesion mL and involvement are measured at the model's
    volume operating point (``over``: the probability at ``volume_threshold``, when it has one)."""
    n = int(anatomy.lesion.sum())
    mask = _burden(anatomy, over)
    stats = {"lesion_pixels": n, "lesion_fraction": n / max(mask.size, 1), "mask": str(job.outputs[0])}
    n = int(mask.sum())
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
    if labels is not None:
        stats.update(_class_stats(job, anatomy, labels, ml_per_voxel, graded=lungs and anatomy.lungs is not None and stats.get("qc") == "ok"))
    return stats


def _class_stats(job: Job, anatomy: Anatomy, labels: np.ndarray, ml_per_voxel: float | None, graded: bool) -> dict:
    stats = {"classes": str(_class_output(job))}
    for value, name in enumerate(CLASS_NAMES, 1):
        part = labels == value
        stats[f"{name}_pixels"] = int(part.sum())
        if ml_per_voxel is not None:
            stats[f"{name}_ml"] = stats[f"{name}_pixels"] * ml_per_voxel
        if not graded:
            continue
        stats[f"{name}_percent"] = involvement(part, anatomy.lungs)[2]
        for side, where in ((1, "right"), (2, "left")) if anatomy.sided else ():
            stats[f"{name}_{where}_percent"] = involvement(part, anatomy.lungs == side)[2]
    return stats


def _class_output(job: Job) -> Path | None:
    return next((p for p in job.outputs if p.name.endswith(("_classes.png", "_classes.nii.gz"))), None)


def _lung_output(job: Job) -> Path | None:
    return next((p for p in job.outputs if p.name.endswith(("_lungs.png", "_lungs.nii.gz"))), None)


def _report(bar: tqdm, job: Job, reason: str) -> dict:
    bar.write(f"failed: {job.path}: {reason}", file=sys.stderr)
    return _row(job, "failed", reason)


Finish = Callable[[int, dict], None]  # (index of the job, its row): outputs renamed into place, row appended


def _predict_images(predictor: Predictor, jobs: list[Job], batch_size: int, bar: tqdm, stage: Staging, finish: Finish, viewer: ViewerWriter | None = None,
                    case_regex: str | None = None, use_anatomy: bool = True) -> None:  # fmt: skip
    """Predicts ``jobs`` (all images) in batches; ``finish(i, row)`` for each, in order."""
    for start in range(0, len(jobs), batch_size):
        loaded = []
        for i in range(start, min(start + batch_size, len(jobs))):
            try:
                loaded.append((i, read_image(jobs[i].path)))
            except READ_ERRORS as err:
                finish(i, _report(bar, jobs[i], str(err).removeprefix(f"{jobs[i].path}: ")))
                bar.update()
        maps = predictor.predict_maps([raw for _, raw in loaded], batch_size)
        for (i, raw), m in zip(loaded, maps):
            job, prob = jobs[i], m[0]
            lung_map = m[1] >= LUNG_THRESHOLD if predictor.card.lung_output else None
            anatomy = clean_slice(prob >= predictor.card.threshold, lung_map) if use_anatomy else Anatomy(prob >= predictor.card.threshold, lung_map)
            mask = anatomy.lesion
            lungs = anatomy.lungs if _lung_output(job) else None
            labels = class_label_map(mask, m[split_channel(predictor.card.lung_output)]) if _class_output(job) else None
            try:
                write_mask(stage.path(job.outputs[0]), mask)
                for out in job.outputs[1:]:
                    if out.suffix == ".npy":
                        np.save(stage.path(out), prob.astype(np.float32))
                    elif out == _lung_output(job):
                        write_mask(stage.path(out), lungs)
                    elif out == _class_output(job):
                        write_label_map(stage.path(out), labels)
                    else:
                        write_image(stage.path(out), overlay_image(raw, mask, predictor.card.normalization))
            except OSError as err:
                finish(i, _report(bar, job, f"cannot write output ({err})"))
            else:
                finish(i, _row(job, shape="x".join(map(str, raw.shape)), **_stats(job, anatomy, lungs=lungs is not None, labels=labels,
                                                                  over=None if predictor.card.volume_threshold is None else prob >= predictor.card.volume_threshold)))  # fmt: skip
                if viewer:
                    add_image(viewer, case_id_of(job, case_regex), raw, mask, normalization=predictor.card.normalization, source=str(job.path), lungs=lungs, classes=labels)
            bar.update()


def _predict_volume(predictor: Predictor, job: Job, study: Loaded, batch_size: int, bar: tqdm, stage: Staging, viewer: ViewerWriter | None = None,
                    use_anatomy: bool = True, seg_model: tuple[str, str] | None = None) -> dict:  # fmt: skip
    """The row of one volume read by ``loader.read_studies``; its outputs are staged (``stage``)."""
    if study.error:
        bar.update()
        return _report(bar, job, study.error)
    ref, hu, slices = study.ref, study.hu, study.slices
    if study.note:
        bar.write(f"warning: {study.note}", file=sys.stderr)
    bar.total += len(slices) - 1
    lung_out = _lung_output(job)
    prob_out = next((p for p in job.outputs if p.name.endswith("_prob.nii.gz")), None)
    seg_out = next((p for p in job.outputs if p.name.endswith("_seg.dcm")), None)
    class_out = _class_output(job)
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
        return _report(bar, job, f"cannot write output ({err})")
    row = _row(job, shape="x".join(map(str, ref.shape)), **_stats(job, anatomy, voxel_ml(ref), lungs=lung_out is not None, labels=labels, over=np.stack(over) if over else None))
    if row.get("qc") not in ("", "ok", None):
        bar.write(f"warning: {job.name or job.path}: not graded: {row['qc']}", file=sys.stderr)
    if viewer:
        if row.get("qc") not in ("", "ok", None):
            viewer.not_graded(case_id_of(job), row["qc"])
        add_volume(viewer, case_id_of(job), slices, mask, normalization=predictor.card.normalization, source=str(job.path), ml_per_voxel=voxel_ml(ref),
                   lungs=anatomy.lungs if lung_out else None, classes=labels)  # fmt: skip
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
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    num_workers: int = 0,
    dicom_seg: bool = False,
) -> list[dict]:
    """Predicts every input (of this shard), writes the outputs and the summary, and returns the rows.

    Args:
        predictor: the model(s) and their card (threshold, TTA, preprocessing).
        inputs: image files, folders of images, NIfTI volumes, DICOM series, cohort list files.
        output: folder for the results (created).
        probabilities, overlay: also write probability maps / overlay images.
        batch_size: slices per forward pass.
        window: ``(center, width)`` in HU for volumes; ``None``: the model's.
        overwrite: replace existing outputs; otherwise refuse up front (unless ``resume``).
        lungs: also write lung masks and the lesion burden (needs a model with a lung output).
        case_regex: group image files into cases (first group of the regex on the file stem)
            and write ``cases.csv`` with summed pixels, involvement and grade per case.
        viewer: also write ``index.html`` and ``viewer/``: the cases in a browser (``covidseg.viewer``).
        anatomy: pass every prediction through the anatomy stage (``covidseg.anatomy``: body,
            3D lungs, lesions inside the lungs, scan checks before a grade); ``False`` writes the
            network's thresholded maps as they are.
        resume: skip the studies whose outputs are complete (``journal.complete``), predict the rest.
        shard: ``(K, N)``: predict only shard K of N of the cohort (``shards.shard_indices``);
            the rows go to ``summary.part-K-of-N.csv`` and the last shard merges ``summary.csv``.
        num_workers: processes that read and window volumes while the network runs (``loader``).
        dicom_seg: also write ``NAME_seg.dcm`` (DICOM SEG, ``dicom_seg``) for each DICOM series.

    Returns:
        One dict per input this run predicted, in input order, with the ``SUMMARY_FIELDS`` keys;
        ``status`` is ``ok`` or ``failed`` (then ``reason`` says why and nothing was written for it).

    Raises:
        CovidSegError: clashing or existing outputs, before anything is written.
    """
    output = Path(output)
    k, n = shard
    if lungs and not predictor.card.lung_output:
        raise CovidSegError(f"--lungs: {', '.join(map(str, predictor.paths))} has no lung output (train with --data.lung_masks true)")
    sel = select(inputs, output, probabilities=probabilities, overlay=overlay, lungs=lungs, dicom_seg=dicom_seg, case_regex=case_regex,
                 viewer=viewer, overwrite=overwrite, resume=resume, shard=shard, extra=extra_outputs(case_regex, viewer), classes=bool(predictor.card.classes))  # fmt: skip
    seg_model = None
    if dicom_seg:
        from covidseg.prediction.dicom_seg import check_available, model_identity

        check_available()
        seg_model = model_identity(predictor.paths)
    jobs, studies, mine, todo = sel.jobs, sel.studies, sel.mine, sel.todo
    run_jobs = [jobs[i] for i in todo]
    stems = [job.path.stem for job in run_jobs if job.kind == "image"]
    if case_regex:
        compile_case_regex(case_regex)
    if case_regex and stems:  # stops when it matches no name
        print(check_case_regex(case_regex, stems))
    for line in series_lines(run_jobs):
        print(line)
    warn_kind_mismatch(predictor.card, run_jobs, window)
    window = tuple(window) if window is not None else predictor.card.window
    output.mkdir(parents=True, exist_ok=True)
    view = {"window": list(window), "normalization": predictor.card.normalization, "line": viewer_line(predictor, window)}
    write_cohort(output, [{"input": str(job.path), "series": job.series, "study_id": s, "case": case_id_of(job, case_regex) if job.kind else job.path.name} for job, s in zip(jobs, studies)],
                 {"case_regex": case_regex, "shards": n, "viewer": view})  # fmt: skip
    if n > 1 or resume:
        print(f"shard {k}/{n}: {len(mine)} of {len(jobs)} inputs" * (n > 1) + ("; " * (n > 1) if resume else "")
              + (f"--resume: {len(mine) - len(todo)} complete (skipped), {len(todo)} to predict" if resume else ""))  # fmt: skip
    journal = Journal(output / sel.journal, SUMMARY_FIELDS, fresh=not resume)
    stage = Staging(output)
    progress = Progress(len(run_jobs), f"shard {k}/{n} " if n > 1 else "")
    # one uninterrupted process draws the viewer as it goes; shards and resumed runs rebuild it
    # from every study's outputs once the cohort is complete (viewer_rebuild)
    sink = open_viewer(output, view["line"], lungs=lungs, classes=bool(predictor.card.classes)) if viewer and n == 1 and not resume else None
    by_job: dict[int, dict] = {}

    def finish(i: int, row: dict, quiet: bool = False) -> None:
        job = run_jobs[i]
        row["study_id"] = studies[todo[i]]
        (stage.commit if row["status"] == "ok" else stage.discard)(job.outputs)
        journal.append(row)
        by_job[i] = row
        if not quiet:
            progress.step(row["study_id"], row["status"])

    try:
        with tqdm(total=len(run_jobs), unit="slice", desc="predict", disable=None) as bar:
            for i, job in enumerate(run_jobs):
                if job.error:
                    finish(i, _report(bar, job, job.error))
                    bar.update()
            images = [i for i, job in enumerate(run_jobs) if job.kind == "image"]
            for start in range(0, len(images), 256):  # a progress line per 256 images
                chunk = images[start : start + 256]
                _predict_images(predictor, [run_jobs[i] for i in chunk], batch_size, bar, stage, lambda j, row: finish(chunk[j], row, quiet=True), sink, case_regex, anatomy)
                progress.step(f"images {start + 1}-{start + len(chunk)} of {len(images)}", "done", count=len(chunk))
            volumes = [i for i, job in enumerate(run_jobs) if job.kind == "volume"]
            for j, study in read_studies([run_jobs[i] for i in volumes], window, num_workers):
                i = volumes[j]
                finish(i, _predict_volume(predictor, run_jobs[i], study, batch_size, bar, stage, sink, anatomy, seg_model))
    finally:
        stage.close()
    rows = [by_job[i] for i in range(len(run_jobs))]
    if sink:
        for job, row in zip(run_jobs, rows):
            if row["status"] != "ok":
                sink.add_failed(case_id_of(job, case_regex) if job.kind else job.path.name, row["reason"], kind=job.kind, source=str(job.path))
        sink.write()
    finished = latest_rows(output, shard)
    if n == 1 or all(job_key(job) in finished for job in jobs):  # one process, or the last shard to finish
        merged = merge(output, SUMMARY_FIELDS, shard)
        if case_regex:
            write_cases(output / CASES, cases_of(merged.rows, case_regex))
        if not merged.missing:
            remove_leftovers(output)
        if n > 1 or resume:
            print(merged.line(output))
            if viewer and not merged.missing:
                from covidseg.prediction.viewer_rebuild import rebuild

                print(f"viewer: {rebuild(output, merged.rows, read_cohort(output))} (rebuilt from the {len(merged.rows)} studies' outputs)")
    else:
        left = sum(job_key(job) not in finished for job in jobs)
        print(f"shard {k}/{n} done: {left} studies of other shards not finished yet; the last shard merges summary.csv (or: covidseg merge {output})")
    return rows


def extra_outputs(case_regex: str | None, viewer: bool) -> list[str]:
    """Files and folders besides the per-input outputs that a run writes into ``--output``."""
    return ([CASES] if case_regex else []) + (list(VIEWER_OUTPUTS) if viewer else [])


def _int(value) -> int:
    """A count from a row in memory or read back from a summary file ('' is 0)."""
    return int(float(value)) if value not in (None, "") else 0


def cases_of(rows: list[dict], case_regex: str) -> list[dict]:
    """Per-case sums of the successful image rows, grouped by ``case_regex`` on the file stem."""
    slices = [
        {"case_id": case_id_from_name(Path(r["input"]).stem, case_regex), "lesion_pixels": _int(r["lesion_pixels"]),
         "lung_pixels": _int(r.get("lung_pixels")), "lesion_in_lung_pixels": _int(r.get("lesion_in_lung_pixels"))}
        for r in rows if r["status"] == "ok" and r["type"] == "image"
    ]  # fmt: skip
    cases = aggregate_cases(slices)
    if not any(r.get("lungs") for r in rows):  # no lung output: the burden is unknown, not 0 %
        for c in cases:
            c["involvement_percent"] = c["severity"] = None
    return cases
