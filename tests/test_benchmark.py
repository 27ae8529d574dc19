"""scripts/benchmark.py --tiny runs end to end and writes every figure (no timing assertions)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_tiny_benchmark_writes_all_figures(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Lightning / plain time per step" in proc.stdout and "onnxruntime" in proc.stdout

    keys = runpy.run_path(str(SCRIPT), run_name="benchmark_keys")  # the script's own key lists
    result = json.loads(out.read_text())
    for key in keys["REQUIRED_KEYS"]:
        value = result.get(key)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)
    for key in keys["GPU_KEYS"]:  # measured on a GPU, null with a note on CPU
        assert key in result
        if result["machine"]["device"] == "cpu":
            assert result[key] is None
    assert result["settings"]["tiny"] is True and result["settings"]["device"] == "cpu"
    machine = result["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1 and machine["torch"] and machine["device_name"]
    assert result["onnx_max_abs_diff"] <= 1e-3
    steps = result["settings"]["steps"]
    assert len(result["step_times_s"]["lightning"]) == len(result["step_times_s"]["plain"]) == steps
