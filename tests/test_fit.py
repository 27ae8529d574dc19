"""End-to-end: the CLI in-process on tiny generated data (CPU, 64 px, a few batches)."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAINER, TINY_MODEL
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from covidseg.evaluate import evaluate
from covidseg.errors import CovidSegError
from covidseg.fit import find_last_checkpoint, main

REQUIRED_TAGS = {"train/loss", "train/dice", "train/dice_image", "val/loss", "val/dice", "val/iou", "val/precision", "val/recall", "val/specificity",
                 "val/accuracy", "val/auroc", "val/dice_image", "lr-AdamW", "test/dice_image", "test/dice", "test/auroc"}  # fmt: skip


def _fit(root, out, *extra):
    return main(["--data.root", str(root), "--trainer.logger.init_args.save_dir", str(out)] + TINY_MODEL + FAST_TRAINER + list(extra))


def test_run_directory_holds_everything(tiny_run):
    for name in ("config.yaml", "splits.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "report/metrics.json", "report/roc_curve.png"):
        assert (tiny_run / name).is_file(), name
    assert not (tiny_run / "test_metrics.json").exists()  # one test score per run: report/metrics.json
    assert list(tiny_run.glob("events.out.tfevents.*"))
    metrics = json.loads((tiny_run / "report" / "metrics.json").read_text())
    ea = EventAccumulator(str(tiny_run), size_guidance={"images": 0})
    ea.Reload()
    assert REQUIRED_TAGS <= set(ea.Tags()["scalars"]), REQUIRED_TAGS - set(ea.Tags()["scalars"])
    assert len(ea.Scalars("val/dice_image")) == 2  # one point per epoch
    # TensorBoard's test/* are the report's numbers
    assert ea.Scalars("test/dice_image")[-1].value == pytest.approx(metrics["per_image_mean"]["dice"], abs=1e-6)
    assert ea.Scalars("test/auroc")[-1].value == pytest.approx(metrics["global"]["auroc"], abs=1e-6)
    assert any("val/samples" in t for t in ea.Tags()["images"])
    ckpt = torch.load(tiny_run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["image_size"] == 64 and ckpt["hyper_parameters"]["normalization"] == "auto"
    config = (tiny_run / "config.yaml").read_text()
    assert "image_size: 64" in config and "encoder_depth: 3" in config


def test_resume_continues_the_same_run(tiny_data, tmp_path, caplog):
    _fit(tiny_data, tmp_path, "--trainer.max_epochs", "1", "--early_stopping.patience", "7")
    run = tmp_path / "covidseg" / "version_0"
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    splits = (run / "splits.csv").read_text()
    with caplog.at_level(logging.INFO):
        _fit(tiny_data, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last", "--data.split_seed", "999", "--early_stopping.patience", "7")
    assert f"--ckpt_path last: resuming {run / 'checkpoints' / 'last.ckpt'}" in caplog.text  # which checkpoint 'last' was
    assert not (tmp_path / "covidseg" / "version_1").exists()  # resumed into the same directory
    second = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0 and second["epoch"] == 1
    assert second["global_step"] == 2 * first["global_step"]
    assert (run / "splits.csv").read_text() == splits  # same patients, despite a new seed
    # the run's record stays: its config.yaml is the first command's, the resume's lies beside it
    assert "split_seed: 42" in (run / "config.yaml").read_text()
    assert "split_seed: 999" in (run / "config.resume-1.yaml").read_text()
    es = next(v for k, v in second["callbacks"].items() if k.startswith("EarlyStopping"))
    es_first = next(v for k, v in first["callbacks"].items() if k.startswith("EarlyStopping"))
    assert es["patience"] == 7 and es["best_score"] >= es_first["best_score"]
    ea = EventAccumulator(str(run))
    ea.Reload()
    assert [e.step for e in ea.Scalars("val/dice_image")] == sorted({e.step for e in ea.Scalars("val/dice_image")})


def test_resume_without_a_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path", "last"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--ckpt_path last: no " in err and "last.ckpt to resume" in err


def test_last_is_the_newest_run_or_a_one_line_refusal(tmp_path, caplog):
    """``--ckpt_path last`` took an older run's last.ckpt when the newest had none, and crashed on
    a run folder not named version_N."""
    base = tmp_path / "covidseg"

    def run(name, last=True):
        (base / name / "checkpoints").mkdir(parents=True)
        if last:
            (base / name / "checkpoints" / "last.ckpt").write_bytes(b"")

    run("version_2")
    run("version_10")
    assert find_last_checkpoint(str(tmp_path), "covidseg") == base / "version_10" / "checkpoints" / "last.ckpt"  # by number, not by name
    run("version_11", last=False)
    with pytest.raises(CovidSegError, match="newest run .*version_11 has no checkpoints/last.ckpt; to resume the older version_10, pass --ckpt_path"):
        find_last_checkpoint(str(tmp_path), "covidseg")
    run("final")
    with pytest.raises(CovidSegError, match="ambiguous"):
        find_last_checkpoint(str(tmp_path), "covidseg")
    only = tmp_path / "other"
    (only / "covidseg" / "version_final" / "checkpoints").mkdir(parents=True)
    (only / "covidseg" / "version_final" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert find_last_checkpoint(str(only), "covidseg").parts[-3] == "version_final"  # a lone run of another name is no ambiguity


def test_bad_data_stops_before_training_naming_files(tiny_data, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    (bad / "images" / "case000_00.png").write_bytes(b"garbage")
    (bad / "masks" / "case001_01.png").unlink()
    with pytest.raises(SystemExit) as exit_:
        _fit(bad, tmp_path / "runs", "--trainer.max_epochs", "1")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "case000_00.png: unreadable or corrupt image" in err
    assert "case001_01.png" in err and "does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "covidseg" / "version_0" / "checkpoints").exists()


def test_wrong_path_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _fit(tmp_path / "nowhere", tmp_path / "runs")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nowhere'}: no such folder"


def test_demo_is_the_default(tmp_path, capsys):
    results = main(["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"] + TINY_MODEL + FAST_TRAINER)
    out = capsys.readouterr().out
    assert "Test metrics (best checkpoint; threshold 0.50, TTA off" in out
    assert (Path(os.environ["COVIDSEG_CACHE"]) / "demo-v2" / "manifest.csv").is_file()
    assert "best checkpoint:" in out and "run directory:" in out
    assert 0.0 <= results["per_image_mean"]["dice"] <= 1.0


@pytest.mark.slow
def test_bf16_fit_reports_what_evaluate_gives_in_fp32(tmp_path):
    """The val/dice_image a bf16-mixed run logged for its best checkpoint (scored under bf16
    autocast in validation) equals what evaluate computes in fp32 from that checkpoint on the
    same validation slices (64 px slices: no resize difference between the two). fit's own
    report is not compared: it calls evaluate, so it would equal it by construction."""
    import torch

    from covidseg.data.synthetic import generate

    data = generate(tmp_path / "data", 8, 4, 64)
    # the default network, trained until it finds lesion (issue 31, item 17: after 2 batches of the
    # tiny network nothing was predicted, and an empty mask scores the same in any precision)
    main(["--data.root", str(data), "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.image_size", "64", "--data.batch_size", "4",
          "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "6", "--model.lr", "0.005", "--test", "false"] + FAST_TRAINER)  # fmt: skip
    best = tmp_path / "covidseg" / "version_0" / "checkpoints" / "best.ckpt"
    (logged,) = [v["best_model_score"] for k, v in torch.load(best, map_location="cpu", weights_only=False)["callbacks"].items() if k.startswith("ModelCheckpoint")]
    fp32 = evaluate(best, output=tmp_path / "eval", split="val", progress=False)
    assert fp32["global"]["dice"] > 0.05  # lesion is predicted: the comparison can fail
    assert float(logged) == pytest.approx(fp32["per_image_mean"]["dice"], abs=0.005)


@pytest.mark.slow
def test_one_test_score_equal_to_evaluate_from_anywhere(tiny_data, tmp_path, monkeypatch):
    """fit's report equals evaluate --split test, also from another directory after the run moved."""
    import shutil

    from covidseg.evaluate import main as evaluate_main

    monkeypatch.chdir(tiny_data.parent)  # a relative --data.root, as users type it
    results = main(["--data.root", tiny_data.name, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "1",
                    "--model.threshold", "0.4", "--model.tta", "true"] + TINY_MODEL + FAST_TRAINER)  # fmt: skip
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = evaluate_main(["--ckpt", str(tmp_path / "moved" / "covidseg" / "version_0" / "checkpoints" / "best.ckpt"), "--split", "test", "--output", "report"])
    assert (results["threshold"], results["tta"]) == (again["threshold"], again["tta"]) == (0.4, True)
    for key in ("per_image_mean", "global"):
        for metric, value in results[key].items():
            assert again[key][metric] == pytest.approx(value, abs=1e-6, nan_ok=True), (key, metric)
    assert again["counts"] == results["counts"]


def test_final_model_on_every_case_trains_without_validation(tiny_data, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="pytorch_lightning")  # another test may have quietened it
    results = _fit(tiny_data, tmp_path, "--trainer.max_epochs", "2", "--data.val_fraction", "0", "--data.test_fraction", "0",
                   "--model.threshold", "0.4", "--model.tta", "true")
    assert results == {}  # nothing held out, so nothing to test on
    run = tmp_path / "covidseg" / "version_0"
    assert set((run / "splits.csv").read_text().split()[1:]) and ",val" not in (run / "splits.csv").read_text()
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == last["epoch"] == 1  # no early stop, no selection: the latest weights
    assert best["hyper_parameters"]["threshold"] == 0.4 and best["hyper_parameters"]["tta"] is True
    assert not any(k.startswith("EarlyStopping") for k in last["callbacks"])
    assert "no validation split: training on every case" in caplog.text
    assert f"best checkpoint: {run / 'checkpoints' / 'best.ckpt'}" in capsys.readouterr().out


def test_plateau_schedule_without_validation_is_a_clear_error(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _fit(tiny_data, tmp_path, "--data.val_fraction", "0", "--data.test_fraction", "0", "--model.scheduler", "plateau")
    assert "plateau follows val/dice_image" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["L", "P"])
def test_2d_label_maps_are_refused_without_a_mapping_and_train_with_one(tmp_path, capsys, mode):
    """A MedSeg-like slice set whose masks are {0, 1, 2} (ground glass, consolidation), as grey
    (``L``) or VOC-style palette (``P``) PNGs: a palette PNG's labels are its indices."""
    import cv2
    import numpy as np
    from test_io import write_palette_png

    from covidseg.data.synthetic import generate

    data = generate(tmp_path / "labelmaps", cases=6, slices=2, size=64, seed=3)
    for path in sorted((data / "masks").glob("*.png")):
        mask = (cv2.imread(str(path), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8)
        mask[:, 32:] *= 2  # lesion on the right half is "consolidation"
        write_palette_png(path, mask) if mode == "P" else cv2.imwrite(str(path), mask)
    with pytest.raises(SystemExit) as exit_:
        _fit(data, tmp_path / "runs", "--trainer.max_epochs", "1")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and ".png" in err
    assert 'have label values {0, 1, 2}' in err and '"[1, 2]"' in err and "Traceback" not in err
    results = _fit(data, tmp_path / "runs", "--trainer.max_epochs", "1", "--data.lesion_labels", "[1, 2]")
    assert results["counts"]["lesion_pixels"] > 0  # both labels count as lesion in the report


def test_last_checkpoint_is_the_final_epoch_not_the_best(tiny_data, tmp_path):
    """``last.ckpt`` holds the last epoch even when an earlier epoch was the best (cross-validation
    scores it as "no selection on the validation fold"). The monitor ``epoch`` in ``min`` mode
    makes epoch 0 the best for sure; Lightning 2.6's ``save_last`` left ``last.ckpt`` there."""
    _fit(tiny_data, tmp_path, "--trainer.max_epochs", "3", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min", "--early_stopping.patience", "9", "--test", "false")
    run = tmp_path / "covidseg" / "version_0"
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == 0 and last["epoch"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # resuming continues the run's own files: no best-v1.ckpt / last-v1.ckpt beside them
    _fit(tiny_data, tmp_path, "--trainer.max_epochs", "4", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min", "--early_stopping.patience", "9",
         "--test", "false", "--ckpt_path", "last")  # fmt: skip
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


def test_validation_off_trains_to_the_end_without_monitor(tiny_data, tmp_path):
    """``--trainer.limit_val_batches 0`` (cross-validation folds, scored afterwards): no early
    stopping on a metric that never comes, and the checkpoints are the final epoch's."""
    _fit(tiny_data, tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0", "--test", "false")
    run = tmp_path / "covidseg" / "version_0"
    for name in ("best.ckpt", "last.ckpt"):
        assert torch.load(run / "checkpoints" / name, weights_only=True)["epoch"] == 1


def test_lung_label_maps_train_and_bad_lung_masks_stop_with_one_line(tmp_path, capsys):
    """Lung masks as lung tools write them (left 1 / right 2) are lungs; a lossy lung mask is
    named before training (exit 2), not a MaskLabelError traceback in a DataLoader worker."""
    import cv2
    import numpy as np

    from covidseg.data.datamodule import CTDataModule
    from covidseg.data.synthetic import generate

    data = generate(tmp_path / "d", cases=6, slices=2, size=64, seed=5)
    lungs = sorted((data / "lungs").glob("*.png"))
    for path in lungs:
        lung = (cv2.imread(str(path), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8)
        lung[:, 32:] *= 2
        cv2.imwrite(str(path), lung)
    dm = CTDataModule(str(data), image_size=64, lung_masks=True, num_workers=0)
    dm.setup("fit")
    item = dm.datasets["val"][0]
    truth = cv2.imread(str(data / "lungs" / __import__("pathlib").Path(dm.datasets["val"].samples[0].lung_mask).name), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(truth).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(item["lung_mask"][0].numpy(), (truth > 0).astype(np.float32))
    # lung_labels say otherwise: only the right lung (2)
    right = CTDataModule(str(data), image_size=64, lung_masks=True, lung_labels=[2], num_workers=0)
    right.setup("fit")
    np.testing.assert_array_equal(right.datasets["val"][0]["lung_mask"][0].numpy(), (truth == 2).astype(np.float32))

    blurred = cv2.GaussianBlur((cv2.imread(str(lungs[0]), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8) * 255, (9, 9), 3)
    cv2.imwrite(str(lungs[0]), blurred)  # anti-aliased/interpolated: grey levels
    with pytest.raises(SystemExit) as exit_:
        _fit(data, tmp_path / "runs", "--trainer.max_epochs", "1", "--data.lung_masks", "true")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"{lungs[0]}: lung mask holds" in err and "grey levels" in err


def test_report_on_the_validation_split_keeps_the_training_curves(tiny_data, tmp_path):
    """Without a test split fit's report scores the validation split; its scalars are
    report_val/*, not extra points on the val/* curves of the same names."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(tiny_data, tmp_path, "--trainer.max_epochs", "1", "--data.test_fraction", "0")
    ea = EventAccumulator(str(tmp_path / "covidseg" / "version_0"))
    ea.Reload()
    assert len(ea.Scalars("val/dice_image")) == 1  # the one epoch
    assert "report_val/dice_image" in ea.Tags()["scalars"]


def test_no_logger_trains_and_says_where_the_files_are(tiny_data, tmp_path, capsys, caplog, monkeypatch):
    """Issue 31, item 21: --trainer.logger false died on the learning-rate monitor."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        main(["--data.root", str(tiny_data), "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "root"), "--trainer.max_epochs", "1", "--test", "false"]
             + TINY_MODEL + FAST_TRAINER)  # fmt: skip
    out = capsys.readouterr().out + caplog.text
    assert "no logger (--trainer.logger false)" in out and "tensorboard --logdir" not in out
    assert (tmp_path / "root" / "checkpoints" / "last.ckpt").is_file() and not list(tmp_path.rglob("events.out.tfevents.*"))


def test_last_checkpoint_does_not_log_weights_only_every_epoch(tiny_data, tmp_path, capsys, caplog):
    """Issue 31, item 19: Lightning logged "`weights_only` was not set" once per epoch."""
    with caplog.at_level(logging.INFO):
        _fit(tiny_data, tmp_path, "--trainer.max_epochs", "2", "--test", "false")
    assert "weights_only" not in capsys.readouterr().err + caplog.text


def test_resume_with_more_epochs_does_not_rewarm_the_learning_rate(tiny_data, tmp_path, caplog):
    """Issue 31, item 4: a 2-epoch cosine run resumed to 5 epochs climbed back towards lr
    (T_max restored from the checkpoint); it must keep decreasing from where it stopped."""
    _fit(tiny_data, tmp_path, "--trainer.max_epochs", "2", "--test", "false", "--model.lr", "0.01")
    run = tmp_path / "covidseg" / "version_0"
    with caplog.at_level(logging.INFO):
        _fit(tiny_data, tmp_path, "--trainer.max_epochs", "5", "--ckpt_path", "last", "--test", "false", "--model.lr", "0.01")
    assert "no re-warm" in caplog.text
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 4
    ea = EventAccumulator(str(run))
    ea.Reload()
    lrs = [e.value for e in sorted(ea.Scalars("lr-AdamW"), key=lambda e: e.step)]
    assert len(lrs) >= 5 and all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs  # never up
    assert lrs[-1] < lrs[1]
