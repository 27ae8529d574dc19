"""Shared fixtures: tiny generated data on disk and one tiny trained checkpoint per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from covidseg.data.synthetic import generate  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# A small, fast network for tests: 3-level U-Net on 64 px inputs.
TINY_MODEL = ["--model.encoder_depth", "3", "--model.decoder_channels", "[32, 16, 8]", "--data.image_size", "64"]
FAST_TRAINER = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--data.num_workers", "0"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COVIDSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A manifest-layout synthetic set: 8 cases x 4 slices, 80 px (not the model's 64)."""
    return generate(tmp_path_factory.mktemp("tiny") / "data", cases=8, slices=4, size=80)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """Run directory of a 2-epoch fit on ``tiny_data`` (``checkpoints/best.ckpt`` inside)."""
    from covidseg.fit import main

    out = tmp_path_factory.mktemp("run")
    main(
        ["--data.root", str(tiny_data), "--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(out)]
        + TINY_MODEL
        + FAST_TRAINER
    )
    (run,) = (out / "covidseg").glob("version_*")
    return run


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def lung_ckpt(tiny_data, tmp_path_factory) -> Path:
    """A 2-epoch model with a lung output trained on ``tiny_data`` (which has lung masks)."""
    from covidseg.fit import main

    out = tmp_path_factory.mktemp("lungrun")
    main(["--data.root", str(tiny_data), "--data.lung_masks", "true", "--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(out)]
         + TINY_MODEL + FAST_TRAINER)  # fmt: skip
    return out / "covidseg" / "version_0" / "checkpoints" / "best.ckpt"
