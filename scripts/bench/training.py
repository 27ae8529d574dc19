"""Training step: Lightning vs a plain PyTorch loop, interleaved, and the module's metric work."""

from __future__ import annotations

import copy
from pathlib import Path

import pytorch_lightning as pl
import torch

from bench.common import Clock, in_memory_loader, make_model, make_optimizer, median, trainer_kwargs
from covidseg.model.unet import LitUNet


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
    metrics = bench_train_metrics(lit, batches[0], device, clock, max(10, args.steps))
    metrics_ms = metrics["train_metrics_ms_per_step"]
    bs = args.batch_size
    return {
        "lightning_step_s": t_l,
        "plain_step_s": t_p,
        "train_images_per_s_lightning": bs / t_l,
        "train_images_per_s_plain": bs / t_p,
        "lightning_vs_plain_step_ratio": paired,
        "lightning_vs_plain_ratio_of_medians": t_l / t_p,
        "lightning_vs_plain_ratio_of_minima": min(lightning) / min(plain_times),
        **metrics,
        "lightning_excl_metrics_vs_plain_step_ratio": median([(a - metrics_ms / 1e3) / b for a, b in zip(lightning, plain_times)]),
        "_lightning_step_times_s": lightning,
        "_plain_step_times_s": plain_times,
    }


def bench_train_metrics(lit: LitUNet, batch: dict, device: torch.device, clock: Clock, reps: int) -> dict[str, float]:
    """Milliseconds per step of the module's training metrics, timed alone on one batch:
    ``lit.update_train_metrics(loss, logits, target)``, the call ``training_step`` makes."""
    lit = lit.to(device)
    x, y = batch["image"].to(device), batch["mask"].to(device)
    with torch.no_grad():
        logits = lit(x)
        loss = lit.loss(logits, y)
    times = []
    for i in range(reps + 2):
        t0 = clock()
        lit.update_train_metrics(loss, logits, y)
        dt = clock() - t0
        if i >= 2:
            times.append(dt)
    return {"train_metrics_ms_per_step": median(times) * 1e3}
