"""Performance benchmark: training step (Lightning vs plain PyTorch), input pipeline, inference
(eager / tuned / onnxruntime) and memory, on one model, one data set and one set of settings.

    python scripts/benchmark.py [--json OUT] [--device cpu|cuda] [--image_size 128]
        [--batch_size 16] [--steps N] [--warmup N] [--tiny]

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
  also timed alone (``LitUNet.update_train_metrics`` where the module has it).
* Input pipeline: ``CTDataModule.train_dataloader()`` over a synthetic demo set on disk
  (PNG decoding, resize, augmentation, ``default_num_workers()`` workers) iterated alone.
* Inference: batch ``--batch_size`` at the training size, numpy in -> probabilities out
  (host<->device copies included on GPU): eager fp32 (NCHW, ``no_grad``), the tuned PyTorch
  path (channels_last + ``inference_mode``; on GPU also bf16 autocast and ``torch.compile``,
  the fastest is reported) and onnxruntime on the model exported by ``covidseg.export``.
* Memory: peak RSS of a short ``python -m covidseg.fit`` subprocess (defaults, a few
  batches); on GPU also ``torch.cuda.max_memory_allocated`` of a training run.
* GPU only: fp32 and bf16-mixed training images/s at 128 and 256 px, device->host syncs per
  training step (``torch.cuda.set_sync_debug_mode``), a batch copy from pageable vs pinned
  memory, and DDP scaling efficiency when 2+ GPUs are visible (a ``--ddp_probe`` subprocess).

``--threads N`` pins torch and onnxruntime to N CPU threads (default: one per core). ``--tiny``
shrinks everything (32 px, 3-level U-Net, 3 steps, 1 thread) so the test suite can run it.
``--only loader,training`` runs some sections. A section (or GPU figure) that fails is recorded
under ``failures`` in the JSON, the others still run, and the exit status is 1.

The sections live in ``scripts/bench/``, one module each; this file parses and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench.common import GPU_KEYS, failure, log, preload_batches, quiet_lightning, short  # first: sets offline env
from bench.gpu import bench_gpu, ddp_probe
from bench.inference import bench_inference
from bench.loader import bench_loader
from bench.memory import bench_fit_rss
from bench.report import format_table, machine_info
from bench.training import bench_training

from covidseg.data.synthetic import generate

SECTIONS = ("memory", "training", "loader", "inference", "gpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write all figures, settings and the machine to this JSON file")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--image_size", "--image-size", type=int, default=None, help="training/inference side in px (default 128, tiny 32)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=None, help="batch size (default 16, tiny 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per figure (default 8 on CPU, 30 on GPU, tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 2 on CPU, 5 on GPU, tiny 1)")
    p.add_argument("--data_size", "--data-size", type=int, default=None, help="side of the synthetic slices on disk (default 2x image size)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, model and step counts (for the test suite)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime, also passed to the fit run as OMP_NUM_THREADS (default: one per core; tiny: 1)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    p.add_argument("--no_compile", "--no-compile", action="store_true", help="GPU: skip the torch.compile inference variant")
    p.add_argument("--ddp_probe", "--ddp-probe", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ddp_out", "--ddp-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    gpu = a.device == "cuda"
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    if unknown := sorted(set(a.only) - set(SECTIONS)):
        p.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    a.image_size = a.image_size or (32 if a.tiny else 128)
    a.batch_size = a.batch_size or (4 if a.tiny else 16)
    a.steps = a.steps or (3 if a.tiny else 30 if gpu else 8)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 5 if gpu else 2)
    a.data_size = a.data_size or (a.image_size if a.tiny else 2 * a.image_size)
    if a.data_size < a.image_size:
        p.error("--data_size must be at least --image_size")
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
    """Runs the selected sections and returns every figure; ``res["failures"]`` maps each
    failed section or GPU figure to its error."""
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
    failures: dict[str, str] = {}
    walls: dict[str, float] = {}

    def section(name: str, what: str, run) -> None:
        if name not in args.only:
            return
        log(what)
        t0 = time.perf_counter()
        try:
            res.update(run())
        except Exception as err:  # record it and go on: one failure must not lose the other figures
            failures[name] = failure(err)
            log(f"{name} failed: {short(err)}")
        walls[name] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="covidseg-bench-") as tmp:
        work = Path(tmp)
        cases, slices = (6, 4) if args.tiny else (24, 8)  # 192 slices: under the data scan's progress-bar threshold
        log(f"synthetic data: {cases * slices} slices at {args.data_size} px")
        data_dir = generate(work / "data", cases=cases, slices=slices, size=args.data_size)
        ckpt = work / "bench.ckpt"
        batches: list[dict] = []

        def training() -> dict:
            batches[:] = preload_batches(data_dir, args.image_size, args.batch_size, 4)
            return bench_training(args, device, batches, ckpt)

        def inference() -> dict:
            if not ckpt.is_file():
                raise RuntimeError("needs the weights of the training section, which did not run or failed")
            out = bench_inference(args, device, ckpt, work / "bench.onnx", batches[0]["image"].numpy().astype(np.float32))
            notes.extend(out.pop("_inference_notes"))
            return out

        def gpu() -> dict:
            out, gpu_notes = bench_gpu(args, device, data_dir, work, failures)
            notes.extend(gpu_notes)
            return out

        section("memory", "peak RSS of a short covidseg.fit run", lambda: bench_fit_rss(args, device, data_dir, work))
        section("training", f"training: Lightning vs plain, {args.warmup} + {args.steps} steps, batch {args.batch_size} at {args.image_size} px", training)
        section("loader", "input pipeline: CTDataModule train loader alone", lambda: bench_loader(args, data_dir))
        if "loader_images_per_s" in res and "train_images_per_s_lightning" in res:
            res["loader_vs_step_throughput_ratio"] = res["loader_images_per_s"] / res["train_images_per_s_lightning"]
        section("inference", "inference: export to ONNX, then eager / tuned / onnxruntime", inference)
        for key in GPU_KEYS if "gpu" in args.only else ():
            res.setdefault(key, None)
        if device.type == "cuda":
            section("gpu", "GPU: fp32 / bf16-mixed training at 128 and 256 px, DDP scaling", gpu)
        elif "gpu" in args.only:
            notes.append("CPU run: GPU figures (peak GPU memory, fp32/bf16 training, DDP scaling) not measured")
        if args.tiny:
            notes.append("--tiny: a smoke run of every code path; its figures say nothing about real performance")
        res["section_wall_s"] = walls
    res["failures"] = failures
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
    for name, err in failures.items():
        print(f"FAILED {name}: {err.splitlines()[0][:200]}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        public = {k: v for k, v in res.items() if not k.startswith("_")}
        if "_lightning_step_times_s" in res:
            public["step_times_s"] = {"lightning": res["_lightning_step_times_s"], "plain": res["_plain_step_times_s"]}
        out.write_text(json.dumps(public, indent=2) + "\n")
    return res


if __name__ == "__main__":
    raise SystemExit(1 if main().get("failures") else 0)
