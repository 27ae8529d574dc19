"""GPU only: training images/s by precision and size, host syncs per step, pinned copies, and
DDP scaling (a ``--ddp_probe`` subprocess per device count)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from bench.common import (
    Clock,
    StepTimer,
    failure,
    in_memory_loader,
    make_model,
    make_optimizer,
    median,
    preload_batches,
    quiet_lightning,
    tail,
    trainer_kwargs,
)
from covidseg.data.synthetic import generate

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmark.py"


def lightning_images_per_s(args, device, batches, size: int, precision: str) -> tuple[float, float]:
    """(images/s, peak GPU MiB) of a Lightning-only run at ``size`` and ``precision``."""
    clock = Clock(device)
    pl.seed_everything(0, verbose=False)
    model = make_model(args, size)
    timer = StepTimer(clock)
    total = args.warmup + args.steps + 1
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = pl.Trainer(**trainer_kwargs(device, total, [timer], precision))
    trainer.fit(model, train_dataloaders=in_memory_loader(batches, total))
    peak = torch.cuda.max_memory_allocated() / 2**20
    return len(batches[0]["image"]) / median(timer.periods(args.warmup)), peak


def bench_gpu(args, device: torch.device, data_dir: Path, work: Path, failures: dict[str, str]) -> tuple[dict, list[str]]:
    """GPU-only figures. Each part is guarded: a failure is recorded in ``failures`` (figure
    -> error), not a lost run."""
    out: dict = {}
    notes: list[str] = []

    def guarded(what: str, fn) -> None:
        try:
            fn()
        except Exception as err:  # record and go on with the other figures
            failures[what] = failure(err)

    bf16 = torch.cuda.is_bf16_supported()
    if not bf16:
        notes.append("this GPU has no bf16: bf16-mixed figures skipped")
    for size in sorted({128, 256, args.image_size}):
        data = data_dir if size <= args.data_size else generate(work / f"data{size}", cases=12, slices=8, size=size)
        batches = preload_batches(data, size, args.batch_size, 4)
        for tag, precision in (("fp32", "32-true"), ("bf16", "bf16-mixed")):
            if tag == "bf16" and not bf16:
                continue

            def one(size=size, tag=tag, precision=precision, batches=batches) -> None:
                ips, peak = lightning_images_per_s(args, device, batches, size, precision)
                out[f"gpu_train_images_per_s_{tag}_{size}px"] = ips
                out[f"gpu_train_peak_mib_{tag}_{size}px"] = peak
                if tag == "fp32" and size == args.image_size:
                    out["train_peak_gpu_mib"] = peak

            guarded(f"GPU training {tag} {size}px", one)
        if size == args.image_size:
            guarded("host-sync count", lambda batches=batches: out.update(count_host_syncs(args, device, batches)))
            guarded("pinned-memory copy", lambda batches=batches: out.update(bench_h2d(device, batches[0])))
    n = torch.cuda.device_count()
    if n < 2:
        notes.append(f"DDP scaling skipped: {n} GPU visible (needs 2+)")
    else:

        def ddp() -> None:
            one = run_ddp_probe(args, 1, work)
            many = run_ddp_probe(args, n, work)
            out.update({"ddp_devices": n, "ddp_images_per_s_1": one, f"ddp_images_per_s_{n}": many, "ddp_scaling_efficiency": many / (n * one)})

        guarded("DDP scaling", ddp)
    return out, notes


def count_host_syncs(args, device: torch.device, batches: list[dict]) -> dict:
    """Device->host synchronisations per training step (``torch.cuda.set_sync_debug_mode``),
    between ``on_train_batch_start`` and ``on_train_batch_end`` of Lightning, and in a plain step."""

    def syncs(records, start: int = 0) -> int:
        return sum("synchroniz" in str(w.message) for w in records[start:])

    class SyncCounter(pl.Callback):
        def __init__(self, records):
            self.records, self.counts, self.start = records, [], 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = len(self.records)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.counts.append(syncs(self.records, self.start))

    pl.seed_everything(0, verbose=False)
    model = make_model(args)
    plain = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(plain)
    plain_counts = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            counter = SyncCounter(records)
            pl.Trainer(**trainer_kwargs(device, 4, [counter])).fit(model, train_dataloaders=in_memory_loader(batches, 4))
            for batch in batches[:3]:
                start = len(records)
                x, y = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
                loss = plain.loss(plain(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                plain_counts.append(syncs(records, start))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return {
        "gpu_host_syncs_per_step_lightning": median(counter.counts[1:] or counter.counts),
        "gpu_host_syncs_per_step_plain": median(plain_counts[1:] or plain_counts),
    }


def bench_h2d(device: torch.device, batch: dict, reps: int = 50) -> dict:
    """Host->device copy of one training batch (image + mask) from pageable and pinned memory."""
    clock = Clock(device)
    pageable = [batch["image"].contiguous(), batch["mask"].contiguous()]
    pinned = [t.pin_memory() for t in pageable]
    out = {}
    for name, tensors in (("pageable", pageable), ("pinned", pinned)):
        times = []
        for i in range(reps + 5):
            t0 = clock()
            for t in tensors:
                t.to(device, non_blocking=True)
            dt = clock() - t0
            if i >= 5:
                times.append(dt)
        out[f"gpu_h2d_batch_ms_{name}"] = median(times) * 1e3
    return out


def run_ddp_probe(args, devices: int, work: Path) -> float:
    """Global images/s of a DDP run on ``devices`` devices, in a fresh process (Lightning's DDP
    launcher re-runs the command line for the other ranks)."""
    out = work / f"ddp{devices}.json"
    cmd = [sys.executable, str(BENCHMARK), "--ddp_probe", str(devices), "--ddp_out", str(out),
           "--device", args.device, "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--tiny"] if args.tiny else [])  # fmt: skip
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PL_DISABLE_FORK": "1"}, timeout=1800)
    if proc.returncode != 0 or not out.is_file():
        # An ordinary exception: the caller's guard records it and the other figures survive.
        raise RuntimeError(f"DDP probe on {devices} device(s) failed (exit {proc.returncode}): {tail(proc.stderr)}")
    return json.loads(out.read_text())["images_per_s"]


def ddp_probe(args) -> None:
    """Entry point of one DDP rank (``--ddp-probe N``): synthetic in-memory batches, so only the
    training step and the gradient all-reduce are measured."""
    quiet_lightning()
    device = torch.device(args.device)
    n = args.ddp_probe
    g = torch.Generator().manual_seed(0)
    s, b = args.image_size, args.batch_size
    batches = [{"image": torch.rand(b, 1, s, s, generator=g), "mask": (torch.rand(b, 1, s, s, generator=g) > 0.8).float()} for _ in range(4)]
    total = args.warmup + args.steps + 1
    pl.seed_everything(0, verbose=False)
    model = make_model(args)
    timer = StepTimer(Clock(device))
    kw = trainer_kwargs(device, total, [timer])
    kw.update(devices=n, strategy="ddp" if n > 1 else "auto")
    trainer = pl.Trainer(**kw)
    trainer.fit(model, train_dataloaders=in_memory_loader(batches, total * n))  # DistributedSampler splits it
    if trainer.is_global_zero:
        step = median(timer.periods(args.warmup))
        Path(args.ddp_out).write_text(json.dumps({"devices": n, "step_s": step, "images_per_s": n * b / step}))
