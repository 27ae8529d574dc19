"""Callbacks: validation slices to TensorBoard, and one progress line per epoch for logs."""

from __future__ import annotations

import time

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger


def sample_grid(image: torch.Tensor, mask: torch.Tensor, prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Rows of ``image | ground truth | prediction | overlay`` as one RGB picture.

    Shape:
        image, mask, prob: ``[N, 1, H, W]``; returns ``[3, N*H, 4*W]`` float in [0, 1].
    """
    img = image.float().clamp(0, 1).expand(-1, 3, -1, -1)
    gt = mask.float().expand(-1, 3, -1, -1)
    pred = (prob >= threshold).float()
    pred_rgb = pred.expand(-1, 3, -1, -1)
    overlay = img.clone() * 0.7
    red, green = torch.tensor([1.0, 0.2, 0.2]).view(1, 3, 1, 1), torch.tensor([0.2, 1.0, 0.2]).view(1, 3, 1, 1)
    overlay = overlay + 0.3 * (gt * green + pred * red).clamp(0, 1)
    rows = torch.cat([img, gt, pred_rgb, overlay.clamp(0, 1)], dim=3)  # [N, 3, H, 4W]
    return torch.cat(list(rows), dim=1)


class ValidationSamples(Callback):
    """Logs a few validation slices with ground truth and prediction each epoch."""

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        samples = getattr(pl_module, "val_samples", None)
        if trainer.sanity_checking or not samples or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                grid = sample_grid(samples["image"].cpu(), samples["mask"].cpu(), samples["prob"].float().cpu(), pl_module.hparams.threshold)
                logger.experiment.add_image("val/samples (image | truth | prediction | overlay)", grid, trainer.current_epoch)
        pl_module.val_samples = {}


class EpochLine(Callback):
    """One line per epoch (``epoch 3/10 train/loss ... val/dice ... 52s``) when there is no
    progress bar, so logs of batch jobs still show progress."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        keys = [k for k in ("train/loss", "val/loss", "val/dice", "val/dice_image") if k in m]
        values = "  ".join(f"{k} {float(m[k]):.4f}" for k in keys)
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {values}  {time.monotonic() - self._start:.0f}s", flush=True)
