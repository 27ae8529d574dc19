"""scripts/benchmark.py --tiny runs end to end and writes every figure (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"

# Figures every run reports as positive numbers (the keys plus their components).
REQUIRED_KEYS = (
    "train_images_per_s_lightning",
    "train_images_per_s_plain",
    "lightning_step_s",
    "plain_step_s",
    "lightning_vs_plain_step_ratio",
    "train_metrics_ms_per_step",
    "lightning_excl_metrics_vs_plain_step_ratio",
    "loader_images_per_s",
    "loader_vs_step_throughput_ratio",
    "loader_epoch_start_s_persistent",
    "loader_epoch_start_s_fresh_workers",
    "infer_images_per_s_eager",
    "infer_images_per_s_eager_channels_last",
    "infer_images_per_s_tuned",
    "infer_images_per_s_onnx",
    "onnx_vs_eager_inference_ratio",
    "tuned_vs_eager_inference_ratio",
    "train_peak_rss_mib",
)
# Measured on a GPU; present as null (with a note) on CPU.
GPU_KEYS = (
    "train_peak_gpu_mib",
    "gpu_train_images_per_s_fp32_128px",
    "gpu_train_images_per_s_bf16_128px",
    "gpu_train_images_per_s_fp32_256px",
    "gpu_train_images_per_s_bf16_256px",
    "ddp_scaling_efficiency",
)


def test_tiny_benchmark_writes_all_figures(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Lightning / plain time per step" in proc.stdout and "onnxruntime" in proc.stdout

    result = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        value = result.get(key)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)
    for key in GPU_KEYS:  # measured on a GPU, null with a note on CPU
        assert key in result
        if result["machine"]["device"] == "cpu":
            assert result[key] is None
    assert any("GPU" in n for n in result["notes"])
    assert "import_only_peak_rss_mib" in result  # measured in full runs, null in --tiny
    assert result["settings"]["tiny"] is True and result["settings"]["device"] == "cpu"
    machine = result["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1 and machine["torch"] and machine["device_name"]
    assert result["onnx_max_abs_diff"] <= 1e-3
    assert result["failures"] == {}
    steps = result["settings"]["steps"]
    assert len(result["step_times_s"]["lightning"]) == len(result["step_times_s"]["plain"]) == steps


@pytest.fixture
def bench(monkeypatch):
    """The benchmark modules, in-process; the logging levels and warning filters its
    ``quiet_lightning`` sets for a script run are restored afterwards."""
    import logging
    import warnings

    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run as a script: scripts/ first
    import benchmark
    from bench import gpu

    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "covidseg")
    levels = {n: logging.getLogger(n).level for n in names}
    with warnings.catch_warnings():
        yield benchmark, gpu
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_failed_section_is_recorded_and_the_rest_still_runs(bench, monkeypatch, tmp_path):
    benchmark, _ = bench

    def broken_loader(args, data_dir):
        raise OSError("disk on fire")

    monkeypatch.setattr(benchmark, "bench_loader", broken_loader)
    out = tmp_path / "bench.json"
    res = benchmark.main(["--tiny", "--only", "training,loader", "--steps", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["failures"] == res["failures"] == {"loader": "OSError: disk on fire"}
    assert result["train_images_per_s_lightning"] > 0  # the training section still reports
    assert "loader_vs_step_throughput_ratio" not in result


def test_failed_ddp_probe_is_an_ordinary_exception(bench, monkeypatch, tmp_path):
    # SystemExit would escape the GPU section's `except Exception` guard and lose the whole run.
    benchmark, gpu = bench
    monkeypatch.setattr(gpu.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "Traceback ...\nNCCL error: boom"))
    with pytest.raises(RuntimeError, match=r"(?s)DDP probe on 2 device.*exit 1.*NCCL error: boom"):
        gpu.run_ddp_probe(benchmark.parse_args(["--tiny"]), 2, tmp_path)


def test_predict_speed_fast_mode(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_speed", SCRIPT.parent / "predict_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--fast", "--workdir", str(tmp_path), "--json", str(tmp_path / "speed.json")])
    assert json.loads((tmp_path / "speed.json").read_text()) == json.loads(json.dumps(out))
    runs = out["runs"]
    assert [(r["image_size"], r["tta"]) for r in runs] == [(32, False), (32, True), (64, False), (64, True)]
    assert all(r["seconds"] > 0 and r["slices_per_s"] > 0 for r in runs)
    assert "| 64 | ckpt | no | on |" in module.table(out)


def test_predict_speed_lungs_and_onnx(tmp_path):
    """The reference's way: a lung-output model predicted with --lungs, from the checkpoint and its ONNX export."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_speed", SCRIPT.parent / "predict_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--fast", "--sizes", "32", "--slices", "3", "--lungs", "--backends", "ckpt", "onnx", "--workdir", str(tmp_path)])
    assert [(r["backend"], r["tta"], r["lungs"]) for r in out["runs"]] == [("ckpt", False, True), ("ckpt", True, True), ("onnx", False, True), ("onnx", True, True)]
    assert (tmp_path / "out_32_onnx_tta" / "ct_lungs.nii.gz").is_file()


def test_predict_speed_times_a_given_model_at_its_own_size(tmp_path):
    """--ckpt: a trained (here: tiny, untrained) checkpoint is timed at the image size its card says."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_speed", SCRIPT.parent / "predict_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = module.make_checkpoint(tmp_path / "given.ckpt", 48, tiny=True, lungs=True)
    out = module.main(["--ckpt", str(ckpt), "--slices", "2", "--side", "64", "--lungs", "--workdir", str(tmp_path / "w")])
    assert [(r["image_size"], r["tta"]) for r in out["runs"]] == [(48, False), (48, True)]
    assert out["settings"]["model"] == str(ckpt) and not (tmp_path / "w" / "model_48.ckpt").exists()
