"""The LightningModule: ``smp.Unet`` (1 input channel, 1 logit), Dice + BCE loss, torchmetrics,
optimizer and LR schedule. It never builds datasets; the preprocessing settings it carries
(``image_size``, ``normalization``) are linked from the DataModule by the CLI so that they
travel in every checkpoint, together with the inference settings (``threshold``, ``tta``).
"""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from torch import nn

from covidseg.errors import CovidSegError
from covidseg.io import Normalization
from covidseg.metrics import TRAIN_LOSS, VAL_DICE, loss_metric, segmentation_metrics
from torchmetrics.classification import BinaryF1Score


def build_unet(encoder_name: str, encoder_weights: str | None, encoder_depth: int, decoder_channels: list[int], in_channels: int) -> nn.Module:
    try:
        return smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            encoder_depth=encoder_depth,
            decoder_channels=list(decoder_channels),
            in_channels=in_channels,
            classes=1,
        )
    except (KeyError, ValueError) as err:  # unknown encoder or weights name
        raise CovidSegError(f"model: cannot build U-Net with encoder {encoder_name!r} / weights {encoder_weights!r}: {err}") from None
    except OSError as err:  # weights download without network
        raise CovidSegError(
            f"model: could not fetch {encoder_weights!r} weights for {encoder_name!r} ({err.__class__.__name__}); "
            "train from scratch with --model.encoder_weights null or pre-fill the Hugging Face cache"
        ) from None


def freeze_unused(net: nn.Module, in_channels: int, depth: int) -> None:
    """Freezes parameters that never reach the output (deep encoder stages left over when
    ``encoder_depth < 5``): DDP would otherwise stop with "parameters were not used"."""
    net.eval()
    side = 2 ** (depth + 1)
    net(torch.rand(1, in_channels, side, side)).sum().backward()
    for p in net.parameters():
        if p.grad is None:
            p.requires_grad_(False)
        p.grad = None
    net.train()


def soft_dice_per_image(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean over slices of (2|P*T| + s) / (|P| + |T| + s)``, ``P = sigmoid(logits)``;
    the smoothing ``s`` makes a lesion-free slice with an empty prediction score 1."""
    probs = logits.float().sigmoid().flatten(1)
    target = target.float().flatten(1)
    inter = (probs * target).sum(1)
    dice = (2 * inter + smooth) / (probs.sum(1) + target.sum(1) + smooth)
    return 1 - dice.mean()


class LitUNet(pl.LightningModule):
    """U-Net for binary lesion segmentation.

    Args:
        encoder_name: any smp encoder (``resnet18``, ``resnet34``, ``efficientnet-b0`` ...).
        encoder_weights: ``None`` (from scratch, default) or ``imagenet`` (needs a network once).
        encoder_depth, decoder_channels: U-Net shape (``len(decoder_channels) == encoder_depth``).
        in_channels: input channels (CT slices: 1).
        dice_weight, bce_weight: loss = dice_weight * Dice loss + bce_weight * BCE.
        dice_per_image: soft Dice per slice, averaged over the batch (``True``; weighs a slice
            with a small lesion like one with a large lesion, as the per-image Dice metric
            does), or over the batch's pooled pixels (``False``, the seed's loss).
        optimizer: ``adamw``, ``adam`` or ``sgd`` (momentum 0.9).
        lr, weight_decay: optimizer settings.
        scheduler: ``cosine`` (to 1% of lr over max_epochs), ``plateau`` (on val/dice) or ``none``.
        image_size, normalization: preprocessing, linked from ``data.*`` (do not set by hand).
        threshold, tta: default inference settings stored with the model.
        channels_last: NHWC memory format (faster convolutions on CPU and tensor cores).
        num_val_samples: validation slices drawn to TensorBoard each epoch.

    Shape:
        forward: ``[B, 1, S, S]`` float in [0, 1] -> logits ``[B, 1, S, S]``.
    """

    def __init__(
        self,
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        encoder_depth: int = 5,
        decoder_channels: list[int] = [128, 64, 32, 16, 8],  # noqa: B006 (jsonargparse needs a literal)
        in_channels: int = 1,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        dice_per_image: bool = False,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: Literal["cosine", "plateau", "none"] = "cosine",
        image_size: int = 128,
        normalization: Normalization = "auto",
        threshold: float = 0.5,
        tta: bool = False,
        channels_last: bool = True,
        num_val_samples: int = 4,
    ):
        super().__init__()
        if len(decoder_channels) != encoder_depth:
            raise CovidSegError(f"model: decoder_channels has {len(decoder_channels)} entries, encoder_depth is {encoder_depth}")
        self.save_hyperparameters()
        self.net = build_unet(encoder_name, encoder_weights, encoder_depth, decoder_channels, in_channels)
        freeze_unused(self.net, in_channels, encoder_depth)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.dice_loss = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
        self.bce_loss = nn.BCEWithLogitsLoss()
        self.train_loss = loss_metric()
        # masks are {0, 1} by construction: skip the per-step torch.unique check (a host sync on GPU)
        self.train_dice = BinaryF1Score(validate_args=False)
        self.val_loss = loss_metric()
        self.test_loss = loss_metric()
        self.val_metrics = segmentation_metrics("val")
        self.test_metrics = segmentation_metrics("test")
        self.val_samples: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        dice = soft_dice_per_image(logits, target) if hp.dice_per_image else self.dice_loss(logits, target)
        return hp.dice_weight * dice + hp.bce_weight * self.bce_loss(logits, target)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["mask"])
        n = len(logits)
        # update(), not forward(): only epoch values are logged, so no per-batch compute
        self.train_loss.update(loss.detach(), n)
        # soft targets (data.soft_masks) count as lesion above one half
        self.train_dice.update(logits.detach().sigmoid(), (batch["mask"] > 0.5).int())
        self.log(TRAIN_LOSS, self.train_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/dice", self.train_dice, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        probs = logits.sigmoid()
        target = batch["mask"]
        n = len(logits)
        loss_metric, metrics = (self.val_loss, self.val_metrics) if stage == "val" else (self.test_loss, self.test_metrics)
        loss_metric(self.loss(logits, target), n)
        metrics.update(probs, target.int())
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=n)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=n)
        return probs

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        probs = self._eval_step(batch, "val")
        if batch_idx == 0 and self.hparams.num_val_samples:
            k = self.hparams.num_val_samples
            self.val_samples = {"image": batch["image"][:k], "mask": batch["mask"][:k], "prob": probs[:k]}

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).sigmoid()

    def configure_optimizers(self):
        hp = self.hparams
        params = self.parameters()
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay, nesterov=True)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": VAL_DICE}}
        epochs = max(1, self.trainer.max_epochs or 1) if self._trainer is not None else 100
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=hp.lr * 0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
