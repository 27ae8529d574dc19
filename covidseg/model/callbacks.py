"""Callbacks: validation slices to TensorBoard, one progress line per epoch for logs, and
``last.ckpt`` written after every epoch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger

from covidseg.data.overlay import overlay


def sample_grid(image: torch.Tensor, mask: torch.Tensor, prob: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """Rows of ``image | ground truth | prediction | overlay`` as one RGB picture.

    Shape:
        image, mask, prob: ``[N, 1, H, W]``; returns ``float32 [N*H, 4*W, 3]`` in [0, 1] (HWC).
    """
    rows = []
    for img, gt, p in zip(image[:, 0].float().clamp(0, 1).numpy(), (mask[:, 0] > 0.5).numpy(), (prob[:, 0] >= threshold).numpy()):
        gray = lambda a: np.repeat(np.asarray(a, np.float32)[..., None], 3, axis=2)  # noqa: E731
        rows.append(np.concatenate([gray(img), gray(gt), gray(p), overlay(img, p, gt)], axis=1))
    return np.concatenate(rows, axis=0)


class ValidationSamples(Callback):
    """Logs a few validation slices with ground truth and prediction each epoch."""

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        samples = getattr(pl_module, "val_samples", None)
        if trainer.sanity_checking or not samples or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                grid = sample_grid(samples["image"].cpu(), samples["mask"].cpu(), samples["prob"].float().cpu(), pl_module.hparams.threshold)
                logger.experiment.add_image("val/samples (image | truth | prediction | overlay)", grid, trainer.current_epoch, dataformats="HWC")
        pl_module.val_samples = {}


class EpochLine(Callback):
    """One line per epoch (``epoch 3/10 train/loss ... val/dice ... 52s``) when there is no
    progress bar, so logs of batch jobs still show progress. The module logs its training values
    in its own ``on_train_epoch_end``, which Lightning calls after the callbacks' hook, so the
    line of an epoch is printed when the next epoch starts or training ends."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print(trainer, trainer.current_epoch)
        self._start = time.monotonic()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print(trainer, trainer.current_epoch)

    def _print(self, trainer: Trainer, finished: int) -> None:
        """``finished``: the number of epochs done (the one to report is the last of them)."""
        start, self._start = self._start, None
        if start is None or trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics  # plain synced tensors (LitUNet._log_loss): no collective
        keys = [k for k in ("train/loss", "val/loss", "val/dice_image", "val/dice") if k in m]
        values = "  ".join(f"{k} {float(m[k]):.4f}" for k in keys)
        print(f"epoch {finished}/{trainer.max_epochs}  {values}  {time.monotonic() - start:.0f}s", flush=True)


class LastEpochCheckpoint(Callback):
    """Writes ``CHECKPOINT_DIR/last.ckpt`` at the end of every training epoch (after that epoch's
    validation), so it always holds the latest epoch: the weights cross-validation scores and
    ``--ckpt_path last`` resumes. Lightning 2.6's ``ModelCheckpoint(save_last=True)`` rewrites
    ``last.ckpt`` only when it also saves a new top-k checkpoint, i.e. it left ``last.ckpt`` at
    the best validation epoch."""

    FILENAME = "last.ckpt"

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        cb = trainer.checkpoint_callback
        if cb is None or cb.dirpath is None:  # checkpointing disabled
            return
        # every rank calls; rank 0 writes. weights_only given: Lightning logs a line per call otherwise (issue 31, item 19)
        trainer.save_checkpoint(Path(cb.dirpath) / self.FILENAME, weights_only=False)
