"""Scoring slices with a ``Predictor``: per-slice counts and histograms kept, maps dropped.

Each probability map (``float32 [H, W]``, the slice's own size) is compared with the mask as
read from disk, never resized, through ``metrics.confusion_counts`` and ``metrics.histograms``;
only ``batch_size`` maps live at once, so memory stays bounded whatever the number of slices.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from covidseg.data.cache import cache_volume, read_hu_slice, read_mask_slice, read_slice
from covidseg.data.samples import Sample, classes_of, image_of, lesion_labels_of, lung_mask_of, mask_of
from covidseg.data.volumes import display_spacing
from covidseg.errors import CovidSegError
from covidseg.metrics import scores as metrics
from covidseg.metrics.severity import LUNG_THRESHOLD, VOLUME_THRESHOLDS, involvement
from covidseg.model.card import read_card, write_card
from covidseg.model.predictor import Predictor


@dataclass
class Scores:
    """What streaming the slices leaves behind.

    Shapes: ``rows``, ``counts`` (tp, fp, fn, tn), ``auroc`` one entry per slice ``[N]``;
    ``hists`` per-slice ``[N, 2, BINS]`` background/lesion histograms (int32); ``cases`` one
    ``metrics.volume.case_metrics`` row per volume (volume sources only).
    """

    rows: list[dict] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)
    lungs: list[dict] = field(default_factory=list)  # per slice with a true lung mask (lung-output models)
    counts: list[tuple[int, int, int, int]] = field(default_factory=list)
    auroc: list[float] = field(default_factory=list)
    hists: list[np.ndarray] = field(default_factory=list)
    classes: list[np.ndarray] = field(default_factory=list)  # 3x3 per slice with class labels (class models; ``evaluation.classes``)
    classes_by_threshold: dict[str, list[np.ndarray]] = field(default_factory=dict)  # the same at each of score()'s class_thresholds

    @property
    def pos(self) -> np.ndarray:
        return np.sum([h[1] for h in self.hists], 0, dtype=np.int64) if self.hists else np.zeros(metrics.BINS, np.int64)

    @property
    def neg(self) -> np.ndarray:
        return np.sum([h[0] for h in self.hists], 0, dtype=np.int64) if self.hists else np.zeros(metrics.BINS, np.int64)

    def dice_by_threshold(self, thresholds=metrics.THRESHOLD_GRID) -> np.ndarray:
        """Per-image Dice of every slice at every threshold, ``[N, T]``."""
        h = np.stack(self.hists)
        return metrics.dice_by_threshold(h[:, 1], h[:, 0], thresholds)


def score(
    predictor: Predictor,
    samples: Sequence[Sample],
    threshold: float,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "evaluating",
    lesion_labels: list[int] | None = None,
    tolerance_mm: float = 1.0,
    on_slice: Callable[[Sample, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], None] | None = None,
    lung_labels: list[int] | None = None,
    anatomy: bool = True,
    class_thresholds: Sequence[float] = (),
) -> Scores:
    """Predicts every slice of ``samples`` and scores it at ``threshold``; slices of volumes are
    also gathered per volume and scored in 3D (``metrics.volume.case_metrics``).

    Args:
        lesion_labels: the label values that are lesion (label-map masks), as in training.
        lung_labels: the lung mask values that are lung (``None``: every non-zero value).
        tolerance_mm: surface distance that counts as agreement for the volumes' NSD.
        on_slice: called for each slice with ``(sample, raw image, predicted mask, true mask,
            lung mask or None)`` (the HTML viewer); the maps are not kept otherwise.
        anatomy: score what predict writes: each slice through ``anatomy.clean_slice`` (lesion
            probability zero outside the grown lungs and the body, lungs cleaned), each volume's
            3D figures through ``anatomy.clean_volume``.
        class_thresholds: a class model's slices are also split into classes at each of these
            lesion thresholds (``Scores.classes_by_threshold``, keys ``f"{t:.1f}"``), from the
            same maps.
    """
    out = Scores()
    spacings: dict[str, tuple[float, float, float]] = {}
    volume: _Volume | None = None
    raws: deque[np.ndarray] = deque()  # inputs read ahead by predict_maps, until their map comes back
    hus: deque[np.ndarray | None] = deque()  # with the anatomy stage, their HU slices (None for 2D images)

    def images():
        for s in samples:
            # a volume slice is read from the cache once: the network's input is its window, the anatomy stage takes its HU
            hu = read_slice(s.image, s.slice) if anatomy and s.slice is not None else None
            raw = image_of(s, predictor.card.window, hu)
            if on_slice:
                raws.append(raw)
            if anatomy:
                hus.append(hu)
            yield raw

    maps = predictor.predict_maps(images(), batch_size)
    for s in tqdm(samples, desc=desc, unit="img", disable=not progress):
        try:
            m = next(maps)
        except RuntimeError as err:  # shape/channel mismatch inside the network
            names = ", ".join(str(p) for p in predictor.paths)
            raise CovidSegError(f"{names}: the model cannot take these slices ({str(err).splitlines()[0][:160]})") from None
        prob, truth = m[0], mask_of(s, lesion_labels)
        lung_map = m[1] >= LUNG_THRESHOLD if predictor.card.lung_output else None
        if anatomy:
            prob, lung_map = _clean(prob, lung_map, s, threshold, spacings, hus.popleft())
        if predictor.card.classes and s.classes is not None:
            from covidseg.evaluation.classes import confusion, true_label_map
            from covidseg.model.split import class_label_map, split_channel

            split, true_classes = m[split_channel(predictor.card.lung_output)], true_label_map(classes_of(s))
            out.classes.append(confusion(true_classes, class_label_map(prob >= threshold, split)))
            for t in class_thresholds:
                out.classes_by_threshold.setdefault(f"{t:.1f}", []).append(confusion(true_classes, class_label_map(prob >= t, split)))
        if predictor.card.lung_output and s.lung_mask is not None:
            out.lungs.append(_lung_row(s, prob >= threshold, truth, lung_map, lung_mask_of(s, lung_labels), prob))
        if on_slice:
            on_slice(s, raws.popleft(), prob >= threshold, truth.astype(bool), lung_map)
        p, gt = torch.from_numpy(prob)[None], torch.from_numpy(truth)[None]
        tp, fp, fn, tn = (int(v) for v in metrics.confusion_counts(p, gt, threshold)[0])
        hist = metrics.histograms(p, gt).numpy().astype(np.int32)
        auc = metrics.roc_from_histograms(hist[1], hist[0])[2]
        out.counts.append((tp, fp, fn, tn))
        out.hists.append(hist)
        out.auroc.append(np.nan if auc is None else auc)
        r = metrics.rates(tp, fp, fn, tn)
        out.rows.append(
            {"file": s.image if s.slice is None else f"{s.image}#{s.slice}", "case_id": s.case_id, "source": s.source,
             "dice": float(r["dice"]), "iou": float(r["iou"]), "gt_pixels": tp + fn, "pred_pixels": tp + fp}
        )  # fmt: skip
        if s.slice is not None:
            if volume is not None and volume.sample.image != s.image:
                out.cases.append(volume.finish(lesion_labels, tolerance_mm, predictor, threshold, batch_size))
                volume = None
            volume = volume or _Volume(s, anatomy)
            volume.slices[s.slice] = prob >= threshold
            if lesion_labels_of(s, lesion_labels) == lesion_labels:  # read by the 3D truth's label rule: not read again
                volume.truth[s.slice] = truth
            if lung_map is not None:
                volume.lungs[s.slice] = lung_map
    if volume is not None:
        out.cases.append(volume.finish(lesion_labels, tolerance_mm, predictor, threshold, batch_size))
    return out


def _clean(prob: np.ndarray, lung_map: np.ndarray | None, s: Sample, threshold: float, spacings: dict, hu: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One slice through the anatomy stage, as predict applies it: the lesion probability is
    zero where no lesion may lie (so every threshold sees the cleaned output), lungs cleaned.
    ``hu``: a volume slice's HU (``cache.read_slice``), so the body and gas rules apply."""
    from covidseg.anatomy import clean_slice

    spacing = None
    if s.slice is not None:
        if s.image not in spacings:
            spacings[s.image] = display_spacing(np.array(cache_volume(s.image).affine))
        spacing = spacings[s.image][1:]
    a = clean_slice(prob >= threshold, lung_map, hu, spacing)
    if a.region is not None:
        prob = np.where(a.region, prob, np.float32(0))
    return prob, None if a.lungs is None else a.lungs > 0


def _lung_row(s: Sample, lesion: np.ndarray, truth: np.ndarray, lungs: np.ndarray, true_lungs: np.ndarray, prob: np.ndarray | None = None) -> dict:
    """Lung agreement and lesion burden of one slice, predicted and true; with ``prob``, also the
    predicted lesion pixels inside the lungs at every ``VOLUME_THRESHOLDS`` (``by_threshold``),
    from which ``evaluation.volume_rule`` chooses the volume operating point."""
    tp, fp, fn, tn = (int(v) for v in metrics.confusion_counts(torch.from_numpy(lungs.astype(np.float32))[None], torch.from_numpy(true_lungs)[None], 0.5)[0])
    pred_inside, pred_lung, _ = involvement(lesion, lungs)
    true_inside, true_lung, _ = involvement(truth, true_lungs)
    return {"case_id": s.case_id, "counts": (tp, fp, fn, tn), "pred": (pred_inside, pred_lung), "true": (true_inside, true_lung),
            "lesion": (int(lesion.sum()), int(truth.sum())),
            **({"by_threshold": {f"{t:.2f}": int(np.count_nonzero((prob >= t) & lungs)) for t in VOLUME_THRESHOLDS}} if prob is not None else {})}  # fmt: skip


class _Volume:
    """The predicted slices of one volume, scored in 3D against its whole mask once complete.

    Slices the samples left out (``empty_masks=drop``: no lesion in the truth) are predicted
    here, so false positives on them count in the case's Dice, HD95 and mL (issue 23, item 6);
    they are not rows of the per-slice table. The true mask is the slices scored (``truth``, as
    read for them) and the others, read here: what ``cache.read_mask_volume`` gives, each slice
    read once."""

    def __init__(self, sample: Sample, anatomy: bool = False):
        self.sample, self.slices, self.lungs, self.truth, self.anatomy = sample, {}, {}, {}, anatomy

    def finish(self, lesion_labels: list[int] | None, tolerance_mm: float, predictor: Predictor, threshold: float, batch_size: int = 8) -> dict:
        from covidseg.metrics.volume import case_metrics

        info = cache_volume(self.sample.mask, mask=True)
        spacing = display_spacing(np.array(info.affine))
        truth = np.zeros(info.shape, np.uint8)
        for k in range(truth.shape[0]):
            truth[k] = self.truth.pop(k) if k in self.truth else read_mask_slice(self.sample.mask, k, lesion_labels)
        pred = np.zeros(truth.shape, bool)
        for k, mask in self.slices.items():
            pred[k] = mask
        missing = [k for k in range(truth.shape[0]) if k not in self.slices]
        raws = (read_hu_slice(self.sample.image, k, predictor.card.window) for k in missing)
        lungs = np.zeros(truth.shape, bool) if predictor.card.lung_output else None
        for k, m in zip(missing, predictor.predict_maps(raws, batch_size)):
            pred[k] = m[0] >= threshold
            if lungs is not None:
                lungs[k] = m[1] >= LUNG_THRESHOLD
        if self.anatomy:  # the whole volume through the anatomy stage, as predict writes it
            from covidseg.anatomy import clean_volume

            if lungs is not None:
                for k, lung in self.lungs.items():
                    lungs[k] = lung
            pred = clean_volume(pred, lungs, np.load(cache_volume(self.sample.image).cache, mmap_mode="r"), spacing).lesion
        return {"case_id": self.sample.case_id, "file": self.sample.image, "slices": len(self.slices), **case_metrics(pred, truth, spacing, tolerance_mm)}


def tuned_path(ckpt: str | Path) -> Path:
    """``RUN/checkpoints/best.ckpt`` -> ``RUN/checkpoints/best.tuned.ckpt``."""
    ckpt = Path(ckpt)
    return ckpt.with_name(f"{ckpt.stem}.tuned{ckpt.suffix}")


def write_tuned(ckpt: str | Path, loaded: dict, threshold: float, note: str) -> Path:
    """Writes a copy of a loaded checkpoint with ``threshold`` as its operating point next to the
    input (``tuned_path``); the input file is never modified."""
    out = tuned_path(ckpt)
    copy = {**write_card(loaded, replace(read_card(loaded), threshold=float(threshold))), "covidseg_tuning": note}
    tmp = out.with_name(out.name + ".tmp")
    torch.save(copy, tmp)
    os.replace(tmp, out)
    return out
