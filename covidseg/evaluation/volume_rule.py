"""The volume operating point: which lesion threshold measures involvement best, chosen on the
held-out patients of cross-validation folds (issue 32).

Involvement is a ratio of volumes, and the Dice-optimal threshold underestimates lesion volume
(the mask's edge pixels sit near 0.5). Every fold file since issue 32 records, per held-out
patient, the true involvement and the predicted one at each ``severity.VOLUME_THRESHOLDS``
(``lungs.involvement_by_threshold``). ``choose`` takes the threshold with the least mean
absolute error in percentage points over all folds' patients (ties to the higher threshold, the
one closer to the mask's), and reports beside it the grade accuracy and the trivial baseline
(always the most common true grade). The chosen value goes into the model card as
``volume_threshold`` (``covidseg fit --model.volume_threshold T``, or ``scripts/package_model.py``).
"""

from __future__ import annotations

import statistics

from covidseg.metrics.severity import grade, grade_baseline


def per_patient(records: dict[int, dict], mode: str = "tta") -> dict[str, dict]:
    """Patient -> ``{"true_percent", "pred_percent": {threshold: percent}}`` over the folds."""
    out: dict[str, dict] = {}
    for record in records.values():
        lungs = record["scores"][mode].get("lungs") or {}
        out.update(lungs.get("involvement_by_threshold") or {})
    return {k: v for k, v in out.items() if v["true_percent"] is not None}


def choose(records: dict[int, dict], mode: str = "tta") -> dict:
    """The volume threshold with the least mean absolute involvement error (see the module
    docstring), and per threshold: mean and max error (pp), grade accuracy; the baseline.

    Raises:
        ValueError: when no fold file has per-threshold involvement (folds scored before issue 32).
    """
    patients = per_patient(records, mode)
    if not patients:
        raise ValueError("no fold file has involvement by threshold (scored before issue 32): rescore the folds with scripts/cv_fold.py")
    # only thresholds every patient was scored at, so each row compares the same patients (a
    # fold file written before a threshold joined the grid lacks it until rescored)
    thresholds = sorted(set.intersection(*(set(p["pred_percent"]) for p in patients.values())), key=float)
    if not thresholds:
        raise ValueError("the fold files share no volume threshold: rescore them with scripts/cv_fold.py --rescore")
    table = {}
    for t in thresholds:
        errors = [abs(p["pred_percent"][t] - p["true_percent"]) for p in patients.values() if p["pred_percent"].get(t) is not None]
        grades = [{"true_grade": grade(p["true_percent"]), "pred_grade": grade(p["pred_percent"][t])} for p in patients.values() if p["pred_percent"].get(t) is not None]
        table[t] = {"patients": len(errors), "mean_abs_error_pp": statistics.mean(errors), "max_abs_error_pp": max(errors),
                    "grade_accuracy": statistics.mean(g["true_grade"] == g["pred_grade"] for g in grades)}  # fmt: skip
    best = min(thresholds, key=lambda t: (round(table[t]["mean_abs_error_pp"], 6), -float(t)))
    baseline = grade_baseline([{"true_grade": grade(p["true_percent"]), "pred_grade": None} for p in patients.values()])
    return {"volume_threshold": float(best), "by_threshold": table, "baseline_grade": baseline["baseline_grade"],
            "baseline_accuracy": baseline["baseline_accuracy"], "cases_per_grade": baseline["cases_per_grade"]}  # fmt: skip
