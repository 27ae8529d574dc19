"""The committed configs parse, and scripts/reproduce.sh runs end to end on generated data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST_TRAINER, TINY_MODEL

from covidseg.data.synthetic import generate
from covidseg.fit import build_cli

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
    assert hp["lung_output"] is True  # predict --lungs works with the reference
    splits = (ckpt.parents[1] / "splits.csv").read_text().splitlines()[1:]
    assert len(splits) == 16 and all(row.endswith(",train") for row in splits)  # every case trains
    assert "no validation split: training on every case" in proc.stderr


def _two_sources(root: Path) -> Path:
    generate(root / "medseg50", cases=5, slices=1, size=72, seed=1)
    generate(root / "zenodo20", cases=5, slices=2, size=64, seed=2)
    return root


@pytest.mark.slow
def test_crossval_writes_one_result_file_per_fold_and_skips_finished_folds(tmp_path):
    data = _two_sources(tmp_path / "data")
    results = tmp_path / "experiments"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CV_RESULTS": str(results)}
    flags = ["--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *TINY_MODEL, *FAST_TRAINER]
    cv = lambda folds: subprocess.run(["bash", str(REPO / "scripts" / "crossval.sh"), "t", str(data), "2", folds, *flags],  # noqa: E731
                                      capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    proc = cv("1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((results / "t" / "fold-1.json").read_text())
    assert record["fold"] == 1 and record["num_folds"] == 2 and record["epochs"] == 2  # the final epoch, not a selected one
    assert record["command"].startswith("bash scripts/crossval.sh t DATA_DIR 2 1 --trainer.max_epochs 2")
    for mode in ("plain", "tta"):
        assert set(record["scores"][mode]["by_threshold"]) == {"0.3", "0.4", "0.5", "0.6", "0.7"}
        assert set(record["scores"][mode]["at_0.5"]) == {"medseg50", "zenodo20"}
    assert not (tmp_path / "runs" / "cv-t-fold0").exists()
    proc = cv("0 1")  # fold 1 is finished: only fold 0 trains
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fold-1.json exists, fold 1 skipped" in proc.stdout
    assert not (tmp_path / "runs" / "cv-t-fold1" / "version_1").exists() and (results / "t" / "fold-0.json").is_file()
    summary = subprocess.run([sys.executable, str(REPO / "scripts" / "cv_summary.py"), "t", "--results", str(results)], capture_output=True, text=True, env=env)
    assert summary.returncode == 0, summary.stderr
    assert "## t: folds [0, 1] of 2, 2 epochs" in summary.stdout


def test_crossval_stops_on_a_failed_fold(tmp_path):
    data = _two_sources(tmp_path / "data")
    # results in tmp_path, not the checkout's docs/experiments (it left an empty t/ there)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CV_RESULTS": str(tmp_path / "results")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "crossval.sh"), "t", str(data), "2", "0 1", "--model.lr", "not-a-number"],
                          capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    assert proc.returncode != 0
    assert "cv-t-fold1" not in proc.stderr  # stopped at the first fold


def test_console_command_and_one_grammar():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "covidseg", *a], capture_output=True, text=True, env=env)  # noqa: E731
    top = run("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("fit", "evaluate", "predict", "export"))
    for command in ("evaluate", "predict", "export"):
        help_ = run(command, "--help").stdout
        for flag in ("--config", "--print_config", "--ckpt"):
            assert flag in help_, (command, flag)
    for command in ("evaluate", "predict"):
        help_ = run(command, "--help").stdout
        for flag in ("--batch_size", "--threshold", "--tta", "--device"):
            assert flag in help_, (command, flag)
    printed = run("predict", "--print_config", "--ckpt", "m.ckpt", "--input", "x.png", "--output", "out")
    assert printed.returncode == 0 and yaml.safe_load(printed.stdout)["ckpt"] == "m.ckpt"
    bad = run("unknown")
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_threshold_has_one_rule(command, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"covidseg.{command}").main
    for value in ("0", "1", "1.5"):
        args = ["--ckpt", "m.ckpt", "--output", str(tmp_path), "--threshold", value] + (["--input", "x.png"] if command == "predict" else [])
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        assert f"--threshold {float(value)}: expected a probability in (0, 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_smoke_script_runs_on_cpu(tmp_path):
    """scripts/gpu_smoke.sh --cpu: the GPU smoke steps on the CPU, so the script cannot rot."""
    import json

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_smoke.sh"), "--cpu", "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    result = json.loads((tmp_path / "gpu_smoke.json").read_text())
    failed = [s for s in result["steps"] if s["exit_code"] != 0 or not s.get("agrees", True)]
    assert proc.returncode == 0 and result["passed"], failed or proc.stderr[-3000:]
    names = [s["step"] for s in result["steps"]]
    assert names[:3] == ["demo data", "fit bf16-mixed ddp", "resume"]
    assert {"evaluate on cpu", "predict ckpt TTA", "export", "predict onnx TTA"} <= set(names)
    onnx = next(s for s in result["steps"] if s["step"] == "predict onnx TTA")
    assert onnx["max_abs_prob_diff_vs_ckpt"] <= 1e-3
