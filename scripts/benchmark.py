"""Performance benchmark: training step (Lightning vs plain PyTorch), input pipeline, inference
(eager / tuned / onnxruntime) and memory, on one model, one data set and one set of settings.

    python scripts/benchmark.py [--json OUT] [--device cpu|cuda] [--image-size 128]
        [--batch-size 16] [--steps N] [--warmup N] [--tiny]

Every timed figure is the median over ``--steps`` timed steps after ``--warmup`` untimed ones.

* Training: the same pre-loaded batches (real demo slices through the real preprocessing and
  augmentation, kept in memory, served by a ``num_workers=0`` DataLoader) feed two identical
  copies of ``LitUNet``: one through ``pl.Trainer`` (progress bar, logger, checkpointing and
  validation off; the module's own metric updates and ``self.log`` calls kept), one through a
  plain loop (forward, ``model.loss``, zero_grad, backward, the optimizer of
  ``configure_optimizers``). The two run interleaved step by step in one process (the plain
  step runs inside ``on_train_batch_end`` and its time is subtracted from the Lightning
  step), so load from other processes hits both alike. A Lightning step is the time between
  two ``on_train_batch_start`` calls: fetch, hooks, forward, metrics, backward, step. The
  ratio is the median over the adjacent (Lightning, plain) pairs. The module's metric work is
  also timed alone, as shipped and via ``update()`` without input validation.
* Input pipeline: ``CTDataModule.train_dataloader()`` over a synthetic demo set on disk
  (PNG decoding, resize, augmentation, ``default_num_workers()`` workers) iterated alone.
* Inference: batch ``--batch-size`` at the training size, numpy in -> probabilities out
  (host<->device copies included on GPU): eager fp32 (NCHW, ``no_grad``), the tuned PyTorch
  path (channels_last + ``inference_mode``; on GPU also bf16 autocast and ``torch.compile``,
  the fastest is reported) and onnxruntime on the model exported by ``covidseg.export``.
* Memory: peak RSS of a short ``python -m covidseg.fit`` subprocess (defaults, a few
  batches); on GPU also ``torch.cuda.max_memory_allocated`` of a training run.
* GPU only: fp32 and bf16-mixed training images/s at 128 and 256 px, device->host syncs per
  training step (``torch.cuda.set_sync_debug_mode``), a batch copy from pageable vs pinned
  memory, and DDP scaling efficiency when 2+ GPUs are visible (a ``--ddp-probe`` subprocess).

``--threads N`` pins torch and onnxruntime to N CPU threads (default: one per core). ``--tiny``
shrinks everything (32 px, 3-level U-Net, 3 steps, 1 thread) so the test suite can run it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from covidseg.datamodule import CTDataModule  # noqa: E402
from covidseg.model import LitUNet  # noqa: E402
from covidseg.synthetic import generate  # noqa: E402

TINY_MODEL = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
TINY_FIT_FLAGS = ["--model.encoder_depth", "3", "--model.decoder_channels", "[32, 16, 8]"]

# Keys that every run writes as positive numbers (the test checks them).
REQUIRED_KEYS = (
    "train_images_per_s_lightning",
    "train_images_per_s_plain",
    "lightning_step_s",
    "plain_step_s",
    "lightning_vs_plain_step_ratio",
    "train_metrics_ms_per_step",
    "train_metrics_ms_per_step_update_no_validation",
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
# Keys that are numbers on a GPU and null (with a note) on CPU.
GPU_KEYS = (
    "train_peak_gpu_mib",
    "gpu_train_images_per_s_fp32_128px",
    "gpu_train_images_per_s_bf16_128px",
    "gpu_train_images_per_s_fp32_256px",
    "gpu_train_images_per_s_bf16_256px",
    "ddp_scaling_efficiency",
)
TARGETS = {  # key: (comparison, threshold, applies on)
    "lightning_vs_plain_step_ratio": ("<=", 1.03, ("cpu", "cuda")),
    "loader_vs_step_throughput_ratio": (">=", 2.0, ("cpu", "cuda")),
    "onnx_vs_eager_inference_ratio": (">=", 1.5, ("cpu",)),
}


# -- small helpers ---------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[benchmark] {msg}", file=sys.stderr, flush=True)


def quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "covidseg"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def short(err: BaseException) -> str:
    text = str(err).strip()
    return f"{err.__class__.__name__}: {text.splitlines()[0][:160]}" if text else err.__class__.__name__


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


class Clock:
    """``time.perf_counter`` that first waits for queued GPU work when timing on CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class InMemoryBatches(Dataset):
    """Pre-collated batches held in memory, served in a cycle (use with ``batch_size=None``)."""

    def __init__(self, batches: list[dict], length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def in_memory_loader(batches: list[dict], length: int) -> DataLoader:
    return DataLoader(InMemoryBatches(batches, length), batch_size=None, shuffle=False, num_workers=0)


def make_model(args, image_size: int | None = None) -> LitUNet:
    hp = dict(TINY_MODEL) if args.tiny else {}
    return LitUNet(image_size=image_size or args.image_size, **hp)


def make_optimizer(module: LitUNet) -> torch.optim.Optimizer:
    """The optimizer of ``configure_optimizers``. Its LR scheduler steps once per epoch (no
    per-step cost) and its cosine branch needs an attached Trainer, so it is switched off here."""
    saved = module.hparams.scheduler
    module.hparams.scheduler = "none"
    try:
        out = module.configure_optimizers()
    finally:
        module.hparams.scheduler = saved
    return out["optimizer"] if isinstance(out, dict) else out


def trainer_kwargs(device: torch.device, max_steps: int, callbacks: list, precision: str = "32-true") -> dict:
    return dict(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=max_steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def preload_batches(data_dir: Path, image_size: int, batch_size: int, n: int) -> list[dict]:
    """``n`` training batches through the real pipeline (decode, preprocess, augment), in memory."""
    dm = CTDataModule(str(data_dir), image_size=image_size, batch_size=batch_size, num_workers=0)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        if len(batch["image"]) == batch_size:
            batches.append(batch)
        if len(batches) == n:
            break
    if not batches:
        raise SystemExit(f"benchmark: the demo training split has fewer than {batch_size} slices")
    return batches


# -- 1. training: Lightning vs plain, interleaved --------------------------------------------
class InterleavedTimer(pl.Callback):
    """Times Lightning steps (period between ``on_train_batch_start`` calls) and, inside each
    ``on_train_batch_end``, one plain PyTorch step on an identical model copy (subtracted)."""

    def __init__(self, plain_step, clock: Clock, warmup: int, steps: int):
        self.plain_step, self.clock, self.warmup, self.steps = plain_step, clock, warmup, steps
        self.starts: list[float] = []
        self.plain_times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self.clock())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if len(self.plain_times) < self.warmup + self.steps:
            t0 = self.clock()
            self.plain_step()
            self.plain_times.append(self.clock() - t0)

    def results(self) -> tuple[list[float], list[float]]:
        n = self.warmup + self.steps
        lightning = [self.starts[i + 1] - self.starts[i] - self.plain_times[i] for i in range(self.warmup, n)]
        return lightning, self.plain_times[self.warmup : n]


def bench_training(args, device: torch.device, batches: list[dict], ckpt_path: Path) -> dict:
    clock = Clock(device)
    pl.seed_everything(0, verbose=False)
    lit = make_model(args)
    plain = copy.deepcopy(lit).to(device).train()
    opt = make_optimizer(plain)
    total = args.warmup + args.steps + 1
    plain_iter = iter(in_memory_loader(batches, total))

    def plain_step() -> None:
        batch = next(plain_iter)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        loss = plain.loss(plain(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timer = InterleavedTimer(plain_step, clock, args.warmup, args.steps)
    trainer = pl.Trainer(**trainer_kwargs(device, total, [timer]))
    trainer.fit(lit, train_dataloaders=in_memory_loader(batches, total))
    trainer.save_checkpoint(str(ckpt_path))  # the inference benchmarks and export use these weights
    lightning, plain_times = timer.results()
    t_l, t_p = median(lightning), median(plain_times)
    # The ratio is the median over adjacent (Lightning, plain) step pairs: on a shared machine a
    # burst of outside load then inflates single ratios in either direction and the median drops
    # them, where a ratio of two medians would carry any drift between the two sets.
    paired = median([a / b for a, b in zip(lightning, plain_times)])

    # The module's metric work per step (as in LitUNet.training_step), timed alone.
    metrics_ms, lean_metrics_ms = bench_train_metrics(lit, batches[0], device, clock, max(10, args.steps))
    bs = args.batch_size
    return {
        "lightning_step_s": t_l,
        "plain_step_s": t_p,
        "train_images_per_s_lightning": bs / t_l,
        "train_images_per_s_plain": bs / t_p,
        "lightning_vs_plain_step_ratio": paired,
        "lightning_vs_plain_ratio_of_medians": t_l / t_p,
        "lightning_vs_plain_ratio_of_minima": min(lightning) / min(plain_times),
        "train_metrics_ms_per_step": metrics_ms,
        "train_metrics_ms_per_step_update_no_validation": lean_metrics_ms,
        "lightning_excl_metrics_vs_plain_step_ratio": median([(a - metrics_ms / 1e3) / b for a, b in zip(lightning, plain_times)]),
        "_lightning_step_times_s": lightning,
        "_plain_step_times_s": plain_times,
    }


def bench_train_metrics(lit: LitUNet, batch: dict, device: torch.device, clock: Clock, reps: int) -> tuple[float, float]:
    """Milliseconds per step of the module's training metrics: as ``training_step`` calls them
    (``metric(...)``, i.e. ``forward``: update plus a batch-level compute, and the default input
    validation), and the same accumulation through ``update()`` with ``validate_args=False``."""
    from torchmetrics.classification import BinaryF1Score

    lit = lit.to(device)
    x, y = batch["image"].to(device), batch["mask"].to(device)
    with torch.no_grad():
        logits = lit(x)
        loss = lit.loss(logits, y)
    shipped_loss, shipped_dice = copy.deepcopy(lit.train_loss).to(device), copy.deepcopy(lit.train_dice).to(device)
    lean_loss, lean_dice = copy.deepcopy(lit.train_loss).to(device), BinaryF1Score(validate_args=False).to(device)

    def shipped() -> None:
        shipped_loss(loss.detach(), len(logits))
        shipped_dice(logits.detach().sigmoid(), y.int())

    def lean() -> None:
        lean_loss.update(loss.detach(), len(logits))
        lean_dice.update(logits.detach().sigmoid(), y.int())

    times: dict = {shipped: [], lean: []}
    for i in range(reps + 2):
        for fn in (shipped, lean):
            t0 = clock()
            fn()
            dt = clock() - t0
            if i >= 2:
                times[fn].append(dt)
    return median(times[shipped]) * 1e3, median(times[lean]) * 1e3


# -- 2. input pipeline ------------------------------------------------------------------------
def bench_loader(args, data_dir: Path) -> dict:
    dm = CTDataModule(str(data_dir), image_size=args.image_size, batch_size=args.batch_size)  # default workers
    dm.setup("fit")
    loader = dm.train_dataloader()
    workers = dm.num_workers
    warmup = max(args.warmup, 2 * workers + 1)  # first batches: worker start + prefetched queue
    wanted = warmup + max(args.steps, 10 if not args.tiny else 3)
    times, sizes = [], []
    t_prev = time.perf_counter()
    while len(times) < wanted:
        for batch in loader:
            t = time.perf_counter()
            times.append(t - t_prev)
            sizes.append(len(batch["image"]))
            t_prev = t
            if len(times) == wanted:
                break
    # Per-image time of each timed batch (the last batch of an epoch may be short).
    per_image = [dt / n for dt, n in zip(times[warmup:], sizes[warmup:])]
    out = {"loader_images_per_s": 1.0 / median(per_image), "loader_num_workers": workers, "loader_train_slices": len(dm.datasets["train"])}
    if workers > 0:
        # Start of an epoch: time to the first batch with the workers kept alive (the
        # DataModule's persistent_workers) and with workers started anew each epoch.
        fresh = DataLoader(dm.datasets["train"], batch_size=args.batch_size, shuffle=True, num_workers=workers,
                           persistent_workers=False, pin_memory=loader.pin_memory)  # fmt: skip
        reps = 2 if args.tiny else 3
        out["loader_epoch_start_s_persistent"] = median([first_batch_s(loader) for _ in range(reps)])
        out["loader_epoch_start_s_fresh_workers"] = median([first_batch_s(fresh) for _ in range(reps)])
    del loader
    return out


def first_batch_s(loader: DataLoader) -> float:
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    dt = time.perf_counter() - t0
    del it
    return dt


# -- 3. inference ----------------------------------------------------------------------------
def load_lit(ckpt_path: Path, channels_last: bool) -> LitUNet:
    from covidseg.inference import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    hp.update(encoder_weights=None, channels_last=channels_last)
    model = LitUNet(**hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def bench_inference(args, device: torch.device, ckpt_path: Path, onnx_path: Path, x_np: np.ndarray) -> dict:
    import onnxruntime as ort

    from covidseg.export import export_onnx

    notes: list[str] = []
    t0 = time.perf_counter()
    onnx_diff = export_onnx(ckpt_path, onnx_path)
    export_s = time.perf_counter() - t0

    eager = load_lit(ckpt_path, channels_last=False).to(device)
    tuned = load_lit(ckpt_path, channels_last=True).to(device)

    def eager_fn(model, channels_last: bool):
        def run() -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(x_np).to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return model(x).sigmoid().cpu().numpy()

        return run

    def tuned_fn(model, bf16: bool):
        def run() -> np.ndarray:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                x = torch.from_numpy(x_np).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                return model(x).float().sigmoid().cpu().numpy()

        return run

    variants = {
        "eager_fp32": eager_fn(eager, False),
        "eager_fp32_channels_last": eager_fn(tuned, True),  # memory format alone, still no_grad
        "tuned_channels_last_fp32": tuned_fn(tuned, False),
    }
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            variants["tuned_channels_last_bf16"] = tuned_fn(tuned, True)
        if not args.no_compile:
            try:
                compiled = torch.compile(tuned)
                run = tuned_fn(compiled, torch.cuda.is_bf16_supported())
                for _ in range(3):  # compile (and re-compile for the memory format) up front
                    run()
                variants["tuned_channels_last_bf16_compiled" if torch.cuda.is_bf16_supported() else "tuned_channels_last_compiled"] = run
            except Exception as err:  # no triton, unsupported op ...: report and go on
                notes.append(f"torch.compile skipped: {short(err)}")

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            notes.append("onnxruntime has no CUDAExecutionProvider here: the ONNX figure is on CPU")
    options = ort.SessionOptions()
    if args.threads is not None:
        options.intra_op_num_threads = args.threads
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    except Exception as err:  # e.g. CUDA libraries that onnxruntime-gpu cannot load
        notes.append(f"onnxruntime {providers[0]} failed ({short(err)}): the ONNX figure is on CPU")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    if device.type == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider" and not any("ONNX figure" in n for n in notes):
        notes.append("onnxruntime did not take the CUDA provider: the ONNX figure is on CPU")
    name = session.get_inputs()[0].name
    variants["onnxruntime"] = lambda: session.run(None, {name: x_np})[0]

    # Round-robin: one batch of each variant per round, so drift in machine load hits all alike.
    times: dict[str, list[float]] = {k: [] for k in variants}
    clock = Clock(device)
    for r in range(args.warmup + max(args.steps, 3)):
        for key, fn in variants.items():
            t0 = clock()
            fn()
            dt = clock() - t0
            if r >= args.warmup:
                times[key].append(dt)
    bs = len(x_np)
    ips = {k: bs / median(v) for k, v in times.items()}
    tuned_keys = [k for k in ips if k.startswith("tuned")]
    best = max(tuned_keys, key=ips.get)
    return {
        "infer_images_per_s_eager": ips["eager_fp32"],
        "infer_images_per_s_eager_channels_last": ips["eager_fp32_channels_last"],
        "infer_images_per_s_tuned": ips[best],
        "infer_tuned_variant": best,
        "infer_images_per_s_onnx": ips["onnxruntime"],
        "infer_images_per_s_variants": ips,
        "onnx_vs_eager_inference_ratio": ips["onnxruntime"] / ips["eager_fp32"],
        "tuned_vs_eager_inference_ratio": ips[best] / ips["eager_fp32"],
        "onnx_providers": session.get_providers(),
        "onnx_max_abs_diff": onnx_diff,
        "onnx_export_s": export_s,
        "_inference_notes": notes,
    }


# -- 4. memory -------------------------------------------------------------------------------
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
        raise SystemExit(f"benchmark: {what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return int(found.group(1)) / 1024


# -- 5. GPU only: precision x size, DDP ------------------------------------------------------
class StepTimer(pl.Callback):
    def __init__(self, clock: Clock):
        self.clock, self.starts = clock, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self.clock())

    def periods(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1 :])]


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


def bench_gpu(args, device: torch.device, data_dir: Path, work: Path) -> tuple[dict, list[str]]:
    """GPU-only figures. Each part is guarded: a failure becomes a note, not a lost run."""
    out: dict = {}
    notes: list[str] = []

    def guarded(what: str, fn) -> None:
        try:
            fn()
        except Exception as err:  # report and go on with the other figures
            notes.append(f"{what} failed: {short(err)}")

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
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-probe", str(devices), "--ddp-out", str(out),
           "--device", args.device, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--tiny"] if args.tiny else [])  # fmt: skip
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PL_DISABLE_FORK": "1"}, timeout=1800)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"benchmark: DDP probe on {devices} device(s) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
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


# -- report ----------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    import onnxruntime as ort

    info = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "onnxruntime": ort.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    try:
        info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def verdict(key: str, value, device: torch.device) -> tuple[str, str]:
    if key not in TARGETS or value is None:
        return "", ""
    op, thr, where = TARGETS[key]
    if device.type not in where:
        return f"({op} {thr:g} on CPU)", "info"
    ok = value <= thr if op == "<=" else value >= thr
    return f"{op} {thr:g}", "PASS" if ok else "FAIL"


TABLE = (
    ("Training (Lightning, module metrics on)", "train_images_per_s_lightning", "img/s"),
    ("Training (plain PyTorch loop)", "train_images_per_s_plain", "img/s"),
    ("Lightning / plain time per step (median of pairs)", "lightning_vs_plain_step_ratio", "x"),
    ("  module metric work per step (as shipped)", "train_metrics_ms_per_step", "ms"),
    ("  same ratio, metric updates excluded", "lightning_excl_metrics_vs_plain_step_ratio", "x"),
    ("  metric work via update(), validate_args=False", "train_metrics_ms_per_step_update_no_validation", "ms"),
    ("Input pipeline (CTDataModule train loader)", "loader_images_per_s", "img/s"),
    ("Loader / training-step throughput", "loader_vs_step_throughput_ratio", "x"),
    ("  epoch start to first batch, persistent workers", "loader_epoch_start_s_persistent", "s"),
    ("  epoch start to first batch, fresh workers", "loader_epoch_start_s_fresh_workers", "s"),
    ("Inference eager fp32 (NCHW, no_grad)", "infer_images_per_s_eager", "img/s"),
    ("Inference eager fp32, channels_last input+weights", "infer_images_per_s_eager_channels_last", "img/s"),
    ("Inference tuned PyTorch", "infer_images_per_s_tuned", "img/s"),
    ("Inference onnxruntime", "infer_images_per_s_onnx", "img/s"),
    ("Tuned / eager inference", "tuned_vs_eager_inference_ratio", "x"),
    ("ONNX / eager inference", "onnx_vs_eager_inference_ratio", "x"),
    ("Peak RSS, covidseg.fit run", "train_peak_rss_mib", "MiB"),
    ("  baseline: python -c 'import covidseg.fit'", "import_only_peak_rss_mib", "MiB"),
    ("Peak GPU memory, training", "train_peak_gpu_mib", "MiB"),
    ("GPU training fp32 128 px", "gpu_train_images_per_s_fp32_128px", "img/s"),
    ("GPU training bf16-mixed 128 px", "gpu_train_images_per_s_bf16_128px", "img/s"),
    ("GPU training fp32 256 px", "gpu_train_images_per_s_fp32_256px", "img/s"),
    ("GPU training bf16-mixed 256 px", "gpu_train_images_per_s_bf16_256px", "img/s"),
    ("DDP scaling efficiency", "ddp_scaling_efficiency", "x"),
    ("GPU host syncs per step, Lightning + module", "gpu_host_syncs_per_step_lightning", "n"),
    ("GPU host syncs per step, plain loop", "gpu_host_syncs_per_step_plain", "n"),
    ("GPU batch copy from pageable memory", "gpu_h2d_batch_ms_pageable", "ms"),
    ("GPU batch copy from pinned memory", "gpu_h2d_batch_ms_pinned", "ms"),
)


def format_table(res: dict, device: torch.device) -> str:
    rows = [("figure", "value", "target", "result")]
    for label, key, unit in TABLE:
        if key not in res:  # a figure this run does not measure at all (GPU diagnostics on CPU)
            continue
        value = res.get(key)
        if key == "infer_images_per_s_tuned" and value is not None:
            label = f"{label} ({res['infer_tuned_variant']})"
        shown = "n/a" if value is None else (f"{value:.3f} {unit}" if unit in ("x", "s") else f"{value:.1f} {unit}")
        target, result = verdict(key, value, device)
        rows.append((label, shown, target, result))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write all figures, settings and the machine to this JSON file")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--image-size", type=int, default=None, help="training/inference side in px (default 128, tiny 32)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 16, tiny 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per figure (default 8 on CPU, 30 on GPU, tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 2 on CPU, 5 on GPU, tiny 1)")
    p.add_argument("--data-size", type=int, default=None, help="side of the synthetic slices on disk (default 2x image size)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, model and step counts (for the test suite)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime, also passed to the fit run as OMP_NUM_THREADS (default: one per core; tiny: 1)")
    p.add_argument("--no-compile", action="store_true", help="GPU: skip the torch.compile inference variant")
    p.add_argument("--ddp-probe", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ddp-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    gpu = a.device == "cuda"
    a.image_size = a.image_size or (32 if a.tiny else 128)
    a.batch_size = a.batch_size or (4 if a.tiny else 16)
    a.steps = a.steps or (3 if a.tiny else 30 if gpu else 8)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 5 if gpu else 2)
    a.data_size = a.data_size or (a.image_size if a.tiny else 2 * a.image_size)
    if a.data_size < a.image_size:
        p.error("--data-size must be at least --image-size")
    if gpu and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch")
    if a.threads is None and a.tiny:
        a.threads = 1  # tiny ops gain nothing from threads, and a loaded test machine makes them stall
    if a.threads is not None:
        if a.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(a.threads)
    return a


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.ddp_probe:
        ddp_probe(args)
        return {}
    quiet_lightning()
    device = torch.device(args.device)
    t_start = time.perf_counter()
    load_at_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    res: dict = {"settings": {k: v for k, v in vars(args).items() if not k.startswith("ddp")}}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="covidseg-bench-") as tmp:
        work = Path(tmp)
        cases, slices = (6, 4) if args.tiny else (24, 8)  # 192 slices: under the data scan's progress-bar threshold
        log(f"synthetic data: {cases * slices} slices at {args.data_size} px")
        data_dir = generate(work / "data", cases=cases, slices=slices, size=args.data_size)

        walls: dict[str, float] = {}
        t0 = time.perf_counter()
        log("peak RSS of a short covidseg.fit run")
        res.update(bench_fit_rss(args, device, data_dir, work))
        walls["memory"] = time.perf_counter() - t0

        batches = preload_batches(data_dir, args.image_size, args.batch_size, 4)
        log(f"training: Lightning vs plain, {args.warmup} + {args.steps} steps, batch {args.batch_size} at {args.image_size} px")
        ckpt = work / "bench.ckpt"
        t0 = time.perf_counter()
        res.update(bench_training(args, device, batches, ckpt))
        walls["training"] = time.perf_counter() - t0

        log("input pipeline: CTDataModule train loader alone")
        t0 = time.perf_counter()
        res.update(bench_loader(args, data_dir))
        walls["loader"] = time.perf_counter() - t0
        res["loader_vs_step_throughput_ratio"] = res["loader_images_per_s"] / res["train_images_per_s_lightning"]

        log("inference: export to ONNX, then eager / tuned / onnxruntime")
        x_np = batches[0]["image"].numpy().astype(np.float32)
        t0 = time.perf_counter()
        res.update(bench_inference(args, device, ckpt, work / "bench.onnx", x_np))
        walls["inference"] = time.perf_counter() - t0
        notes += res.pop("_inference_notes")

        for key in GPU_KEYS:
            res.setdefault(key, None)
        if device.type == "cuda":
            log("GPU: fp32 / bf16-mixed training at 128 and 256 px, DDP scaling")
            t0 = time.perf_counter()
            gpu, gpu_notes = bench_gpu(args, device, data_dir, work)
            walls["gpu"] = time.perf_counter() - t0
            res.update(gpu)
            notes += gpu_notes
        else:
            notes.append("CPU run: GPU figures (peak GPU memory, fp32/bf16 training, DDP scaling) not measured")
        if args.tiny:
            notes.append("--tiny: a smoke run of every code path; its figures say nothing about real performance")
        res["section_wall_s"] = walls
    res["notes"] = notes
    res["machine"] = machine_info(device)
    res["machine"]["load_average_1m_at_start"] = load_at_start
    res["benchmark_wall_s"] = time.perf_counter() - t_start

    print(format_table(res, device))
    m = res["machine"]
    print(f"\n{m['device_name']} | {m['cpu_usable_cores']} cores, torch threads {m['torch_threads']} | torch {torch.__version__} | "
          f"{args.steps} timed steps (medians) after {args.warmup} warm-up | load {m['load_average_1m_at_start']} -> "
          f"{m.get('load_average_1m_at_end')} | {res['benchmark_wall_s']:.0f} s")  # fmt: skip
    for n in notes:
        print(f"note: {n}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        public = {k: v for k, v in res.items() if not k.startswith("_")}
        public["step_times_s"] = {"lightning": res["_lightning_step_times_s"], "plain": res["_plain_step_times_s"]}
        out.write_text(json.dumps(public, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
