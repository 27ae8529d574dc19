"""The summary as a journal: one row appended per study as it finishes, and the merge of every
process's rows into ``summary.csv``.

    OUTPUT/summary.csv                 one process (shard 0/1): the journal itself, rewritten in
                                       cohort order (one row per study) when the run ends
    OUTPUT/summary.part-K-of-N.csv     shard K of N: its journal; the last shard to finish (or
                                       ``covidseg merge OUTPUT``) merges the parts into summary.csv
    OUTPUT/cohort.json                 the cohort every shard was given: its studies and settings

A row is appended (and flushed to disk) only after the study's outputs were renamed into place,
so a study with a row and all of its outputs is complete (``complete``), whatever was killed
when. A row cut short by a kill is ignored when read. Several rows for one input (a failed study
retried with ``--resume``) merge to the last one read; the sources are read oldest kind first
(summary.csv of an earlier merge, then the parts, then the running journal).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUMMARY = "summary.csv"
COHORT = "cohort.json"
_PART = re.compile(r"^summary\.part-(\d+)-of-(\d+)\.csv$")


def part_name(k: int, n: int) -> str:
    """The journal of shard ``k`` of ``n``: ``summary.csv`` for a single process."""
    return SUMMARY if n == 1 else f"summary.part-{k}-of-{n}.csv"


def part_files(output: Path) -> list[tuple[int, int, Path]]:
    """Every ``summary.part-K-of-N.csv`` in ``output`` as ``(N, K, path)``, sorted."""
    found = [(int(m[2]), int(m[1]), p) for p in output.glob("summary.part-*-of-*.csv") if (m := _PART.match(p.name))]
    return sorted(found)


class Journal:
    """Appends summary rows to ``path`` one at a time (header first when the file is new)."""

    def __init__(self, path: Path, fields: Sequence[str], fresh: bool):
        self.path, self.fields = Path(path), tuple(fields)
        if fresh or not self.path.exists() or self.path.stat().st_size == 0:
            self._write("w", [dict(zip(self.fields, self.fields))])
        else:
            with open(self.path, "rb+") as f:  # a row cut short by a kill: end its line
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def _write(self, mode: str, rows: Iterable[dict]) -> None:
        with open(self.path, mode, newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    def append(self, row: dict) -> None:
        self._write("a", [row])


def read_rows(path: Path) -> list[dict]:
    """The complete rows of a summary file (a row cut short by a kill is left out)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return [r for r in reader if None not in r.values() and None not in r and r.get("input")]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def sources(output: Path, current: tuple[int, int] | None = None) -> list[Path]:
    """The summary files of ``output`` in merge order (later wins): ``summary.csv`` of an earlier
    merge, the parts of other shard counts, then those of the ``current`` ``(K, N)`` run."""
    n_now = current[1] if current else None
    parts = part_files(output)
    ordered = [p for n, _, p in parts if n != n_now] + [p for n, _, p in parts if n == n_now]
    summary = output / SUMMARY
    if not summary.exists():
        return ordered
    return ordered + [summary] if n_now == 1 else [summary, *ordered]


def study_key(entry: dict) -> str:
    """What names one study across rows, ``cohort.json`` and shards: its input path, and the
    SeriesInstanceUID when it is one of several series in one folder."""
    return f"{entry['input']}#{entry['series']}" if entry.get("series") else entry["input"]


def latest_rows(output: Path, current: tuple[int, int] | None = None) -> dict[str, dict]:
    """The last row read for each study (``study_key``) over ``sources``."""
    rows: dict[str, dict] = {}
    for path in sources(output, current):
        for row in read_rows(path):
            rows[study_key(row)] = row
    return rows


def complete(rows: dict[str, dict], inputs: Iterable[tuple[str, Sequence[Path]]]) -> set[str]:
    """The inputs whose row says ``ok`` and whose outputs all exist (what ``--resume`` skips)."""
    return {name for name, outs in inputs if rows.get(name, {}).get("status") == "ok" and all(Path(p).exists() for p in outs)}


def write_cohort(output: Path, studies: list[dict], settings: dict) -> None:
    """``cohort.json``: the studies (input, study_id, outputs) and the run's settings, atomically."""
    tmp = output / f".{COHORT}.{os.getpid()}"
    tmp.write_text(json.dumps({"studies": studies, **settings}, indent=1))
    os.replace(tmp, output / COHORT)


def read_cohort(output: Path) -> dict | None:
    try:
        return json.loads((output / COHORT).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Merged:
    """What a merge found: the rows in cohort order, and the studies failed or still missing."""

    rows: list[dict]
    failed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def line(self, output: Path) -> str:
        text = f"summary: {output / SUMMARY} ({len(self.rows)} of {len(self.rows) + len(self.missing)} studies"
        text += f"; {len(self.failed)} failed: {_few(self.failed)}" if self.failed else ""
        text += f"; {len(self.missing)} missing (not predicted yet, or their shard was stopped; run it again with --resume): {_few(self.missing)}" if self.missing else ""
        return text + ")"


def _few(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def merge(output: Path, fields: Sequence[str], current: tuple[int, int] | None = None, write: bool = True) -> Merged:
    """Merges every summary file of ``output`` into ``summary.csv``: one row per study of
    ``cohort.json`` that has one, in cohort order (atomic rename; a second merge writes the same)."""
    cohort = read_cohort(output) or {"studies": [{"input": r["input"], "series": r.get("series", "")} for r in latest_rows(output, current).values()]}
    rows = latest_rows(output, current)
    studies = [study_key(s) for s in cohort["studies"]]
    merged = Merged([rows[s] for s in studies if s in rows])
    merged.failed = [s for s in studies if s in rows and rows[s].get("status") != "ok"]
    merged.missing = [s for s in studies if s not in rows]
    if write:
        tmp = output / f".{SUMMARY}.{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(merged.rows)
        os.replace(tmp, output / SUMMARY)
    return merged
