"""What ``covidseg predict`` reads and writes: each input becomes a ``Job`` with its output paths,
and every clash or existing output is refused before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from covidseg.data.dicom import find_series, is_series, list_series, series_files
from covidseg.data.io import IMAGE_SUFFIXES
from covidseg.data.samples import case_id_from_name
from covidseg.data.volumes import is_volume, volume_stem
from covidseg.errors import CovidSegError
from covidseg.prediction.listfile import is_list_file, read_list

SUMMARY = "summary.csv"


@dataclass(frozen=True)
class Job:
    """One input and the files it produces (``outputs[0]`` is the mask)."""

    path: Path
    kind: str  # "image", "volume", or "" for an input that cannot be processed
    outputs: tuple[Path, ...] = ()
    error: str = ""
    name: str = ""  # what outputs and cases are named after (a nested series: its path in the study)
    series: str = ""  # the SeriesInstanceUID read from a folder holding several series


def expand_inputs(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """Each input with its name: folders expand into their image and NIfTI files (not
    recursive) and their DICOM series at any depth (a study export ``STUDY/SERIES/*.dcm``; a
    nested series is named by its path below the folder, ``STUDY_SERIES``, so two studies'
    ``SE0001`` do not clash); files and a folder that is itself a series stay; a cohort list
    file (``.txt``/``.csv``, ``listfile``) stands for its entries."""
    found: list[tuple[Path, str]] = []
    for path in map(Path, paths):
        if is_list_file(path):  # a cohort list (covidseg.prediction.listfile): its entries, named by study_id when given
            for entry, study in read_list(path):
                inside = expand_inputs([entry])
                found.extend((p, (study if len(inside) == 1 else f"{study}_{name}") if study else name) for p, name in inside)
        elif path.is_dir() and not is_series(path):
            files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_volume(p)))
            inside = [(p, volume_stem(p) if is_volume(p) else p.stem) for p in files]
            inside += [(s, "_".join(s.relative_to(path).parts)) for s in find_series(path)]
            found.extend(sorted(inside) or [(path, path.name)])  # an empty folder stays, and is reported
        else:
            found.append((path, path.name if path.is_dir() else volume_stem(path) if is_volume(path) else path.stem))
    return found


def list_inputs(paths: list[str | Path]) -> list[Path]:
    """The input files and series of ``paths`` (see ``expand_inputs``)."""
    return [p for p, _ in expand_inputs(paths)]


def series_lines(jobs: list[Job]) -> list[str]:
    """One line per DICOM series to predict, as DICOM converters report what they found."""
    lines = []
    for job in jobs:
        if job.kind == "volume" and job.path.is_dir():
            files = next((n for uid, _, n in list_series(job.path) if uid == job.series), 0) if job.series else len(series_files(job.path))
            lines.append(f"DICOM series {job.path}{f' (SeriesInstanceUID {job.series})' if job.series else ''} ({files} files) -> {job.name}")
    return lines


def plan(paths: list[str | Path], output: Path, probabilities: bool = False, overlay: bool = False, lungs: bool = False, dicom_seg: bool = False,
         classes: bool = False) -> list[Job]:  # fmt: skip
    """One ``Job`` per input file, with its output paths under ``output`` (``dicom_seg``:
    ``NAME_seg.dcm`` for each DICOM series; ``classes``: the GGO/consolidation label map
    ``NAME_classes.png`` / ``NAME_classes.nii.gz`` of a class model)."""
    jobs = []
    for path, name in expand_inputs(paths):
        if path.is_dir() and not is_series(path):
            jobs.append(Job(path, "", error="no images, NIfTI volumes or DICOM series in folder (at any depth)"))
        elif is_volume(path) or path.is_dir():  # a DICOM series folder is a volume; a folder of several series, one per series
            several = list_series(path) if path.is_dir() else []
            for uid, label, _ in several if len(several) > 1 else [("", "", 0)]:
                named = f"{name}_{label}" if uid else name
                outs = [output / f"{named}_mask.nii.gz"] + ([output / f"{named}_prob.nii.gz"] if probabilities else [])
                outs += [output / f"{named}_lungs.nii.gz"] if lungs else []
                outs += [output / f"{named}_classes.nii.gz"] if classes else []
                outs += [output / f"{named}_seg.dcm"] if dicom_seg and path.is_dir() else []
                jobs.append(Job(path, "volume", tuple(outs), name=named, series=uid))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            outs = [output / f"{name}.png"]
            outs += [output / f"{name}.npy"] if probabilities else []
            outs += [output / f"{name}_overlay.png"] if overlay else []
            outs += [output / f"{name}_lungs.png"] if lungs else []
            outs += [output / f"{name}_classes.png"] if classes else []
            jobs.append(Job(path, "image", tuple(outs), name=name))
        else:
            jobs.append(Job(path, "", error=f"unsupported file type (expected {', '.join(IMAGE_SUFFIXES)}, .nii, .nii.gz)"))
    return jobs


def check_outputs(jobs: list[Job], output: Path, overwrite: bool, extra: list[str] = ()) -> None:
    """Refuses clashing outputs, outputs that replace an input, and (without ``overwrite``)
    existing outputs, before anything is written. Raises ``CovidSegError``."""
    owner: dict[Path, Path] = {}
    for job in jobs:
        for out in job.outputs:
            key = out.resolve()
            if key in owner:
                raise CovidSegError(f"{job.path} and {owner[key]} would both write {out}; rename one or predict them separately")
            owner[key] = job.path
    inputs = {job.path.resolve() for job in jobs}
    if clash := [p for p in owner if p in inputs]:
        raise CovidSegError(f"output {clash[0]} would replace an input; choose another --output")
    if overwrite:
        return
    existing = [p for p in [*owner, *((output / name).resolve() for name in (SUMMARY, *extra))] if p.exists()]
    if existing:
        names = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise CovidSegError(f"{len(existing)} output file(s) already exist ({names}); pass --overwrite true or choose another --output")


def case_id_of(job: Job, case_regex: str | None = None) -> str:
    """The case an input belongs to: a volume's name, or an image's ``case_regex`` case (else its stem)."""
    if job.kind == "image":
        return case_id_from_name(job.path.stem, case_regex) if case_regex else job.name or job.path.stem
    return job.name or (job.path.name if job.path.is_dir() else volume_stem(job.path))
