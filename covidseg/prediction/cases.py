"""``cases.csv``: the image rows of a run grouped into cases by ``--data.case_regex`` (first
group of the regex on the file stem), with summed pixels, involvement and grade per case."""

from __future__ import annotations

from pathlib import Path

from covidseg.data.samples import case_id_from_name
from covidseg.metrics.severity import CLASSES, aggregate_cases

CASES = "cases.csv"


def _int(value) -> int:
    """A count from a row in memory or read back from a summary file ('' is 0)."""
    return int(float(value)) if value not in (None, "") else 0


def cases_of(rows: list[dict], case_regex: str) -> list[dict]:
    """Per-case sums of the successful image rows, grouped by ``case_regex`` on the file stem."""
    slices = [
        {"case_id": case_id_from_name(Path(r["input"]).stem, case_regex), "lesion_pixels": _int(r["lesion_pixels"]),
         "lung_pixels": _int(r.get("lung_pixels")), "lesion_in_lung_pixels": _int(r.get("lesion_in_lung_pixels")),
         **{k: _int(r[k]) for k in (f"{c}_{n}" for c in CLASSES for n in ("pixels", "in_lung_pixels")) if r.get(k) not in (None, "")}}
        for r in rows if r["status"] == "ok" and r["type"] == "image"
    ]  # fmt: skip
    cases = aggregate_cases(slices)
    if not any(r.get("lungs") for r in rows):  # no lung output: the burden is unknown, not 0 %
        for c in cases:
            c["involvement_percent"] = c["severity"] = None
    return cases
