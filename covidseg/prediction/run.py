"""Predicting a list of inputs: images in batches (``images``), volumes and DICOM series slice
by slice (``volumes``), with masks, probabilities, overlays, lung masks, a class model's
GGO/consolidation label map (``NAME_classes``: 0 background, 1 GGO, 2 consolidation, inside the
cleaned lesion mask) and the lesion burden written per input, one ``summary.csv`` row each
(``summary``), ``cases.csv`` per ``--data.case_regex`` case (``cases``) and the offline viewer
(``viewing``). ``covidseg predict`` (``covidseg/predict.py``) is its command line."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from covidseg.data.samples import check_case_regex, compile_case_regex
from covidseg.errors import CovidSegError
from covidseg.metrics.severity import write_cases
from covidseg.model.predictor import Predictor
from covidseg.prediction.cases import CASES, cases_of
from covidseg.prediction.cohort import job_key, select
from covidseg.prediction.images import predict_images
from covidseg.prediction.jobs import Job, case_id_of, series_lines
from covidseg.prediction.journal import Journal, latest_rows, merge, read_cohort, write_cohort
from covidseg.prediction.loader import read_studies
from covidseg.prediction.progress import Progress
from covidseg.prediction.staging import Staging, remove_leftovers
from covidseg.prediction.summary import SUMMARY_FIELDS, failed_row
from covidseg.prediction.viewing import open_viewer, viewer_line
from covidseg.prediction.volumes import predict_volume
from covidseg.viewer import OUTPUTS as VIEWER_OUTPUTS

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
                    finish(i, failed_row(bar, job, job.error))
                    bar.update()
            images = [i for i, job in enumerate(run_jobs) if job.kind == "image"]
            for start in range(0, len(images), 256):  # a progress line per 256 images
                chunk = images[start : start + 256]
                predict_images(predictor, [run_jobs[i] for i in chunk], batch_size, bar, stage, lambda j, row: finish(chunk[j], row, quiet=True), sink, case_regex, anatomy)
                progress.step(f"images {start + 1}-{start + len(chunk)} of {len(images)}", "done", count=len(chunk))
            volumes = [i for i, job in enumerate(run_jobs) if job.kind == "volume"]
            for j, study in read_studies([run_jobs[i] for i in volumes], window, num_workers):
                i = volumes[j]
                finish(i, predict_volume(predictor, run_jobs[i], study, batch_size, bar, stage, sink, anatomy, seg_model))
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
