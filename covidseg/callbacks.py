"""Callbacks: validation slices to TensorBoard, and the default checkpoint/early-stopping set."""

from __future__ import annotations

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
