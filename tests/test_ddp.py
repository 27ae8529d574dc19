"""DDP with 2 CPU processes (gloo): synced metrics equal a 1-process run on the same model."""

import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from covidseg.datamodule import CTDataModule
from covidseg.inference import load_checkpoint, model_from_checkpoint
from covidseg.synthetic import generate
from conftest import FAST_TRAINER, TINY_MODEL


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_processes_match_single_process(tmp_path):
    # 9 cases x 3 slices; test_fraction 0.1 -> one case of 3 slices: an odd count that a
    # padding DistributedSampler would split 2+2 and count one slice twice.
    data = generate(tmp_path / "data", cases=9, slices=3, size=64)
    cmd = [sys.executable, "-m", "covidseg.fit", "--data.root", str(data), "--data.test_fraction", "0.1", "--data.batch_size", "2",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1",
           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")] + TINY_MODEL + FAST_TRAINER
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "covidseg" / "version_0"
    ddp = json.loads((run / "test_metrics.json").read_text())
    assert proc.stdout.count("Test metrics (best checkpoint)") == 1  # printed by rank 0 only

    ckpt = load_checkpoint(ddp["checkpoint"])
    model = model_from_checkpoint(ckpt)
    dm = CTDataModule(str(data), image_size=64, batch_size=2, num_workers=0, split_file=str(run / "splits.csv"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    single = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert len(dm.datasets["test"]) == 3
    for key in ("test/dice", "test/iou", "test/precision", "test/recall", "test/specificity", "test/accuracy", "test/auroc", "test/dice_image"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
    # the Dice part of the loss is computed per batch, and ranks batch the slices differently
    assert ddp["test/loss"] == pytest.approx(single["test/loss"], abs=1e-2)
