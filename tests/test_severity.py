"""Lesion burden and the CT-0..CT-4 grade: edges, lesion outside the lungs, per-case sums."""

import csv

import numpy as np
import pytest

from covidseg.metrics.severity import CT0_MAX_PERCENT, aggregate_cases, grade, involvement, write_cases


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(0.0, "CT-0"), (1e-9, "CT-0"), (CT0_MAX_PERCENT * 0.999, "CT-0"), (CT0_MAX_PERCENT, "CT-1"), (24.999, "CT-1"), (25.0, "CT-2"), (49.999, "CT-2"), (50.0, "CT-3"), (74.999, "CT-3"), (75.0, "CT-4"), (100.0, "CT-4"), (None, None)],
)
def test_grade_edges(percent, expected):
    assert grade(percent) == expected


def test_involvement_counts_lesion_inside_the_lungs_only():
    lungs = np.zeros((4, 4), bool)
    lungs[:, :2] = True  # 8 lung pixels
    lesion = np.zeros((4, 4), bool)
    lesion[0, :] = True  # 2 inside, 2 outside
    assert involvement(lesion, lungs) == (2, 8, 25.0)
    assert involvement(lesion, np.zeros_like(lungs)) == (0, 0, None)


def test_cases_are_graded_on_summed_pixels(tmp_path):
    rows = [
        {"case_id": "a", "lesion_pixels": 10, "lung_pixels": 100, "lesion_in_lung_pixels": 10},
        {"case_id": "b", "lesion_pixels": 0, "lung_pixels": 50, "lesion_in_lung_pixels": 0},
        {"case_id": "a", "lesion_pixels": 90, "lung_pixels": 100, "lesion_in_lung_pixels": 80},
        {"case_id": "c", "lesion_pixels": 5, "lung_pixels": 0, "lesion_in_lung_pixels": 0},
    ]
    cases = {c["case_id"]: c for c in aggregate_cases(rows)}
    # a: 90 of 200 lung pixels
    assert cases["a"]["slices"] == 2 and cases["a"]["involvement_percent"] == pytest.approx(45.0) and cases["a"]["severity"] == "CT-2"
    assert cases["b"]["severity"] == "CT-0"
    assert cases["c"]["involvement_percent"] is None and cases["c"]["severity"] is None  # no lung found
    write_cases(tmp_path / "cases.csv", list(cases.values()))
    with open(tmp_path / "cases.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["case_id"] for r in table] == ["a", "b", "c"] and table[0]["involvement_percent"] == "45.000" and table[2]["severity"] == ""


def test_unequal_lungs_are_not_averaged_per_slice():
    rows = [
        {"case_id": "a", "lesion_pixels": 50, "lung_pixels": 50, "lesion_in_lung_pixels": 50},  # 100 % of a small slice
        {"case_id": "a", "lesion_pixels": 0, "lung_pixels": 950, "lesion_in_lung_pixels": 0},  # 0 % of a large slice
    ]
    (case,) = aggregate_cases(rows)
    assert case["involvement_percent"] == pytest.approx(5.0) and case["severity"] == "CT-1"  # not (100 + 0) / 2


def test_restrict_to_lungs_with_dilation():
    from covidseg.metrics.severity import restrict_to_lungs

    lungs = np.zeros((9, 9), bool)
    lungs[2:7, 2:7] = True
    lesion = np.zeros((9, 9), bool)
    lesion[4, 1] = lesion[4, 4] = lesion[0, 0] = True  # just outside, inside, far outside
    assert restrict_to_lungs(lesion, lungs).sum() == 1
    gated = restrict_to_lungs(lesion, lungs, dilate_px=1)
    assert gated[4, 1] and gated[4, 4] and not gated[0, 0]


def test_lung_gate_script_runs_on_a_lung_model_run(lung_ckpt, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "experiments" / "lung_gate.py"
    spec = importlib.util.spec_from_file_location("lung_gate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = lung_ckpt.parents[1]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    module.main([str(run)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| lung gate")]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == ["None", "0", "3", "7"] and "best: gate=" in out


def test_one_false_positive_pixel_leaves_a_healthy_study_ct0():
    """A lesion-free study (30 slices of 2,000 lung pixels) with one false-positive pixel, or a
    dozen scattered ones, stays CT-0; a lesion at the floor's size is CT-1."""
    lungs = np.ones((30, 40, 50), bool)
    lesion = np.zeros_like(lungs)
    lesion[3, 10, 10] = True
    assert grade(involvement(lesion, lungs)[2]) == "CT-0"
    lesion.flat[np.random.default_rng(0).choice(lesion.size, 12, replace=False)] = True
    assert grade(involvement(lesion, lungs)[2]) == "CT-0"
    lesion.flat[: int(np.ceil(CT0_MAX_PERCENT / 100 * lungs.size))] = True
    assert grade(involvement(lesion, lungs)[2]) == "CT-1"


def test_lesion_free_synthetic_cases_and_the_floor_measurement(lung_ckpt, tmp_path, capsys):
    """generate(lesions=False) writes the demo's anatomy with empty masks; scripts/ct0_floor.py
    measures a lung model's predicted involvement on such cases."""
    import importlib.util
    from pathlib import Path

    from covidseg.data.io import read_mask
    from covidseg.data.synthetic import generate

    root = generate(tmp_path / "healthy", cases=2, slices=3, size=64, lesions=False)
    assert all(read_mask(p).sum() == 0 for p in (root / "masks").iterdir()) and all(read_mask(p).any() for p in (root / "lungs").iterdir())
    path = Path(__file__).resolve().parents[1] / "scripts" / "ct0_floor.py"
    spec = importlib.util.spec_from_file_location("ct0_floor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main([str(lung_ckpt), "--cases", "2", "--slices", "2", "--size", "80"])
    assert out["cases"] == 2 and set(out["per_case_percent"]) == {"case000", "case001"}
    printed = capsys.readouterr().out
    assert "lesion-free cases have predicted lesion in the lungs" in printed
    # what it prints is what it measured: the count of cases above 0 and of cases the floor keeps CT-0
    above = sum(v > 0 for v in out["per_case_percent"].values())
    assert f"{above} of 2 lesion-free cases have predicted lesion in the lungs" in printed, printed


def test_grade_accuracy_comes_with_the_trivial_baseline():
    """Issue 30/31: "12 of 13 right" beside what always answering the most common grade scores."""
    from covidseg.metrics.severity import compare_cases

    truth = [{"case_id": f"c{i}", "involvement_percent": p, "severity": grade(p)} for i, p in enumerate([5, 6, 7, 8, 30])]
    pred = [{"case_id": f"c{i}", "involvement_percent": p, "severity": grade(p)} for i, p in enumerate([4, 6, 9, 8, 10])]
    out = compare_cases(truth, pred)
    assert out["grade_accuracy"] == pytest.approx(0.8)
    assert out["baseline_grade"] == "CT-1" and out["baseline_accuracy"] == pytest.approx(0.8)  # the model scores only what "always CT-1" does
    assert out["cases_per_grade"] == {"CT-0": 0, "CT-1": 4, "CT-2": 1, "CT-3": 0, "CT-4": 0}
    assert out["accuracy_per_grade"] == {"CT-1": 1.0, "CT-2": 0.0}
