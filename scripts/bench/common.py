"""Shared pieces of the benchmark: settings, figure keys, timing helpers, in-memory batches."""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from covidseg.data.datamodule import CTDataModule  # noqa: E402
from covidseg.model.unet import LitUNet  # noqa: E402

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


def failure(err: BaseException) -> str:
    """What a failed section records: the error's type and its last 2000 characters."""
    text = str(err).strip()
    return f"{err.__class__.__name__}: {text[-2000:]}" if text else err.__class__.__name__


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


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
        raise RuntimeError(f"the demo training split has fewer than {batch_size} slices")
    return batches


class StepTimer(pl.Callback):
    """Periods between ``on_train_batch_start`` calls: one whole Lightning step each."""

    def __init__(self, clock: Clock):
        self.clock, self.starts = clock, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self.clock())

    def periods(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[warmup:], self.starts[warmup + 1 :])]
