"""Exercise every GPU path of covidseg once, in a few minutes, and record what happened.

    bash scripts/gpu_smoke.sh [--cpu] [--out DIR]      (DIR defaults to $OUT, else ./gpu_smoke)

Steps (each a real ``covidseg`` command in a subprocess; on ``--cpu`` the same steps, smaller,
with bf16-mixed in place of 16-mixed, which CPUs do not run, and without the two that the test
suite runs elsewhere: the bf16-mixed fit and the tiny benchmark): generate demo data; fit with
bf16-mixed; fit with 16-mixed and ``strategy ddp`` on one device; resume that run for one more
epoch; evaluate the best checkpoint on the device and on the CPU (they must agree); predict on
images and on a generated NIfTI volume with TTA; export to ONNX and predict with it (it must
agree with the checkpoint); ``scripts/benchmark.py --tiny`` on the device. Writes
``DIR/gpu_smoke.json``: per step the command, exit code, seconds and key figures, and a
``passed`` flag. Exits 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


class Smoke:
    def __init__(self, out: Path):
        self.out = out
        self.steps: list[dict] = []
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PL_DISABLE_FORK": "1"}

    def run(self, name: str, args: list[str], timeout: int = 900) -> dict:
        cmd = [sys.executable, *args]
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=REPO, timeout=timeout)
            code, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            code, tail = 124, f"timed out after {timeout} s"
        step = {"step": name, "command": " ".join(["python", *args]), "exit_code": code, "seconds": round(time.monotonic() - start, 1)}
        if code != 0:
            step["output_tail"] = tail
        self.steps.append(step)
        print(f"{name:<28} exit {code}  {step['seconds']:>6.1f} s", flush=True)
        return step

    def write(self, device: str) -> bool:
        passed = all(s["exit_code"] == 0 and s.get("agrees", True) for s in self.steps)
        info = {"device": device, "passed": passed, "steps": self.steps}
        try:
            import torch

            info["torch"] = torch.__version__
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        except ImportError:
            pass
        (self.out / "gpu_smoke.json").write_text(json.dumps(info, indent=2) + "\n")
        return passed


def metrics_of(report: Path) -> dict:
    m = json.loads((report / "metrics.json").read_text())
    return {"dice_image": m["per_image_mean"]["dice"], "dice": m["global"]["dice"], "auroc": m["global"]["auroc"]}


def onnx_has_cuda() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def write_volume(path: Path, size: int, slices: int) -> None:
    """A small chest phantom in HU (``covidseg.data.phantom.write_chest``) as NIfTI."""
    from covidseg.data.phantom import write_chest

    write_chest(path, slices, size, spacing=(2.5, 0.8, 0.8))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="run every step on the CPU, small (what the test suite runs)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_smoke", help="output folder (default $OUT, else ./gpu_smoke)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if a.cpu else "cuda"
    acc = "cpu" if a.cpu else "gpu"
    half = "bf16-mixed" if a.cpu else "16-mixed"
    size, epochs = (64, 1) if a.cpu else (128, 3)
    tiny = ["--model.encoder_depth", "3", "--model.decoder_channels", "[32, 16, 8]"] if a.cpu else []
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    data, runs = out / "data", out / "runs"
    s = Smoke(out)

    s.run("demo data", ["-m", "covidseg.data.synthetic", str(data), "--cases", "8" if a.cpu else "30", "--slices", "4" if a.cpu else "8", "--size", str(2 * size)])
    fit = ["-m", "covidseg", "fit", "--data.root", str(data), "--data.image_size", str(size), "--trainer.accelerator", acc, "--trainer.devices", "1",
           "--trainer.logger.init_args.save_dir", str(runs), *tiny, *quiet]  # fmt: skip
    if not a.cpu:  # on a CPU, tests/test_fit.py fits in bf16-mixed already
        s.run("fit bf16-mixed", [*fit, "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", str(epochs), "--trainer.logger.init_args.name", "bf16"])
    s.run(f"fit {half} ddp", [*fit, "--trainer.precision", half, "--trainer.strategy", "ddp", "--trainer.max_epochs", str(epochs),
                              "--trainer.logger.init_args.name", "ddp", "--model.tta", "true"])  # fmt: skip
    s.run("resume", [*fit, "--trainer.precision", half, "--trainer.strategy", "ddp", "--trainer.max_epochs", str(epochs + 1),
                     "--trainer.logger.init_args.name", "ddp", "--ckpt_path", "last", "--model.tta", "true"])  # fmt: skip
    best = runs / "ddp" / "version_0" / "checkpoints" / "best.ckpt"

    for dev in dict.fromkeys([device, "cpu"]):
        step = s.run(f"evaluate on {dev}", ["-m", "covidseg", "evaluate", "--ckpt", str(best), "--split", "test", "--output", str(out / f"eval_{dev}"), "--device", dev])
        if step["exit_code"] == 0:
            step["metrics"] = metrics_of(out / f"eval_{dev}")
    evals = [st for st in s.steps if st["step"].startswith("evaluate") and "metrics" in st]
    if len(evals) == 2:
        diff = max(abs(evals[0]["metrics"][k] - evals[1]["metrics"][k]) for k in ("dice_image", "dice", "auroc"))
        evals[0]["max_abs_diff_vs_cpu"] = diff
        evals[0]["agrees"] = diff <= 1e-3

    write_volume(out / "ct.nii.gz", 2 * size, 12)
    images = sorted((data / "images").iterdir())[:6]
    inputs = "[" + ", ".join(map(str, [*images, out / "ct.nii.gz"])) + "]"
    pred = ["-m", "covidseg", "predict", "--input", inputs, "--probabilities", "true", "--overwrite", "true"]
    s.run("predict ckpt TTA", [*pred, "--ckpt", str(best), "--output", str(out / "pred_ckpt"), "--tta", "true", "--device", device])
    s.run("export", ["-m", "covidseg", "export", "--ckpt", str(best), "--output", str(out / "model.onnx")])
    onnx_device = device if device == "cpu" or onnx_has_cuda() else "cpu"
    step = s.run("predict onnx TTA", [*pred, "--ckpt", str(out / "model.onnx"), "--output", str(out / "pred_onnx"), "--tta", "true", "--device", onnx_device])
    if onnx_device != device:
        step["note"] = "onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu not installed): ONNX predicted on the CPU"
    if step["exit_code"] == 0 and (out / "pred_ckpt").is_dir():
        diffs = [float(np.abs(np.load(f) - np.load(out / "pred_onnx" / f.name)).max()) for f in sorted((out / "pred_ckpt").glob("*.npy"))]
        step["max_abs_prob_diff_vs_ckpt"] = max(diffs) if diffs else None
        step["agrees"] = bool(diffs) and max(diffs) <= 1e-3
    if not a.cpu:  # on a CPU, tests/test_benchmark.py runs benchmark.py --tiny already
        step = s.run("benchmark --tiny", ["scripts/benchmark.py", "--tiny", "--device", device, "--json", str(out / "benchmark.json")])
        if step["exit_code"] == 0:
            bench = json.loads((out / "benchmark.json").read_text())
            step["figures"] = {k: v for k, v in bench.items() if isinstance(v, (int, float)) and ("per_s" in k or "syncs" in k)}
    passed = s.write(device)
    print(f"{'passed' if passed else 'FAILED'}: {out / 'gpu_smoke.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
