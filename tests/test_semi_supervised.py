"""Semi-supervised training (issue 32): unlabelled slices through --data.unlabelled, the mean
teacher's consistency loss, and no leak: a fold never trains on the unlabelled slices of the
patients it holds out."""

from __future__ import annotations

import csv
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAINER, TINY_MODEL
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from covidseg.data.datamodule import CTDataModule
from covidseg.data.unlabelled import read_unlabelled
from covidseg.errors import DataError
from covidseg.model.mean_teacher import MeanTeacher, rampup


def _unlabelled(tiny_data: Path, out: Path, extra_case: bool = True) -> Path:
    """An unlabelled folder beside the labelled one: the labelled patients' slices again
    (another export, as Inf-Net's unlabelled Zenodo slices are) plus one unknown patient."""
    (out / "images").mkdir(parents=True)
    rows = []
    with open(tiny_data / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            name = Path(r["image"]).name
            shutil.copy(tiny_data / r["image"], out / "images" / name)
            rows.append((f"images/{name}", r["case_id"]))
    if extra_case:
        shutil.copy(out / rows[0][0], out / "images" / "stranger.png")
        rows.append(("images/stranger.png", "nobody_labelled"))
    with open(out / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "case_id"), *rows])
    return out


def test_a_fold_never_trains_on_its_held_out_patients_unlabelled_slices(tiny_data, tmp_path):
    folder = _unlabelled(tiny_data, tmp_path / "u")
    for fold in range(3):
        dm = CTDataModule(str(tiny_data), image_size=64, num_folds=3, fold=fold, test_fraction=0.2, unlabelled=str(folder), num_workers=0)
        dm.setup("fit")
        held_out = {s.case_id for s in dm.validated().samples if dm.split[s.image] != "train"}
        used = {s.case_id for s in dm.datasets["unlabelled"].slices}
        assert held_out and not used & held_out, fold  # no validation or test patient's slices
        train_cases = {s.case_id for s in dm.samples("train")}
        assert used == train_cases | {"nobody_labelled"}  # every training patient's, and the unknown patient's
        assert sum(1 for s in read_unlabelled(folder) if s.case_id in held_out) > 0


def test_with_several_roots_a_fold_still_holds_out_its_patients_unlabelled_slices(tiny_data, tmp_path, caplog):
    """Two data roots prefix the labelled case ids with their source (``tiny/case_1``) while the
    unlabelled manifest spells them bare, as its source's manifest does (the CV setting:
    medseg50 + zenodo20 with Zenodo's unlabelled slices). Before the fix nothing was held out."""
    from covidseg.data.synthetic import generate

    other = generate(tmp_path / "other", cases=3, slices=2, size=64, seed=5)
    folder = _unlabelled(tiny_data, tmp_path / "u")
    for fold in range(3):
        dm = CTDataModule([str(tiny_data), str(other)], image_size=64, num_folds=3, fold=fold, test_fraction=0, unlabelled=str(folder), num_workers=0)
        with caplog.at_level(logging.INFO):
            dm.setup("fit")
        source = dm.validated().samples[0].source
        held_out = {s.case_id.removeprefix(f"{source}/") for s in dm.validated().samples if dm.split[s.image] != "train" and s.source == source}
        used = {s.case_id for s in dm.datasets["unlabelled"].slices}
        assert held_out and not used & held_out, fold
        assert used == {s.case_id.removeprefix(f"{source}/") for s in dm.samples("train") if s.source == source} | {"nobody_labelled"}
    import re

    known, total = map(int, re.search(r"(\d+) of the (\d+) unlabelled case ids are labelled cases", caplog.text).groups())
    assert known == total - 1  # all but the stranger
    assert "none of its" not in caplog.text


def test_unlabelled_case_ids_the_labelled_data_does_not_know_are_warned_about(tiny_data, tmp_path):
    folder = _unlabelled(tiny_data, tmp_path / "u")
    rows = (folder / "manifest.csv").read_text().splitlines()
    (folder / "manifest.csv").write_text("\n".join([rows[0]] + [f"{r.split(',')[0]},patient-{i}" for i, r in enumerate(rows[1:])]) + "\n")
    dm = CTDataModule(str(tiny_data), image_size=64, num_folds=3, fold=0, unlabelled=str(folder), num_workers=0)
    with pytest.warns(UserWarning, match="none of its .* case ids is a labelled case"):
        dm.setup("fit")


def test_unlabelled_batches_ride_along_one_epoch_is_the_labelled_set(tiny_data, tmp_path):
    dm = CTDataModule(str(tiny_data), image_size=64, batch_size=4, unlabelled=str(_unlabelled(tiny_data, tmp_path / "u")), num_workers=0)
    dm.setup("fit")
    batches = list(iter(dm.train_dataloader()))
    assert len(batches) == math.ceil(len(dm.datasets["train"]) / 4)
    batch = batches[0][0] if isinstance(batches[0], tuple) else batches[0]
    assert set(batch) == {"labelled", "unlabelled"} and batch["unlabelled"]["image"].shape == (4, 1, 64, 64)
    assert "mask" not in batch["unlabelled"]


def test_unlabelled_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        read_unlabelled(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        read_unlabelled(tmp_path / "empty")


def test_mean_teacher_is_an_ema_and_its_ramp():
    net = torch.nn.Conv2d(1, 1, 1)
    mt = MeanTeacher(net, decay=0.9, noise=0.0)
    before = mt.teacher.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    mt.update(net)
    assert torch.allclose(mt.teacher.weight, 0.9 * before + 0.1 * net.weight)
    assert not any(p.requires_grad for p in mt.teacher.parameters())
    x = torch.rand(2, 1, 8, 8)
    assert mt.consistency(mt.teacher, x).item() == pytest.approx(0.0, abs=1e-12)  # the same net, no noise: nothing to pull
    assert mt.consistency(net, x).item() > 0
    assert rampup(0, 5) == pytest.approx(math.exp(-5)) and rampup(5, 5) == 1.0 and rampup(2, 0) == 1.0
    with pytest.raises(ValueError, match="ema_decay"):
        MeanTeacher(net, decay=1.0)


def test_fit_with_unlabelled_slices_logs_the_consistency_loss(tiny_data, tmp_path, caplog):
    from covidseg.fit import main

    folder = _unlabelled(tiny_data, tmp_path / "u")
    with caplog.at_level(logging.INFO):
        main(["--data.root", str(tiny_data), "--data.unlabelled", str(folder), "--trainer.max_epochs", "2", "--model.consistency_rampup", "1",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--test", "false"] + TINY_MODEL + FAST_TRAINER)  # fmt: skip
    assert "unlabelled: " in caplog.text and "held out" in caplog.text
    (run,) = (tmp_path / "runs" / "covidseg").glob("version_*")
    ea = EventAccumulator(str(run))
    ea.Reload()
    values = [e.value for e in ea.Scalars("train/consistency")]
    assert len(values) == 2 and all(v > 0 for v in values)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any("teacher" in k for k in ckpt["state_dict"])  # the student is the model
    assert ckpt["datamodule_hyper_parameters"]["unlabelled"] == str(folder)
