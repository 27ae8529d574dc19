"""The LightningDataModule: validated data split by case, served as train, val and test loaders.

Data flow: files -> pairs ``(image, mask, case_id[, slice])`` (``layouts``, checked by
``validate.validate_data``; a volume is one case and each of its axial slices a sample) -> split by
case (``splits``) -> read (``samples.image_of``: the image file, or the volume slice through the HU
window; ``samples.mask_of``: the one label rule; ``samples.lung_mask_of``: the lung rule) -> per sample ``{"image": float32 [1,S,S] in [0,1], "mask": float32
[1,S,S] in {0,1} (training: in [0,1] with soft_masks), "index": int}`` -> the model. Preprocessing is ``io.preprocess_image`` /
``io.preprocess_mask``, the same functions inference uses. ``S`` is ``image_size`` (the whole
slice at the target size); with ``patch_size`` training samples are random ``[1,P,P]`` patches of
it (``covidseg.data.patches``, drawn after augmentation), while validation and test stay whole slices.
"""

from __future__ import annotations

import inspect

import os
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, WeightedRandomSampler

from covidseg.data.dataset import SliceDataset
from covidseg.data.io import Normalization
from covidseg.data.layouts.find import data_kind
from covidseg.data.samples import Sample
from covidseg.data.splits import assign_splits, case_note, read_splits, split_summary, write_splits
from covidseg.data.synthetic import ensure_demo
from covidseg.data.transforms import train_transforms
from covidseg.data.validate import DataReport, EmptyMaskPolicy, validate_data
from covidseg.data.volumes import LUNG_WINDOW, Intensity
from covidseg.errors import DataError


def check_resolution(image_size: int, patch_size: int | None, foreground_fraction: float) -> None:
    """Raises ``DataError`` (one line, naming the flag) for an impossible resolution setting."""
    if image_size < 1:
        raise DataError(f"data.image_size {image_size}: must be positive")
    if patch_size is not None and not 1 <= patch_size <= image_size:
        raise DataError(f"data.patch_size {patch_size}: must be between 1 and data.image_size ({image_size}), or null for whole slices")
    if not 0.0 <= foreground_fraction <= 1.0:
        raise DataError(f"data.foreground_fraction {foreground_fraction}: expected a share in [0, 1]")
    if foreground_fraction and patch_size is None:
        raise DataError("data.foreground_fraction needs data.patch_size (whole slices always contain their lesion)")


def default_num_workers(local_world_size: int | None = None) -> int:
    """Workers per process: half the visible cores shared among the ``local_world_size``
    processes of this node (default: ``LOCAL_WORLD_SIZE`` as torchrun sets it, else 1), at
    least 1, at most 8. Eight DDP ranks with 8 workers each would oversubscribe a node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cores // 2 // max(1, local_world_size)))


def worker_context(num_workers: int) -> str | None:
    """DataLoader workers of a DDP rank start from a forkserver, not by forking the rank itself.
    A rank holds threads (gloo's, the OpenMP pool its first forward passes started) and a child
    forked while one of them holds a lock can deadlock before its first batch: in CI a rank's
    new training worker did, the rank waited for its batch, the other rank in its first
    collective (issue 31, item 20). The forkserver forks workers from a process without those
    threads. Outside DDP (``None``) the platform's default stays."""
    import multiprocessing

    if num_workers == 0 or not (dist.is_available() and dist.is_initialized()) or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    return "forkserver"


def dump_worker_stacks_on_signal(worker_id: int) -> None:
    """A worker's ``worker_init_fn``: ``kill -USR1`` prints its stacks too, as a rank's does
    (``model.ddp``); a worker started from a forkserver does not inherit the rank's handler."""
    from covidseg.model.ddp import dump_stacks_on_signal

    dump_stacks_on_signal()


# How to give a split more slices, per split; every message also suggests fewer processes.
_MORE_SLICES = {
    "train": "lower --data.val_fraction/--data.test_fraction",
    "val": "raise --data.val_fraction (0 trains without validation)",
    "test": "raise --data.test_fraction (0 tests on the validation split)",
}


class CTDataModule(pl.LightningDataModule):
    """CT slices and lesion masks from one or several folders, split by patient.

    Args:
        root: data folder(s): Kaggle ``frames/``+``masks/``, ``images/``+``masks/`` (slices or
            NIfTI volumes), nnU-Net ``imagesTr/``+``labelsTr/`` or a folder with
            ``manifest.csv``. ``None`` uses the built-in synthetic demo set.
        image_size: target size: every slice is resized to ``image_size`` x ``image_size``
            (masks nearest-neighbour); validation, evaluate, predict and export run on the
            whole slice at this size and give masks back at the slice's original size.
        patch_size: train on random ``patch_size`` patches of the resized slice (``None``: on
            the whole slice). A multiple of ``2 ** model.encoder_depth``, at most ``image_size``.
        foreground_fraction: share of training patches forced to contain lesion (nnU-Net: 1/3).
        normalization: intensity rule, see ``covidseg.data.io`` (``auto``: 8-bit /255, else min-max).
        batch_size: training and evaluation batch size (per device).
        num_workers: DataLoader workers per process; ``None``: half the node's cores shared by
            the trainer's processes on the node, 1 to 8 (see ``num_workers``).
        val_fraction, test_fraction: share of slices (whole cases) for validation and test.
        split_seed: seed of the case shuffle.
        num_folds, fold: patient-level K-fold; fold ``fold`` validates (test stays held out).
        split_file: reuse a ``splits.csv`` instead of splitting.
        case_regex: regex whose first group is the case id, applied to image file stems.
        empty_masks: masks without lesion: ``keep``, ``drop`` (counted) or ``error``; per slice
            file, or per whole volume (a volume with lesion keeps its lesion-free slices).
        lesion_labels: mask values that are lesion, e.g. ``[1, 2]`` (MedSeg ground-glass and
            consolidation). ``None``: masks must be binary ({0, 1}, {0, 255}); a label map is
            refused before training, naming the files and the values found.
        intensity: the intensity protocol (see ``covidseg.data.volumes``): ``image`` (slice exports,
            scaled by ``normalization``), ``hu_window`` (volumes in HU through ``window``) or
            ``auto`` (from the data); the resolved value is kept in ``hparams`` and checkpoints.
        window: ``(center, width)`` in HU for ``hu_window`` (default lung, -600/1500).
        rotate, zoom, shift, hflip, vflip: the seed's augmentation (degrees, fractions, probabilities).
        brightness, contrast, gamma, blur: intensity augmentation (0 disables).
        balance_sources: sample each source equally often in training (several roots).
        soft_masks: training targets are the lesion fraction of each resized pixel (area
            resize, bilinear augmentation) instead of nearest-neighbour {0, 1}; validation and
            test masks stay binary.
        lung_masks: also read lung masks where a source has them (manifest ``lung_mask`` column,
            a ``lungs/`` folder beside ``masks/``) for a model with a lung output; linked to
            ``model.lung_output`` by ``covidseg fit``. At least one source must have them.
            Slices and volumes alike; checked before training (readable, on the image's
            pixels, not grey levels).
        lung_labels: lung mask values that are lung; ``None``: every non-zero value (binary
            masks, left/right lung maps 1/2, lobe maps).
        lesion_classes: which sources' masks carry lesion classes, per source name (or root):
            label value -> ``ggo`` or ``consolidation``, e.g. ``{medseg50: {1: ggo, 2:
            consolidation}}`` (``covidseg.data.classes``: read from ``masks_multiclass/`` beside
            ``masks/`` where the source has it, else from the mask itself, e.g. NIfTI label
            maps). Samples then carry ``classes`` ``[2, S, S]`` and ``has_classes``; sources not
            named are binary ("infection") and supervise only the union. Linked to
            ``model.lesion_classes`` by ``covidseg fit``.
        unlabelled: a folder of unlabelled slices (``covidseg.data.unlabelled``) for
            semi-supervised training (``model.consistency_weight``): each training batch then
            also carries as many unlabelled slices, drawn at random from those whose case is not
            in validation or test (held out with their patients, so a fold does not leak).
    """

    def __init__(
        self,
        root: str | list[str] | None = None,
        image_size: int = 128,
        patch_size: int | None = None,
        foreground_fraction: float = 0.0,
        normalization: Normalization = "auto",
        batch_size: int = 16,
        num_workers: int | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 42,
        num_folds: int = 1,
        fold: int = 0,
        split_file: str | None = None,
        case_regex: str | None = None,
        empty_masks: EmptyMaskPolicy = "keep",
        lesion_labels: list[int] | None = None,
        intensity: Intensity = "auto",
        window: tuple[float, float] = LUNG_WINDOW,
        rotate: float = 10.0,
        zoom: float = 0.1,
        shift: float = 0.1,
        hflip: float = 0.5,
        vflip: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        gamma: float = 0.0,
        blur: float = 0.0,
        balance_sources: bool = False,
        soft_masks: bool = False,
        lung_masks: bool = False,
        lung_labels: list[int] | None = None,
        lesion_classes: dict[str, dict[int, str]] | None = None,
        unlabelled: str | None = None,
    ):
        super().__init__()
        check_resolution(image_size, patch_size, foreground_fraction)
        self.save_hyperparameters()
        self.roots = [root] if isinstance(root, str) else list(root) if root else None
        self.image_size = image_size
        self.normalization = normalization
        self.batch_size = batch_size
        self.intensity = self._resolve_intensity()
        self.report: DataReport | None = None
        self.split: dict[str, str] = {}
        self.datasets: dict[str, SliceDataset] = {}

    # -- discovery ---------------------------------------------------------------------------
    def _resolve_intensity(self) -> str:
        """``auto`` -> what the data holds; written back to ``hparams`` so that checkpoints
        store the protocol used, never ``auto``."""
        hp = self.hparams
        if hp.window[1] <= 0:
            raise DataError(f"data.window {list(hp.window)}: width must be positive")
        try:
            kind = data_kind(self.roots) if self.roots else "image"
        except DataError:
            if hp.intensity == "auto":
                raise  # e.g. a missing folder: the same one-line error validate_data() would give
            kind = None
        wanted = {"volume": "hu_window", "image": "image"}.get(kind)
        if hp.intensity == "auto":
            hp.intensity = wanted
            # the logged copy too: Lightning merges it with the model's (linked) hparams
            if getattr(self, "_hparams_initial", None) is not None:
                self._hparams_initial.intensity = wanted
        elif wanted and hp.intensity != wanted:
            raise DataError(f"data.intensity={hp.intensity} but the data are {kind}s ({wanted}); use --data.intensity {wanted} or auto")
        return hp.intensity

    def validated(self) -> DataReport:
        """Finds and validates all pairs once (raises ``DataError``) and prints a summary."""
        if self.report is None:
            roots = self.roots or [str(ensure_demo())]
            hp = self.hparams
            if self.intensity == "auto":
                data_kind(roots)  # raises the DataError that left it unresolved
            self.report = validate_data(roots, hp.case_regex, hp.empty_masks, hp.lesion_labels, lung_labels=hp.lung_labels, lesion_classes=hp.lesion_classes)
            if hp.lung_masks and not any(s.lung_mask for s in self.report.samples):
                raise DataError(f"data.lung_masks: none of {', '.join(map(str, roots))} has lung masks (a manifest lung_mask column or a lungs/ folder beside masks/)")
            rank_zero_info(self.report.summary())
            if note := case_note(self.report.samples):
                rank_zero_info(note)
        return self.report

    def make_split(self) -> dict[str, str]:
        samples = self.validated().samples
        hp = self.hparams
        if hp.split_file:
            return read_splits(hp.split_file, samples)
        return assign_splits(samples, hp.val_fraction, hp.test_fraction, hp.split_seed, hp.num_folds, hp.fold)

    def samples(self, split: str) -> list[Sample]:
        return [s for s in self.validated().samples if self.split[s.image] == split]

    def check_world_size(self, world_size: int) -> None:
        """Raises ``DataError`` when a non-empty split has fewer slices than processes.

        Evaluation shards each split across processes without padding (padding would count
        slices twice), so every process needs at least one slice of every split it evaluates;
        training is checked too, since fewer training slices than processes is a mistake.
        Every rank computes the same split, so every rank raises the same error, before any
        collective. Call it after ``make_split`` (it makes the split if needed).
        """
        if world_size <= 1:
            return
        split = self.split or self.make_split()
        counts = Counter(split[s.image] for s in self.validated().samples)  # slices: a volume is one split entry
        for name in ("train", "val", "test"):
            n = counts.get(name, 0)
            if 0 < n < world_size:
                hint = _MORE_SLICES[name]
                if name == "val" and self.hparams.num_folds > 1:
                    hint = "lower --data.num_folds"
                if self.hparams.split_file:
                    hint = f"give more cases to '{name}' in {self.hparams.split_file}"
                raise DataError(
                    f"the {name} split has {n} slice(s), fewer than the {world_size} processes (trainer.devices x trainer.num_nodes) "
                    f"that each need one: {hint}, use more cases, or lower --trainer.devices"
                )

    @property
    def num_workers(self) -> int:
        """``data.num_workers``, or by default ``default_num_workers`` for the processes the
        trainer runs on this node (``trainer.num_devices``; Lightning's own DDP launcher sets no
        ``LOCAL_WORLD_SIZE``), decided when the loaders are built, once the trainer is known."""
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        return default_num_workers(self.trainer.num_devices if self.trainer is not None else None)

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.split = self.make_split()
        self.check_world_size(self.trainer.world_size if self.trainer is not None else 1)  # before any collective below
        rank_zero_info(split_summary(self.validated().samples, self.split))
        # trainer.log_dir is a collective under DDP: every rank asks. Without a logger (e.g.
        # fast_dev_run) there is no run directory, and nothing is written.
        log_dir = self.trainer.log_dir if self.trainer is not None and self.trainer.logger is not None else None
        if log_dir and self.trainer.is_global_zero:
            write_splits(Path(log_dir) / "splits.csv", self.validated().samples, self.split)
        hp = self.hparams
        aug = train_transforms(**{name: hp[name] for name in inspect.signature(train_transforms).parameters})
        for name in ("train", "val", "test"):
            train = name == "train"
            patches = dict(patch_size=hp.patch_size, foreground_fraction=hp.foreground_fraction) if train else {}
            self.datasets[name] = SliceDataset(
                self.samples(name), self.image_size, self.normalization, aug if train else None, hp.soft_masks and train, hp.lesion_labels, tuple(hp.window), hp.lung_masks,
                lung_labels=hp.lung_labels, lesion_classes=bool(hp.lesion_classes), **patches,
            )
        if not len(self.datasets["train"]):
            raise DataError("the split left no training slices; lower val_fraction/test_fraction")
        if hp.unlabelled:
            from covidseg.data.unlabelled import UnlabelledDataset, held_in, read_unlabelled

            slices = read_unlabelled(hp.unlabelled, hp.case_regex)
            kept, dropped, known = held_in(slices, self.validated().samples, self.split)
            if not kept:
                raise DataError(f"data.unlabelled {hp.unlabelled}: every slice belongs to a validation or test case; nothing left to train on")
            self.datasets["unlabelled"] = UnlabelledDataset(kept, self.image_size, self.normalization, aug, hp.patch_size)
            cases = len({s.case_id for s in slices})
            rank_zero_info(f"unlabelled: {len(kept)} slices of {len({s.case_id for s in kept})} cases for training; {dropped} of validation/test cases held out; "
                           f"{known} of the {cases} unlabelled case ids are labelled cases")  # fmt: skip
            if not known:
                rank_zero_warn(f"data.unlabelled {hp.unlabelled}: none of its {cases} case ids is a labelled case, so no validation or test patient's "
                               "unlabelled slices can be held out; spell its manifest's case_id as the labelled data's manifest does")  # fmt: skip

    def _loader(self, name: str, shuffle: bool = False, sampler=None) -> DataLoader:
        dataset = self.datasets[name]
        if sampler is None and name != "train" and dist.is_available() and dist.is_initialized():
            # No padding: a DistributedSampler repeats samples to even out ranks, which would
            # count them twice in the metrics. It asserts that every rank gets a slice: say so
            # first, in one line (setup already checked unless this module was set up elsewhere).
            from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

            self.check_world_size(dist.get_world_size())

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            **self._worker_options(),
        )

    def _worker_options(self) -> dict:
        """The DataLoader options every loader shares: its workers, kept between epochs, started
        as ``worker_context`` says."""
        n = self.num_workers
        return {"num_workers": n, "persistent_workers": n > 0, "multiprocessing_context": worker_context(n), "worker_init_fn": dump_worker_stacks_on_signal if n else None}

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if self.hparams.balance_sources:
            samples = self.datasets["train"].samples
            per_source = Counter(s.source for s in samples)
            weights = [1.0 / per_source[s.source] for s in samples]
            sampler = WeightedRandomSampler(weights, num_samples=len(samples), replacement=True)
        labelled = self._loader("train", shuffle=True, sampler=sampler)
        if "unlabelled" not in self.datasets:
            return labelled
        from pytorch_lightning.utilities import CombinedLoader
        from torch.utils.data import RandomSampler

        # an epoch stays one pass over the labelled slices (recipes are in epochs); unlabelled
        # slices are drawn at random, as many as labelled ones
        unlabelled = self.datasets["unlabelled"]
        draw = RandomSampler(unlabelled, replacement=True, num_samples=len(self.datasets["train"]))
        extra = DataLoader(unlabelled, batch_size=self.batch_size, sampler=draw, drop_last=False, **self._worker_options())
        return CombinedLoader({"labelled": labelled, "unlabelled": extra}, mode="min_size")

    def val_dataloader(self) -> DataLoader:
        if not len(self.datasets["val"]):
            raise DataError("the validation split is empty; set data.val_fraction > 0 or use more cases")
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        name = "test" if len(self.datasets["test"]) else "val"
        if name == "val":
            rank_zero_info("test split is empty: testing on the validation split")
        return self._loader(name)

    def state_dict(self) -> dict:
        """Stored in every checkpoint: the split by ``Sample.key`` and the absolute data roots,
        so ``evaluate --split`` finds both from any directory."""
        samples = self.validated().samples if self.split else []
        roots = self.roots or [str(ensure_demo())]
        return {"split": {s.key: self.split[s.image] for s in samples}, "roots": [str(Path(r).resolve()) for r in roots]}
