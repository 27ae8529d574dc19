"""scripts/cv_summary.py and covidseg.evaluation.crossval: each experiment at its own best operating point,
the paired per-fold table against the reference, lesion-size bins pooled over folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covidseg.evaluation.adoption import CURRENT_REFERENCE
from covidseg.evaluation.crossval import best_setting, read_records
from covidseg.metrics.summary import by_lesion_size

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cv_summary.py"


def _record(name: str, fold: int, plain: dict, tta: dict, counts: np.ndarray) -> dict:
    """A fold file with per-image Dice per threshold (same for each threshold except 0.4 and 0.5)."""
    def mode(values):
        by_t = {t: {"medseg50": values[0] - 0.05, "zenodo20": values[1] - 0.05} for t in ("0.3", "0.6", "0.7")}
        by_t["0.4"] = {"medseg50": values[0] - 0.01, "zenodo20": values[1]}
        by_t["0.5"] = {"medseg50": values[0], "zenodo20": values[1]}
        at = {s: {"images": len(counts), "cases": 1, "dice_image": 0.5, "dice_global": 0.5, "by_lesion_size": by_lesion_size(counts)} for s in ("medseg50", "zenodo20")}
        return {"by_threshold": by_t, "at_0.5": at}
    return {"version": 1, "name": name, "fold": fold, "num_folds": 5, "command": "x", "commit": "abc", "epochs": 20, "train_seconds": 600,
            "scores": {"plain": mode(plain), "tta": mode(tta)}}  # fmt: skip


@pytest.fixture
def results(tmp_path) -> Path:
    counts = np.array([(100, 0, 100, 800), (0, 0, 0, 9)])  # <500: Dice 2/3; none: 1
    for fold in range(3):
        for name, plain, tta in ((CURRENT_REFERENCE, (0.70, 0.60), (0.72, 0.61)), ("cand", (0.74, 0.64), (0.73, 0.62))):
            d = tmp_path / name
            d.mkdir(exist_ok=True)
            if name == "cand" and fold == 2:
                continue  # the candidate has folds 0 and 1 only: pairs on those
            (d / f"fold-{fold}.json").write_text(json.dumps(_record(name, fold, plain, tta, counts)))
    return tmp_path


def test_best_setting_is_chosen_over_all_folds(results):
    assert best_setting(read_records(results / CURRENT_REFERENCE))[:2] == ("tta", "0.5")
    tta, t, value = best_setting(read_records(results / "cand"))
    assert (tta, t) == ("plain", "0.5") and value == pytest.approx(0.69)


def test_paired_table_on_common_folds(results):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--results", str(results)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"## paired: cand (no TTA 0.5) against {CURRENT_REFERENCE} (TTA 0.5), folds [0, 1]" in out  # the current reference by default
    assert "| 0 | 0.740 / 0.720 / +0.020 | 0.640 / 0.610 / +0.030 | +0.025 |" in out
    assert "| mean | 0.740 / 0.720 / +0.020 (sd 0.000) | 0.640 / 0.610 / +0.030 (sd 0.000) | +0.0250 |" in out
    assert "| medseg50 | <500 | 3 | 0.667 |" in out  # reference: one such slice in each of 3 folds, pooled
    assert "| medseg50 | none | 3 | 1.000 |" in out
    assert "adoption rule (docs/RESULTS.md, superiority): screening only (2 of 5 folds): may not adopt yet" in out


@pytest.mark.parametrize(
    ("diffs", "lungs", "folds", "rule", "decision"),
    [
        ({"medseg50": 0.005, "zenodo20": 0.02}, [0.97, 0.96], 5, "superiority", "adopt"),
        ({"medseg50": -0.011, "zenodo20": 0.05}, None, 5, "superiority", "not adopted"),  # one source worse by more than 0.01
        ({"medseg50": 0.004, "zenodo20": 0.012}, None, 5, "superiority", "not adopted"),  # mean +0.008: short of +0.01
        ({"medseg50": 0.02, "zenodo20": 0.02}, [0.97, 0.94], 5, "superiority", "not adopted"),  # a fold's lung Dice under 0.95
        ({"medseg50": 0.02, "zenodo20": 0.02}, None, 4, "superiority", "screening only (4 of 5 folds): may not adopt yet"),
        ({"medseg50": -0.015, "zenodo20": 0.0}, [0.97, 0.96], 5, "non-inferiority", "adopt"),  # mean -0.0075, worst -0.015
        ({"medseg50": -0.025, "zenodo20": 0.03}, [0.97, 0.96], 5, "non-inferiority", "not adopted"),  # a source below -0.02
        ({"medseg50": -0.015, "zenodo20": -0.015}, [0.97, 0.96], 5, "non-inferiority", "not adopted"),  # mean -0.015
    ],
)
def test_verdict_applies_the_written_rule(diffs, lungs, folds, rule, decision):
    from covidseg.evaluation.adoption import verdict  # the rule lives in the package; the script prints it

    assert verdict(diffs, lungs, folds, 5, rule).splitlines()[0] == f"adoption rule (docs/RESULTS.md, {rule}): {decision}"
