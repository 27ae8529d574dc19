"""Built-in models (issue 26): scripts/package_model.py slims a checkpoint into a packaged model
with its card, refuses when the masks would disagree, and predict/evaluate use it without --ckpt."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from covidseg.errors import CovidSegError
from covidseg.model import pretrained
from covidseg.model.card import read_card
from covidseg.model.checkpoint import read_checkpoint
from covidseg.model.pretrained import packaging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


@pytest.fixture(scope="module")
def models_dir(lung_ckpt, tiny_data, tmp_path_factory) -> Path:
    """A folder with a built-in 'reference' made from the tiny lung-output model."""
    import package_model

    out = tmp_path_factory.mktemp("models")
    assert package_model.main([str(lung_ckpt), "--slices", str(tiny_data), "--volume_slices", "3", "--output", str(out / "reference.ckpt"), "--version", "0.test",
                                 "--cv", "c2-lungs"]) == 0  # the committed fold files of docs/experiments/c2-lungs
    return out


def _volume(path: Path) -> Path:
    """A 3-slice volume of lung-like HU without a body: never graded."""
    rng = np.random.default_rng(0)
    hu = np.full((72, 64, 3), -850, np.int16)
    hu[20:40, 20:30] = rng.integers(-400, -200, (20, 10, 3))
    nib.save(nib.Nifti1Image(hu, np.diag([0.7, 0.7, 2.0, 1.0])), path)
    return path


def test_packaged_model_is_slim_fp16_with_its_card(models_dir, lung_ckpt):
    path = models_dir / "reference.ckpt"
    assert path.stat().st_size < lung_ckpt.stat().st_size / 2  # no optimizer state, fp16 weights
    slim = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in slim["state_dict"].values() if v.is_floating_point())
    assert "optimizer_states" not in slim and "datamodule_hyper_parameters" not in slim
    card = slim[pretrained.CARD_KEY]
    assert card["name"] == "reference" and card["version"] == "0.test" and "not for diagnosis" in card["terms"]
    assert "settings" not in card and card["trained_on"]["slices"] > 0  # the model card lives in the hyper-parameters, once
    cv = card["cross_validation"]
    assert cv["experiment"] == "c2-lungs" and set(cv["per_image_dice"]) == {"medseg50", "zenodo20"} and cv["lung_dice_image"] > 0.9
    assert card["trained_on"]["cases"] > 0 and card["recipe"]["epochs"] >= 1 and card["recipe"]["lung_output"] is True
    assert cv["per_image_dice_by_lesion_size_at_0.5"]["zenodo20"]["<500"]["images"] > 0
    assert card["initialised_from"].startswith("random initialisation") and card["unlabelled_data"] is None and card["lesion_classes"] is None
    assert read_card(slim).lung_output is True and pretrained.card(path)["model"] == read_card(slim).as_dict()
    for name, report in card["agreement"].items():
        if name != "rule":
            assert report["lesion_dice_mean"] >= 0.99 and report["lung_dice_mean"] >= 0.99 and report["max_prob_diff"] <= 0.02, name
            assert 0 <= report["lesion_slices_below_0.99"] <= report["slices"] and report["lesion_max_pixels_changed"] >= 0, name
    assert {"slices:data", "volume:generated 512x512x3 CT"} <= set(card["agreement"])
    read_checkpoint(path)  # a checkpoint like any other for the predictor


def test_predict_without_ckpt_uses_the_builtin_model(models_dir, tmp_path, monkeypatch, capsys):
    from covidseg.predict import main

    monkeypatch.setenv("COVIDSEG_MODELS", str(models_dir))
    volume = _volume(tmp_path / "scan.nii.gz")
    assert main(["--input", str(volume), "--output", str(tmp_path / "out"), "--lungs", "true"]) == 0
    out = capsys.readouterr().out
    assert "using the built-in model 'reference' version 0.test" in out
    for name in ("scan_mask.nii.gz", "scan_lungs.nii.gz"):
        assert nib.load(tmp_path / "out" / name).shape == (72, 64, 3)
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "ok" and row["severity"] == "" and row["qc"] not in ("", "ok")  # no body, 3 slices: no grade
    # --ckpt reference names it explicitly: the same masks
    assert main(["--ckpt", "reference", "--input", str(volume), "--output", str(tmp_path / "again"), "--lungs", "true"]) == 0
    a, b = (np.asanyarray(nib.load(tmp_path / d / "scan_mask.nii.gz").dataobj) for d in ("out", "again"))
    assert np.array_equal(a, b)


def test_evaluate_and_models_accept_the_builtin_model(models_dir, tiny_data, tmp_path, monkeypatch, capsys):
    from covidseg.cli import main as cli
    from covidseg.evaluate import main as evaluate

    monkeypatch.setenv("COVIDSEG_MODELS", str(models_dir))
    metrics = evaluate(["--ckpt", "reference", "--data.root", str(tiny_data), "--output", str(tmp_path / "r")])
    assert metrics["per_image_mean"]["dice"] is not None and metrics["lungs"]["slices"] > 0
    capsys.readouterr()
    assert cli(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reference  (version 0.test") and "lung output yes" in out and "terms: Research use only" in out
    assert "zenodo20 by lesion size (threshold 0.5, slices): <500 px" in out
    assert "  trained on: " in out and " cases (" in out and "  recipe: U-Net " in out and "lesion + lung outputs" in out
    assert "involvement error per patient at lesion threshold 0.5 mean " in out and "agreement with its checkpoint on " in out
    assert "  initialised from: random initialisation" in out and "unlabelled data: none" in out


def test_the_card_says_what_a_model_was_initialised_from_and_whether_unlabelled_data_was_used():
    """Issue 32: a card names the ImageNet weights (and their licence) and the unlabelled slices."""
    ckpt = {"hyper_parameters": {"encoder_name": "tu-tf_efficientnet_lite0", "encoder_weights": "imagenet", "classes": ["ggo", "consolidation"],
                                 "consistency_weight": 1.0, "ema_decay": 0.99, "consistency_rampup": 5, "consistency_noise": 0.05},
            "datamodule_hyper_parameters": {"unlabelled": "/data/shared/unlabelled"}}  # fmt: skip
    got = packaging.training_inputs(ckpt)
    assert "Apache-2.0" in got["initialised_from"] and "ImageNet EfficientNet-Lite0" in got["initialised_from"]
    assert got["unlabelled_data"] == {"folder": "unlabelled", "method": "mean teacher", "consistency_weight": 1.0, "ema_decay": 0.99,
                                      "consistency_rampup": 5, "consistency_noise": 0.05}  # fmt: skip
    assert got["lesion_classes"] == ["ggo", "consolidation"]
    plain = packaging.training_inputs({"hyper_parameters": {"encoder_name": "resnet18", "encoder_weights": None}})
    assert plain == {"initialised_from": "random initialisation (resnet18; no pretrained weights)", "unlabelled_data": None, "lesion_classes": None}


def test_the_shipped_reference_predicts_a_volume_offline(tmp_path, monkeypatch, capsys):
    """The model inside the package (no COVIDSEG_MODELS): its card and one volume, lungs included."""
    from covidseg.predict import main

    monkeypatch.delenv("COVIDSEG_MODELS", raising=False)
    path = pretrained.resolve()
    assert path.parent == pretrained.HERE and path.stat().st_size <= 30 * 2**20
    card = pretrained.card(path)
    assert card["model"]["lung_output"] is True and "not for diagnosis" in card["terms"]
    assert card["version"] == "2" and card["cross_validation"]["experiment"] == "c4-lite0" and len(card["cross_validation"]["folds"]) == 5
    assert "ImageNet EfficientNet-Lite0" in card["initialised_from"] and card["unlabelled_data"] is None
    assert all(r["lesion_dice_mean"] >= 0.99 and r["lung_dice_mean"] >= 0.99 for k, r in card["agreement"].items() if k != "rule")
    from covidseg.data.phantom import phantom, write_nifti

    chest = phantom("chest", size=160, lesions=4)  # a whole chest in HU: body in air, table, gas below the lungs
    volume = write_nifti(tmp_path / "scan.nii.gz", chest.hu, chest)
    assert main(["--input", str(volume), "--output", str(tmp_path / "out"), "--lungs", "true"]) == 0
    assert f"using the built-in model 'reference' version {card['version']}" in capsys.readouterr().out
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    true_ml = np.count_nonzero(chest.lungs) * chest.voxel_ml
    true_percent = 100 * np.count_nonzero(chest.lesion) / np.count_nonzero(chest.lungs)
    assert row["status"] == "ok" and row["qc"] == "ok" and abs(float(row["lung_ml"]) - true_ml) < 0.05 * true_ml
    assert abs(float(row["involvement_percent"]) - true_percent) < 2.0 and row["severity"] == "CT-1"
    lungs = np.asanyarray(nib.load(tmp_path / "out" / "scan_lungs.nii.gz").dataobj)
    assert lungs.shape == (160, 160, 48) and set(np.unique(lungs)) == {0, 1, 2}  # right and left lung


def test_version_1_stays_loadable_by_name(tmp_path, monkeypatch, capsys):
    """Issue 32: version 2 is 'reference'; version 1 (C2, resnet18 from scratch) is 'reference-v1'
    for anyone who needs the old numbers, and predicts as before."""
    from covidseg.predict import main

    monkeypatch.delenv("COVIDSEG_MODELS", raising=False)
    assert {"reference", "reference-v1"} <= set(pretrained.available())
    old = pretrained.card(pretrained.resolve("reference-v1"))
    assert old["version"] == "1" and old["cross_validation"]["experiment"] == "c2-lungs" and old["recipe"]["encoder_name"] == "resnet18"
    from covidseg.data.phantom import phantom, write_nifti

    chest = phantom("chest", slices=24, size=96, lesions=3)
    volume = write_nifti(tmp_path / "scan.nii.gz", chest.hu, chest)
    assert main(["--ckpt", "reference-v1", "--input", str(volume), "--output", str(tmp_path / "out"), "--lungs", "true"]) == 0
    assert "using the built-in model 'reference-v1' version 1" in capsys.readouterr().out


def test_no_builtin_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDSEG_MODELS", str(tmp_path))
    monkeypatch.setattr(pretrained, "HERE", tmp_path / "nothing")
    with pytest.raises(CovidSegError, match="no built-in model 'reference' \\(installed: none\\); pass --ckpt"):
        pretrained.resolve()
    env = {**__import__("os").environ, "COVIDSEG_MODELS": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "covidseg", "predict", "--ckpt", "nosuchmodel", "--input", "x.png", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: no built-in model 'nosuchmodel'")


def test_packaging_refuses_when_masks_disagree(lung_ckpt, tiny_ckpt, tiny_data, tmp_path):
    from covidseg.data.samples import image_of
    from covidseg.data.validate import validate_data
    from covidseg.model.predictor import Predictor

    raws = [image_of(s) for s in validate_data([tiny_data]).samples[:6]]
    # two different models disagree: the gate names why
    report = packaging.agreement(Predictor(lung_ckpt, device="cpu"), Predictor(tiny_ckpt, device="cpu"), raws)
    assert report["max_prob_diff"] > 0.02 and packaging.check(report)
    # an unreachable bar: nothing is written
    with pytest.raises(CovidSegError, match="not packaged"):
        packaging.write(lung_ckpt, tmp_path / "m.ckpt", {"name": "m"}, {"slices": raws}, min_dice=1.01)
    assert list(tmp_path.iterdir()) == []


def test_export_takes_a_builtin_name(models_dir, tmp_path, monkeypatch, capsys):
    """Issue 31, item 7: `covidseg export --ckpt reference` said "checkpoint not found"."""
    from covidseg.export import main as export

    monkeypatch.setenv("COVIDSEG_MODELS", str(models_dir))
    assert export(["--ckpt", "reference", "--output", str(tmp_path / "reference.onnx")]) == 0
    out = capsys.readouterr().out
    assert "using the built-in model 'reference' version 0.test" in out and (tmp_path / "reference.onnx").stat().st_size > 0


def test_package_model_writes_the_volume_operating_point_chosen_on_the_folds(tmp_path, monkeypatch):
    """Issue 32: the card's volume_threshold comes from the recipe's folds (volume_rule.choose),
    or is given, or is left to the lesion threshold."""
    import json

    from covidseg.evaluation.volume_rule import choose
    from covidseg.model.pretrained.card_fields import volume_operating_point

    def record(fold, patients):
        return {"fold": fold, "num_folds": 2, "scores": {"tta": {"lungs": {"involvement_by_threshold": patients}}}}

    folds = {0: record(0, {"a": {"true_percent": 30.0, "pred_percent": {"0.3": 29.0, "0.5": 20.0}}}),
             1: record(1, {"b": {"true_percent": 10.0, "pred_percent": {"0.3": 12.0, "0.5": 9.5}}})}  # fmt: skip
    (tmp_path / "x").mkdir()
    for k, r in folds.items():
        (tmp_path / "x" / f"fold-{k}.json").write_text(json.dumps(r))
    threshold, rule = volume_operating_point("auto", tmp_path / "x")
    assert threshold == 0.3 == choose(folds)["volume_threshold"]  # mean error 1.5 pp against 5.25 at 0.5
    assert rule["by_threshold"]["0.3"]["mean_abs_error_pp"] == pytest.approx(1.5) and "least mean involvement error" in rule["rule"]
    assert volume_operating_point("0.45", tmp_path / "x")[0] == 0.45
    assert volume_operating_point("none", tmp_path / "x") == (None, None)
    assert volume_operating_point("auto", tmp_path / "c2-lungs-missing") == (None, None)
    assert volume_operating_point("auto", None) == (None, None)
    slim = packaging.slim({"state_dict": {}, "hyper_parameters": {"image_size": 64, "threshold": 0.4}}, {}, volume_threshold=0.3)
    assert read_card(slim).volume_threshold == 0.3 and read_card(slim).threshold == 0.4


def test_card_of_a_class_recipe_carries_its_cross_validated_class_scores(tmp_path):
    """Issue 33: a class recipe's folds (``classes_by_threshold``) give the card the per-class
    scores at the folds' operating point, the mean over folds, and ``covidseg models`` prints them."""
    import json

    from covidseg.model.pretrained.card_fields import cv_scores
    from covidseg.models import card_text

    def classes(ggo, cons):
        return {"slices": 10, "ggo": {"dice": ggo, "sensitivity": 0.5, "specificity": 0.9}, "consolidation": {"dice": cons, "sensitivity": None, "specificity": 0.95}}

    def record(fold, dice_03, dice_05, by_t):
        mode = {"by_threshold": {"0.3": {"a": dice_03}, "0.5": {"a": dice_05}}, "at_0.5": {"a": {"by_lesion_size": {}}}, "classes": by_t["0.5"], "classes_by_threshold": by_t}
        return {"fold": fold, "num_folds": 2, "scores": {"plain": mode, "tta": mode}}

    folder = tmp_path / "x"
    folder.mkdir()
    for k, (g, c) in enumerate(((0.6, 0.4), (0.4, 0.6))):  # threshold 0.3 is the better setting on both folds
        (folder / f"fold-{k}.json").write_text(json.dumps(record(k, 0.8, 0.7, {"0.3": classes(g, c), "0.5": classes(0.1, 0.1)})))
    cv = cv_scores(folder)
    assert cv["operating_point"]["threshold"] == 0.3
    got = cv["classes_at_operating_point"]
    assert got["slices"] == 20 and got["ggo"]["dice"] == pytest.approx(0.5) and got["consolidation"]["dice"] == pytest.approx(0.5)
    assert got["consolidation"]["sensitivity"] is None  # no fold has one
    (tmp_path / "m.ckpt").write_bytes(b"0")
    text = card_text("m", tmp_path / "m.ckpt", {"cross_validation": cv})
    assert "lesion classes, cross-validated on 20 class-labelled slices" in text and "ggo Dice 0.500" in text and "sensitivity n/a" in text
