"""The committed configs parse, and scripts/reproduce.sh runs end to end on generated data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from covidseg.fit import build_cli
from covidseg.synthetic import generate
from conftest import FAST_TRAINER, TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_cli(["--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


def test_reproduce_trains_on_every_case_and_prints_the_checkpoint(tmp_path):
    data = tmp_path / "data"
    generate(data / "medseg50", cases=4, slices=1, size=72, seed=1)
    generate(data / "zenodo20", cases=3, slices=4, size=64, seed=2)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    flags = ["--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *TINY_MODEL, *FAST_TRAINER]
    proc = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh"), str(data), *flags], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = Path(proc.stdout.strip().splitlines()[-1])
    assert ckpt == tmp_path / "runs" / "reference" / "version_0" / "checkpoints" / "best.ckpt" and ckpt.is_file()
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    recipe = yaml.safe_load((REPO / "configs" / "reference.yaml").read_text())["model"]
    for key in ("threshold", "tta", "dice_per_image"):  # the cross-validated recipe and inference settings travel
        assert hp[key] == recipe[key], key
    splits = (ckpt.parents[1] / "splits.csv").read_text().splitlines()[1:]
    assert len(splits) == 16 and all(row.endswith(",train") for row in splits)  # every case trains
    assert "no validation split: training on every case" in proc.stderr
