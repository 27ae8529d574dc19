"""What ``covidseg predict`` reads and writes: each input becomes a ``Job`` with its output paths,
and every clash or existing output is refused before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from covidseg.data.dicom import is_series
from covidseg.data.io import IMAGE_SUFFIXES
from covidseg.data.volumes import is_volume, volume_stem
from covidseg.errors import CovidSegError

SUMMARY = "summary.csv"


@dataclass(frozen=True)
class Job:
    """One input and the files it produces (``outputs[0]`` is the mask)."""

    path: Path
    kind: str  # "image", "volume", or "" for an input that cannot be processed
    outputs: tuple[Path, ...] = ()
    error: str = ""


def list_inputs(paths: list[str | Path]) -> list[Path]:
    """Expands folders into their image and NIfTI files and DICOM series subfolders (sorted,
    not recursive); files and a folder that is itself a DICOM series stay."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and not is_series(path):
            inside = sorted(p for p in path.iterdir() if (p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_volume(p))) or is_series(p))
            found.extend(inside or [path])  # an empty folder stays, and is reported
        else:
            found.append(path)
    return found


def plan(paths: list[str | Path], output: Path, probabilities: bool = False, overlay: bool = False, lungs: bool = False) -> list[Job]:
    """One ``Job`` per input file, with its output paths under ``output``."""
    jobs = []
    for path in list_inputs(paths):
        if path.is_dir() and not is_series(path):
            jobs.append(Job(path, "", error="no images, NIfTI volumes or DICOM series in folder"))
        elif is_volume(path) or path.is_dir():  # a DICOM series folder is a volume
            name = path.name if path.is_dir() else volume_stem(path)
            outs = [output / f"{name}_mask.nii.gz"] + ([output / f"{name}_prob.nii.gz"] if probabilities else [])
            outs += [output / f"{name}_lungs.nii.gz"] if lungs else []
            jobs.append(Job(path, "volume", tuple(outs)))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            outs = [output / f"{path.stem}.png"]
            outs += [output / f"{path.stem}.npy"] if probabilities else []
            outs += [output / f"{path.stem}_overlay.png"] if overlay else []
            outs += [output / f"{path.stem}_lungs.png"] if lungs else []
            jobs.append(Job(path, "image", tuple(outs)))
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
