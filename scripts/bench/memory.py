"""Memory: peak RSS of a short ``python -m covidseg.fit`` run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import TINY_FIT_FLAGS, tail

RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:])\n"
    "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(r.returncode)\n"
)


def bench_fit_rss(args, device: torch.device, data_dir: Path, work: Path) -> dict:
    """Peak RSS of a short default ``python -m covidseg.fit`` (largest single process of its tree;
    a small wrapper process reaps it, so children of this benchmark do not count)."""
    batches = 2 if args.tiny else 3
    cmd = [
        sys.executable, "-m", "covidseg.fit",
        "--data.root", str(data_dir), "--data.image_size", str(args.image_size), "--data.batch_size", str(args.batch_size),
        "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu", "--trainer.devices", "1",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(batches), "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(work / "runs"), "--test", "false",
    ] + (TINY_FIT_FLAGS if args.tiny else [])  # fmt: skip
    t0 = time.perf_counter()
    fit_mib = peak_rss_mib(cmd, "the covidseg.fit memory run", args.threads)
    wall = time.perf_counter() - t0
    out = {"train_peak_rss_mib": fit_mib, "fit_rss_run_train_batches": batches, "fit_rss_run_wall_s": wall}
    # Baseline: an interpreter that only imports what the fit imports (skipped in --tiny: time).
    out["import_only_peak_rss_mib"] = None if args.tiny else peak_rss_mib([sys.executable, "-c", "import covidseg.fit"], "the import baseline")
    return out


def peak_rss_mib(cmd: list[str], what: str, threads: int | None = None) -> float:
    """Peak RSS in MiB of the largest process in the tree of ``cmd`` (run under a wrapper)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, env=env)
    found = re.search(r"MAXRSS_KIB (\d+)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail(proc.stderr)}")
    return int(found.group(1)) / 1024
