"""Which studies of a cohort this process predicts: the whole plan, this shard's share, and
(with ``--resume``) the part not yet complete, checked before any model is loaded.

    inputs -> jobs.plan (every input, its outputs) -> studies (case_id_of) -> shards.shard_indices
    -> mine -> --resume: journal.complete drops the finished ones -> todo
    without --resume or --overwrite, any existing output of ``mine`` is refused (jobs.check_outputs)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from covidseg.errors import CovidSegError
from covidseg.prediction.jobs import Job, case_id_of, check_outputs, plan
from covidseg.prediction.journal import complete, latest_rows, part_name
from covidseg.prediction.shards import shard_indices


@dataclass
class Selection:
    """The cohort (``jobs``, the ``studies`` they belong to), this shard's indices (``mine``)
    and those still to predict (``todo``)."""

    jobs: list[Job]
    studies: list[str]
    mine: list[int]
    todo: list[int]
    shard: tuple[int, int] = (0, 1)

    @property
    def journal(self) -> str:
        return part_name(*self.shard)


def study_of(job: Job, case_regex: str | None = None) -> str:
    """The study an input belongs to: a volume's name, an image's case (``case_regex``) or name."""
    return case_id_of(job, case_regex) if job.kind else job.path.name


def job_key(job) -> str:
    """A job's ``journal.study_key``."""
    from covidseg.prediction.journal import study_key

    return study_key({"input": str(job.path), "series": job.series})


def select(
    inputs: list[str | Path], output: Path, *, probabilities: bool = False, overlay: bool = False, lungs: bool = False, dicom_seg: bool = False,
    case_regex: str | None = None, viewer: bool = False, overwrite: bool = False, resume: bool = False, shard: tuple[int, int] = (0, 1),
    extra: list[str] = (), classes: bool = False,
) -> Selection:  # fmt: skip
    """Plans the cohort and picks this process's studies (see the module docstring).

    Raises:
        CovidSegError: ``resume`` with ``overwrite``; clashing outputs; existing outputs without ``overwrite`` or ``resume``.
    """
    output = Path(output)
    k, n = shard
    if resume and overwrite:
        raise CovidSegError("--resume and --overwrite: choose one (--resume keeps the finished studies, --overwrite predicts them again)")
    jobs = plan(inputs, output, probabilities, overlay, lungs, dicom_seg, classes)
    check_outputs(jobs, output, overwrite=True)  # clashes and replaced inputs, over the whole cohort
    studies = [study_of(job, case_regex) for job in jobs]
    mine = shard_indices(studies, k, n)
    if resume:
        rows = latest_rows(output, shard) if output.is_dir() else {}
        done = complete(rows, [(job_key(jobs[i]), jobs[i].outputs) for i in mine if jobs[i].kind])
        todo = [i for i in mine if job_key(jobs[i]) not in done]
    else:
        todo = mine
        check_outputs([jobs[i] for i in mine], output, overwrite, extra=[*extra, *([part_name(k, n)] if n > 1 else [])])
    return Selection(jobs, studies, mine, todo, shard)
