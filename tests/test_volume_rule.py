"""The volume operating point (issue 32): involvement per patient at several lesion thresholds,
recorded by scoring and chosen on the folds' patients, then used by predict for mL and grades."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from covidseg.evaluation.volume_rule import choose
from covidseg.metrics.summary import involvement_by_threshold


def _record(patients: dict[str, tuple[float, dict]]) -> dict:
    return {"scores": {"tta": {"lungs": {"involvement_by_threshold": {
        p: {"true_percent": t, "pred_percent": pred} for p, (t, pred) in patients.items()}}}}}  # fmt: skip


def test_the_threshold_with_the_least_involvement_error_is_chosen_with_its_baseline():
    records = {
        0: _record({"a": (30.0, {"0.30": 28.0, "0.40": 24.0, "0.50": 20.0}), "b": (5.0, {"0.30": 6.0, "0.40": 5.0, "0.50": 4.0})}),
        1: _record({"c": (10.0, {"0.30": 11.0, "0.40": 9.0, "0.50": 7.0})}),
    }
    out = choose(records)
    assert out["volume_threshold"] == 0.3  # errors 1.33 / 2.33 / 4.67 pp
    assert out["by_threshold"]["0.30"]["mean_abs_error_pp"] == pytest.approx(4 / 3)
    assert out["by_threshold"]["0.50"]["grade_accuracy"] == pytest.approx(2 / 3)  # a: CT-2 read as CT-1
    assert out["baseline_grade"] == "CT-1" and out["baseline_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="scored before issue 32"):
        choose({0: {"scores": {"tta": {"lungs": {}}}}})


def test_a_threshold_some_patients_lack_is_left_out():
    """A fold file written before 0.10 joined the grid has no 0.10: the 0.10 row would compare
    other patients than the rest, so only thresholds every patient has are candidates."""
    records = {0: _record({"a": (30.0, {"0.10": 30.0, "0.30": 20.0})}), 1: _record({"b": (5.0, {"0.30": 5.0})})}
    out = choose(records)
    assert list(out["by_threshold"]) == ["0.30"] and out["volume_threshold"] == 0.3 and out["by_threshold"]["0.30"]["patients"] == 2
    with pytest.raises(ValueError, match="share no volume threshold"):
        choose({0: _record({"a": (30.0, {"0.10": 30.0})}), 1: _record({"b": (5.0, {"0.30": 5.0})})})


def test_involvement_by_threshold_sums_pixels_per_patient():
    rows = [
        {"case_id": "p", "true": (10, 100), "pred": (0, 80), "by_threshold": {"0.30": 12, "0.50": 8}},
        {"case_id": "p", "true": (0, 100), "pred": (0, 120), "by_threshold": {"0.30": 8, "0.50": 2}},
    ]
    out = involvement_by_threshold(rows)["p"]
    assert out["true_percent"] == pytest.approx(5.0) and out["pred_percent"] == {"0.30": pytest.approx(10.0), "0.50": pytest.approx(5.0)}


def test_predict_measures_volumes_at_the_cards_volume_threshold(lung_ckpt, tiny_data, tmp_path):
    """A model whose card has a volume threshold reports lesion mL and involvement at it; the
    mask stays at the Dice threshold."""
    import torch

    from covidseg.data.phantom import phantom, write_nifti
    from covidseg.model.card import read_card, write_card
    from covidseg.model.predictor import Predictor
    from covidseg.prediction import predict_paths

    p = phantom("chest", slices=24, size=96)
    scan = write_nifti(tmp_path / "scan.nii.gz", p.hu, p)
    loaded = torch.load(lung_ckpt, weights_only=False)
    card = read_card(loaded)
    low = tmp_path / "low.ckpt"
    torch.save(write_card(loaded, __import__("dataclasses").replace(card, threshold=0.5, volume_threshold=0.05)), low)
    rows = {}
    for name, ckpt in (("plain", lung_ckpt), ("low", low)):
        (rows[name],) = predict_paths(Predictor(ckpt, device="cpu", threshold=0.5), [scan], tmp_path / name, lungs=True, anatomy=False)
    assert rows["low"]["lesion_pixels"] == rows["plain"]["lesion_pixels"]  # the same mask
    assert float(rows["low"]["lesion_ml"]) > float(rows["plain"]["lesion_ml"])  # measured at 0.05
    with open(tmp_path / "low" / "summary.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert float(row["lesion_ml"]) == pytest.approx(float(rows["low"]["lesion_ml"]))
    assert np.isfinite(float(rows["low"]["lesion_ml"]))
