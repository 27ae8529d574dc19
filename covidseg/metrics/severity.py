"""Lesion burden as a share of the lungs, and the CT severity grade built on it.

The grade is the one MosMedData uses (Morozov et al., "MosMedData: Chest CT Scans With COVID-19
Related Findings Dataset", 2020), by the share of lung parenchyma involved:

    CT-0: no lesion      CT-1: < 25 %      CT-2: 25 - < 50 %      CT-3: 50 - < 75 %      CT-4: >= 75 %

"No lesion" is read as an involvement below ``CT0_MAX_PERCENT`` (a floor): without one, a
single false-positive pixel inside the lungs makes a healthy study CT-1 and CT-0 is practically
unreachable for a model (issue 23, item 11). The floor applies to every involvement graded here,
predicted and true alike, so both are graded by one rule. It was set above the largest
involvement a model predicted on lesion-free synthetic cases (``scripts/ct0_floor.py``; the
measurement is in the README, "Severity"), which is a stand-in for real lesion-free studies.

``involvement`` counts lesion pixels inside the lung mask only, so a lesion mask that spills
outside the lungs does not inflate the burden. Cases (patients) are graded on their summed
pixels (or voxels) over all their slices, never on a mean of slice percentages.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

GRADES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
LUNG_THRESHOLD = 0.5  # lung probabilities -> lung mask (lungs are large and clear-cut; the lesion has its own threshold)
CT0_MAX_PERCENT = 0.1  # involvement (percent of lung) below which a study is CT-0; see the module docstring
VOLUME_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)  # candidate operating points for volumes (evaluation.volume_rule)
EDGES = (25.0, 50.0, 75.0)  # percent of lung involved: upper edges of CT-1, CT-2, CT-3 (exclusive)
CASE_FIELDS = ("case_id", "slices", "lesion_pixels", "lung_pixels", "lesion_in_lung_pixels", "involvement_percent", "severity",
               "ggo_pixels", "consolidation_pixels", "ggo_percent", "consolidation_percent")  # the last four: a class model's
CLASSES = ("ggo", "consolidation")  # covidseg.data.classes.CLASS_NAMES: a class model's rows carry NAME_pixels, NAME_in_lung_pixels


def involvement(lesion: np.ndarray, lungs: np.ndarray) -> tuple[int, int, float | None]:
    """Lesion pixels inside the lungs, lung pixels, and their ratio in percent.

    Shape:
        lesion, lungs: equal shapes, bool or {0, 1}.

    Returns:
        ``(lesion_in_lung, lung, percent)``; ``percent`` is ``None`` when there is no lung.
    """
    lesion, lungs = np.asarray(lesion, bool), np.asarray(lungs, bool)
    inside, lung = int(np.count_nonzero(lesion & lungs)), int(np.count_nonzero(lungs))
    return inside, lung, (100.0 * inside / lung if lung else None)


def grade(percent: float | None) -> str | None:
    """The CT-0 ... CT-4 grade of an involvement in percent (``None`` if undefined): below
    ``CT0_MAX_PERCENT`` of the lungs is CT-0, from it on at least CT-1."""
    if percent is None:
        return None
    if percent < CT0_MAX_PERCENT:
        return GRADES[0]
    for i, edge in enumerate(EDGES, start=1):
        if percent < edge:
            return GRADES[i]
    return GRADES[4]


def aggregate_cases(rows: Iterable[dict]) -> list[dict]:
    """Per-case sums of slice rows ``{case_id, lesion_pixels, lung_pixels, lesion_in_lung_pixels}``
    with involvement and grade of the sums; cases in order of first appearance. Rows of a class
    model may add ``ggo_pixels``, ``ggo_in_lung_pixels`` (and consolidation's): the case then
    gets ``ggo_percent`` / ``consolidation_percent`` of its summed lungs (``None`` if a slice of
    the case has no in-lung count, e.g. an ungraded one)."""
    keys = ("lesion_pixels", "lung_pixels", "lesion_in_lung_pixels")
    optional = tuple(f"{c}_{k}" for c in CLASSES for k in ("pixels", "in_lung_pixels"))
    sums: dict[str, dict] = defaultdict(lambda: {"slices": 0, **dict.fromkeys(keys, 0)})
    seen: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        case = sums[row["case_id"]]
        case["slices"] += 1
        for key in keys:
            case[key] += int(row[key])
        for key in optional:
            if row.get(key) not in (None, ""):
                case[key] = case.get(key, 0) + int(row[key])
                seen[row["case_id"]][key] += 1
    out = []
    for case_id, s in sums.items():
        percent = 100.0 * s["lesion_in_lung_pixels"] / s["lung_pixels"] if s["lung_pixels"] else None
        row = {"case_id": case_id, **s, "involvement_percent": percent, "severity": grade(percent)}
        for c in CLASSES:
            counted = seen[case_id][f"{c}_in_lung_pixels"] == s["slices"] and s["lung_pixels"]
            if f"{c}_pixels" in s:
                row[f"{c}_percent"] = 100.0 * s[f"{c}_in_lung_pixels"] / s["lung_pixels"] if counted else None
        out.append(row)
    return out


def write_cases(path: str | Path, cases: list[dict]) -> None:
    """``cases.csv``: one row per case (``CASE_FIELDS``)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CASE_FIELDS, extrasaction="ignore")
        w.writeheader()
        for c in cases:
            pct = {k: "" if c.get(k) is None else f"{c[k]:.3f}" for k in ("involvement_percent", *(f"{n}_percent" for n in CLASSES))}
            w.writerow({**c, **pct, "severity": c["severity"] or ""})


def compare_cases(truth: list[dict], pred: list[dict]) -> dict:
    """Per-case agreement of predicted and true burden (rows of ``aggregate_cases`` for the same
    cases): each case's true and predicted involvement and grade with the absolute error in
    percentage points, their means, and the grade confusion table ``{true: {predicted: n}}``."""
    by_case = {c["case_id"]: c for c in pred}
    rows, confusion = [], {g: dict.fromkeys(GRADES, 0) for g in GRADES}
    for t in truth:
        p = by_case[t["case_id"]]
        if t["involvement_percent"] is None or p["involvement_percent"] is None:
            continue
        error = abs(p["involvement_percent"] - t["involvement_percent"])
        rows.append({"case_id": t["case_id"], "true_percent": t["involvement_percent"], "pred_percent": p["involvement_percent"],
                     "abs_error_pp": error, "true_grade": t["severity"], "pred_grade": p["severity"]})  # fmt: skip
        confusion[t["severity"]][p["severity"]] += 1
    if not rows:
        return {}
    return {
        "cases": len(rows),
        "mean_abs_error_pp": float(np.mean([r["abs_error_pp"] for r in rows])),
        "max_abs_error_pp": float(np.max([r["abs_error_pp"] for r in rows])),
        "grade_accuracy": float(np.mean([r["true_grade"] == r["pred_grade"] for r in rows])),
        **grade_baseline(rows),
        "confusion": confusion,
        "cases_table": rows,
    }


def grade_baseline(rows: list[dict]) -> dict:
    """What always answering the most common true grade would score, and the cases per grade:
    "12 of 13 grades right" means little when 12 of the 13 are CT-1.

    Args:
        rows: ``{"true_grade", "pred_grade"}`` per case.
    """
    counts = {g: sum(r["true_grade"] == g for r in rows) for g in GRADES}
    common = max(GRADES, key=lambda g: counts[g])
    per_grade = {g: float(np.mean([r["pred_grade"] == g for r in rows if r["true_grade"] == g])) for g in GRADES if counts[g]}
    return {"cases_per_grade": counts, "baseline_grade": common, "baseline_accuracy": counts[common] / max(len(rows), 1), "accuracy_per_grade": per_grade}


def restrict_to_lungs(lesion: np.ndarray, lungs: np.ndarray, dilate_px: int = 0) -> np.ndarray:
    """Lesion pixels inside the (dilated) lung mask: lung gating of a lesion prediction.

    Shape:
        lesion, lungs: ``[H, W]`` bool; ``dilate_px`` grows the lungs by a disc of that radius
        first (lesions at the pleura sit on the lung border); returns ``[H, W]`` bool.
    """
    import cv2

    lungs = np.asarray(lungs, bool)
    if dilate_px > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        lungs = cv2.dilate(lungs.astype(np.uint8), disc) > 0
    return np.asarray(lesion, bool) & lungs
