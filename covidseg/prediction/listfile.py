"""Cohort list files: one ``--input`` argument that names a whole cohort.

    cohort.txt   one path per line; blank lines and lines starting with ``#`` are skipped
    cohort.csv   a header row with a ``path`` column and optionally ``study_id`` (other columns ignored)

A relative path is taken relative to the list file's folder (so a cohort folder with its list
inside moves as one). A ``study_id`` names the study's outputs (``STUDY_ID_mask.nii.gz``) instead
of the file or folder name.
"""

from __future__ import annotations

import csv
from pathlib import Path

from covidseg.errors import CovidSegError

LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")


def is_list_file(path: str | Path) -> bool:
    """Whether ``path`` is a cohort list (a ``.txt``/``.csv``/``.lst``/``.list`` file)."""
    path = Path(path)
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def read_list(path: str | Path) -> list[tuple[Path, str]]:
    """The entries of a list file as ``(path, study_id)``; ``study_id`` is ``""`` when not given.

    Raises:
        CovidSegError: naming the file: unreadable, empty, or a CSV without a ``path`` column.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise CovidSegError(f"{path}: cannot read the cohort list ({err})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "path" not in columns:
            raise CovidSegError(f"{path}: a cohort CSV needs a 'path' column (found: {', '.join(reader.fieldnames or []) or 'no header'})")
        entries = [((row.get(columns["path"]) or "").strip(), (row.get(columns.get("study_id", ""), "") or "").strip()) for row in reader]
        entries = [(p, s) for p, s in entries if p]
    else:
        entries = [(line.strip(), "") for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise CovidSegError(f"{path}: the cohort list names no paths")
    return [(p if p.is_absolute() else path.parent / p, study) for p, study in ((Path(p).expanduser(), s) for p, s in entries)]
