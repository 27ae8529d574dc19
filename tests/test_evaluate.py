"""End to end: ``covidseg evaluate`` on the tiny fixtures, in-process."""

from __future__ import annotations

import dataclasses
import csv
import json
import pickle
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covidseg.data.validate import validate_data
from covidseg.evaluate import main
from covidseg.evaluation.report import write_report
from covidseg.model.predictor import Predictor

FILES = ("metrics.json", "metrics.md", "per_image.csv", "roc_curve.png", "pr_curve.png", "confusion_matrix.png", "dice_by_lesion_size.png", "prediction_samples.png")
KEYS = {"checkpoints", "roots", "split", "threshold", "threshold_source", "tta", "counts", "per_image_mean", "per_image_n", "global", "dice_ci95", "by_lesion_size", "policy"}
METRICS = {"dice", "iou", "recall", "specificity", "precision", "accuracy", "auroc"}


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _split_images(run: Path, name: str) -> list[str]:
    """File names of a split (splits.csv keys are source/relative path)."""
    return [Path(r["key"]).name for r in _rows(run / "splits.csv") if r["split"] == name]


def _files(report: Path) -> list[str]:
    return sorted(Path(r["file"]).name for r in _rows(report / "per_image.csv"))


def _check_report(out: Path, n_images: int) -> dict:
    for name in FILES:
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG" and min(im.size) > 200
    m = json.loads((out / "metrics.json").read_text())
    assert KEYS <= m.keys()
    assert m["per_image_mean"].keys() == METRICS and m["global"].keys() == METRICS | {"average_precision"}
    rows = _rows(out / "per_image.csv")
    assert len(rows) == m["counts"]["images"] == n_images
    assert list(rows[0]) == ["file", "case_id", "dice", "iou", "gt_pixels", "pred_pixels"]
    assert m["per_image_mean"]["dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-5)
    assert m["counts"]["lesion_pixels"] == sum(int(r["gt_pixels"]) for r in rows)
    assert m["counts"]["predicted_pixels"] == sum(int(r["pred_pixels"]) for r in rows)
    assert m["counts"]["images_without_lesion"] == sum(r["gt_pixels"] == "0" for r in rows)
    assert m["counts"]["cases"] == len({r["case_id"] for r in rows})
    assert m["dice_ci95"]["low"] <= m["per_image_mean"]["dice"] <= m["dice_ci95"]["high"]
    for label, b in m["by_lesion_size"].items():  # bins of the ground truth at the original size
        inside = [float(r["dice"]) for r in rows if b["min_px"] <= int(r["gt_pixels"]) < (b["max_px"] or 10**9)]
        assert b["images"] == len(inside) and (b["dice_image"] is None or b["dice_image"] == pytest.approx(np.mean(inside), abs=1e-5)), label
    assert sum(b["images"] for b in m["by_lesion_size"].values()) == n_images
    assert "## By lesion size" in (out / "metrics.md").read_text()
    return m


def test_all_pairs_with_tensorboard(tiny_ckpt, tiny_data, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "report"
    m = main(["--ckpt", str(tiny_ckpt), "--data.root", str(tiny_data), "--output", str(out), "--tensorboard", str(tmp_path / "tb")])
    n_pairs = len(_rows(tiny_data / "manifest.csv"))
    assert _check_report(out, n_pairs) == json.loads((out / "metrics.json").read_text()) == m
    assert m["split"] is None and m["threshold"] == 0.5 and m["counts"]["pixels"] == n_pairs * 80 * 80  # original size, not 64 px
    assert (out / "learning_curves.png").is_file()  # the checkpoint sits in its run directory
    printed = capsys.readouterr().out
    assert "| Dice |" in printed and str(out.resolve()) in printed
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"test/roc_curve", "test/pr_curve", "test/prediction_samples"} <= set(acc.Tags()["images"])


def test_several_sources(tiny_ckpt, tiny_data, tmp_path):
    from covidseg.data.synthetic import generate

    second = generate(tmp_path / "second", cases=2, slices=2, size=72, seed=5)
    m = main(["--ckpt", str(tiny_ckpt), "--data.root", f"[{tiny_data}, {second}]", "--output", str(tmp_path / "r")])
    rows = _rows(tmp_path / "r" / "per_image.csv")
    assert len(rows) == 36 and {r["case_id"].split("/")[0] for r in rows} == {"data", "second"}
    assert m["per_source"].keys() == {"data", "second"} and m["per_source"]["second"]["images"] == 4
    second_dice = [float(r["dice"]) for r in rows if r["case_id"].startswith("second/")]
    assert m["per_source"]["second"]["dice_image"] == pytest.approx(np.mean(second_dice), abs=1e-5)
    assert "## Per source" in (tmp_path / "r" / "metrics.md").read_text()


def test_split_test_uses_the_runs_data_and_split(tiny_ckpt, tiny_run, tmp_path):
    m = main(["--ckpt", str(tiny_ckpt), "--split", "test", "--output", str(tmp_path / "r")])
    test_images = _split_images(tiny_run, "test")
    _check_report(tmp_path / "r", len(test_images))
    assert m["split"] == "test"
    assert _files(tmp_path / "r") == sorted(test_images)


def test_split_falls_back_to_the_checkpoints_split(tiny_ckpt, tiny_run, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"  # no splits.csv next to it
    ckpt.parent.mkdir(parents=True)
    shutil.copy(tiny_ckpt, ckpt)
    main(["--ckpt", str(ckpt), "--split", "val", "--output", str(tmp_path / "r")])
    assert _files(tmp_path / "r") == sorted(_split_images(tiny_run, "val"))
    assert not (tmp_path / "r" / "learning_curves.png").exists()


def test_ensemble_of_two_checkpoints(tiny_ckpt, tiny_run, tmp_path):
    m = main(["--ckpt", f"[{tiny_ckpt}, {tiny_ckpt.parent / 'last.ckpt'}]", "--split", "test", "--output", str(tmp_path / "r"), "--threshold", "0.3", "--tta", "true"])
    _check_report(tmp_path / "r", len(_split_images(tiny_run, "test")))
    assert len(m["checkpoints"]) == 2 and m["threshold"] == 0.3 and m["threshold_source"] == "given" and m["tta"] is True
    assert "threshold: 0.30 (given); flip TTA on" in (tmp_path / "r" / "metrics.md").read_text()


def test_threshold_auto_writes_a_tuned_copy_and_leaves_the_input_alone(tiny_run, tmp_path, capsys):
    from covidseg.evaluation.runs import split_samples
    from covidseg.evaluation.scoring import score

    run = shutil.copytree(tiny_run, tmp_path / "run")
    ckpt = run / "checkpoints" / "best.ckpt"
    original = torch.load(ckpt, weights_only=True)
    original["hyper_parameters"]["threshold"] = 0.123  # off the grid: auto must replace it
    torch.save(original, ckpt)
    before = ckpt.read_bytes()
    m = main(["--ckpt", str(ckpt), "--split", "test", "--threshold", "auto", "--output", str(tmp_path / "r")])
    assert ckpt.read_bytes() == before  # the input is never modified
    tuned = run / "checkpoints" / "best.tuned.ckpt"
    t = m["threshold"]
    assert t in np.round(np.arange(0.05, 0.951, 0.05), 2) and m["threshold_source"].startswith("auto")
    assert m["checkpoints"] == [str(tuned)]
    assert f"threshold auto: {t:.2f}" in capsys.readouterr().out
    stored = torch.load(tuned, weights_only=True)
    assert stored["hyper_parameters"]["threshold"] == t
    assert all(torch.equal(stored["state_dict"][k], v) for k, v in original["state_dict"].items())
    assert Predictor(tuned, device="cpu").card.threshold == t  # later predict/evaluate default to it
    # t maximises the mean per-image Dice on the validation split
    val = split_samples(ckpt, "val")
    per_image = score(Predictor(ckpt, device="cpu"), val, 0.5, progress=False).dice_by_threshold()
    assert per_image.mean(0).max() == pytest.approx(per_image.mean(0)[list(np.round(np.arange(0.05, 0.951, 0.05), 2)).index(t)])


def test_threshold_auto_needs_the_runs_splits(tiny_ckpt, tiny_data, tmp_path, capsys):
    ckpt = tmp_path / "a" / "b" / "alone.ckpt"
    ckpt.parent.mkdir(parents=True)
    data = torch.load(tiny_ckpt, weights_only=True)
    del data["CTDataModule"]
    torch.save(data, ckpt)
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(ckpt), "--data.root", str(tiny_data), "--threshold", "auto", "--output", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = _error_line(capsys)
    assert str(ckpt) in err and "split" in err
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["threshold"] == 0.5  # untouched


def _error_line(capsys) -> str:
    """The one ``error: ...`` line a user error prints (a progress bar may precede it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and sum(line.startswith("error:") for line in lines) == 1
    return lines[-1]


def _bad_checkpoints(good: Path, folder: Path) -> dict[str, Path]:
    text = folder / "notes.ckpt"
    text.write_text("# training notes\n")
    csv_text = folder / "log.ckpt"
    csv_text.write_text("epoch,loss\n1,0.5\n")  # the weights-only unpickler raises IndexError here
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = folder / "foreign.ckpt"
    torch.save(Namespace(lr=0.1), foreign)  # a pickled object weights-only loading refuses
    other = folder / "other.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, other)  # loads, but not a covidseg checkpoint
    return {"text": text, "csv-text": csv_text, "truncated": truncated, "foreign": foreign, "other": other, "missing": folder / "missing.ckpt"}


@pytest.mark.parametrize("kind", ["text", "csv-text", "truncated", "foreign", "other", "missing"])
def test_bad_checkpoint_one_line_error(kind, tiny_ckpt, tiny_data, tmp_path, capsys):
    path = _bad_checkpoints(tiny_ckpt, tmp_path)[kind]
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(path), "--data.root", str(tiny_data), "--output", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert str(path) in _error_line(capsys)
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_model_that_cannot_take_the_slices(tiny_ckpt, tiny_data, tmp_path, capsys):
    from covidseg.model.unet import LitUNet

    model = LitUNet(encoder_depth=3, decoder_channels=[32, 16, 8], in_channels=3, image_size=64)
    path = tmp_path / "rgb.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(path), "--data.root", str(tiny_data), "--output", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = _error_line(capsys)
    assert str(path) in err and "cannot take" in err


def test_data_without_pairs(tiny_ckpt, tmp_path, capsys):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(tiny_ckpt), "--data.root", str(root), "--output", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert str(root) in capsys.readouterr().err


def test_roots_required_without_split(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(tiny_ckpt), "--output", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--data.root" in capsys.readouterr().err


def test_write_report_for_fit(tiny_ckpt, tiny_data, tmp_path):
    """The call fit makes: given samples, a live SummaryWriter and the run directory."""
    from torch.utils.tensorboard import SummaryWriter

    samples = validate_data([tiny_data], progress=False).samples[:5]
    writer = SummaryWriter(str(tmp_path / "tb"))
    m = write_report(Predictor(tiny_ckpt, device="cpu"), samples, tmp_path / "report", split="test", tensorboard=writer, step=7, progress=False)
    writer.close()
    _check_report(tmp_path / "report", 5)
    assert m["roots"] == [str(tiny_data)]
    assert pickle.dumps(m)  # plain data


def test_lung_dice_and_burden_per_case(lung_ckpt, tiny_data, tmp_path):
    """A lung-output model: lung Dice and per-case involvement/grade against the true masks."""
    from covidseg.data.io import read_mask
    from covidseg.metrics.severity import GRADES, aggregate_cases, involvement

    m = main(["--ckpt", str(lung_ckpt), "--data.root", str(tiny_data), "--output", str(tmp_path / "r")])
    lungs = m["lungs"]
    n = len(_rows(tiny_data / "manifest.csv"))
    assert lungs["slices"] == n and 0 <= lungs["lung_dice_image"] <= 1
    sev = lungs["severity"]
    assert sev["cases"] == 8 and sum(sum(row.values()) for row in sev["confusion"].values()) == 8
    assert all(c["true_grade"] in GRADES and c["pred_grade"] in GRADES for c in sev["cases_table"])
    # the true involvement is the summed truth of each case, by hand
    samples = validate_data([tiny_data], progress=False).samples
    rows = []
    for s in samples:
        inside, lung, _ = involvement(read_mask(s.mask), read_mask(s.lung_mask))
        rows.append({"case_id": s.case_id, "lesion_pixels": 0, "lesion_in_lung_pixels": inside, "lung_pixels": lung})
    truth = {c["case_id"]: c["involvement_percent"] for c in aggregate_cases(rows)}
    for c in sev["cases_table"]:
        assert c["true_percent"] == pytest.approx(truth[c["case_id"]])
        assert c["abs_error_pp"] == pytest.approx(abs(c["pred_percent"] - c["true_percent"]))
    assert (tmp_path / "r" / "involvement.png").is_file() and "Grade confusion" in (tmp_path / "r" / "metrics.md").read_text()


def _external_folder_set(tmp_path: Path) -> Path:
    """3 cases x 2 slices in the images/ + masks/ layout (no manifest: case ids from file names)."""
    from covidseg.data.synthetic import generate

    ext = generate(tmp_path / "external", cases=3, slices=2, size=80, seed=7)
    (ext / "manifest.csv").unlink()
    shutil.rmtree(ext / "lungs")
    return ext


def test_threshold_auto_on_an_external_set_tunes_on_the_runs_own_validation_split(tiny_ckpt, tiny_run, tmp_path, capsys):
    """Without --split the external data holds none of the run's slices: the threshold is tuned
    on the run's validation split in the run's own data, and the external set is scored."""
    ckpt = shutil.copy(tiny_ckpt, tmp_path / "best.ckpt")
    ext = _external_folder_set(tmp_path)
    val = [r for r in _rows(tiny_run / "splits.csv") if r["split"] == "val"]
    m = main(["--ckpt", str(ckpt), "--data.root", str(ext), "--threshold", "auto", "--output", str(tmp_path / "r")])
    assert f"on {len(val)} validation slices" in capsys.readouterr().out
    assert m["counts"]["images"] == 6 and m["threshold_source"].startswith("auto")


def test_threshold_auto_on_an_external_set_refuses_when_the_runs_data_is_gone(tiny_ckpt, tmp_path, capsys, monkeypatch):
    import covidseg.evaluate as ev

    monkeypatch.setattr(ev, "stored_data", lambda ckpt: ([str(tmp_path / "gone")], {}))
    ckpt = shutil.copy(tiny_ckpt, tmp_path / "best.ckpt")
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(ckpt), "--data.root", str(_external_folder_set(tmp_path)), "--threshold", "auto", "--output", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = _error_line(capsys)
    assert "--threshold auto tunes on the run's validation split" in err and "gone" in err


def test_case_regex_groups_an_external_sets_slices_into_cases(tiny_ckpt, tmp_path, capsys):
    ext = _external_folder_set(tmp_path)
    apart = main(["--ckpt", str(tiny_ckpt), "--data.root", str(ext), "--output", str(tmp_path / "a")])
    grouped = main(["--ckpt", str(tiny_ckpt), "--data.root", str(ext), "--data.case_regex", r"^(case\d+)_\d+$", "--output", str(tmp_path / "b")])
    assert apart["dice_ci95"]["cases"] == 6 and grouped["dice_ci95"]["cases"] == grouped["counts"]["cases"] == 3


def test_the_runs_lesion_labels_on_other_data_are_announced(tiny_ckpt, tmp_path, capsys, monkeypatch):
    import covidseg.evaluate as ev

    real = ev.stored_data
    monkeypatch.setattr(ev, "stored_data", lambda ckpt: (real(ckpt)[0], {**real(ckpt)[1], "lesion_labels": [255]}))
    ext = _external_folder_set(tmp_path)
    main(["--ckpt", str(tiny_ckpt), "--data.root", str(ext), "--output", str(tmp_path / "a")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lesion labels")]
    assert lines == [f"lesion labels [255]: the run's mapping, applied to {ext} (--data.lesion_labels to change)"]
    main(["--ckpt", str(tiny_ckpt), "--data.root", str(ext), "--data.lesion_labels", "[255]", "--output", str(tmp_path / "b")])
    assert "lesion labels" not in capsys.readouterr().out  # given, not carried over: nothing to announce


def test_ensemble_members_that_disagree_on_tta_are_refused_and_thresholds_averaged_aloud(tiny_ckpt, tmp_path, capsys):
    """Issue 31, item 8: TTA came from the first member silently."""
    from covidseg.errors import CovidSegError
    from covidseg.model.card import read_card, write_card
    from covidseg.model.predictor import Predictor

    loaded = torch.load(tiny_ckpt, weights_only=False)
    other = tmp_path / "other.ckpt"
    card = read_card(loaded)
    torch.save(write_card(loaded, dataclasses.replace(card, tta=not card.tta, threshold=0.3)), other)
    with pytest.raises(CovidSegError, match=r"ensemble members disagree on flip TTA \(best.ckpt (on|off), other.ckpt (on|off)\); pass --tta true or --tta false"):
        Predictor([tiny_ckpt, other], device="cpu")
    p = Predictor([tiny_ckpt, other], device="cpu", tta=True)
    assert p.card.tta is True and p.card.threshold == pytest.approx((card.threshold + 0.3) / 2)
    assert "the mean of the members'" in capsys.readouterr().out


def test_evaluate_reads_each_volume_slice_from_the_cache_once(lung_ckpt, tmp_path, monkeypatch):
    """Scoring a volume reads each slice of its image, mask and lung mask from the slice cache
    once: the HU slice gives both the network's window and the anatomy stage's HU, and the 3D
    truth is made of the mask slices scored (no second read of the mask volume). The report's
    figure of the best, median and worst slices reads those again afterwards; the 3D anatomy
    stage maps the image volume as a whole (not counted here)."""
    from collections import Counter

    from covidseg.data import cache
    from covidseg.data.synthetic import generate_volumes
    from covidseg.evaluation import report

    root = generate_volumes(tmp_path / "v", cases=1, slices=6, size=64, seed=3, lungs=True)
    reads, whole, scored = Counter(), Counter(), {}
    slice_, mask_volume, pick = cache._slice, cache.read_mask_volume, report.pick_samples
    monkeypatch.setattr(cache, "_slice", lambda info, k: reads.update([(Path(info.path).parent.name, k)]) or slice_(info, k))
    monkeypatch.setattr(cache, "read_mask_volume", lambda path, *a: whole.update([Path(path).parent.name]) or mask_volume(path, *a))
    monkeypatch.setattr(report, "pick_samples", lambda rows: scored.update(reads=Counter(reads), whole=Counter(whole)) or pick(rows))
    m = main(["--ckpt", str(lung_ckpt), "--data.root", str(root), "--data.lesion_labels", "[1, 2]", "--output", str(tmp_path / "r"), "--device", "cpu"])
    assert m["per_case"]["cases"] == 1 and m["lungs"]["slices"] == 6
    assert scored["reads"] == Counter({(folder, k): 1 for folder in ("images", "masks", "lungs") for k in range(6)})
    assert scored["whole"] == Counter()
