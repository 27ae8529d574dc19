"""Scoring slices with a ``Predictor``: per-slice counts and histograms kept, maps dropped.

Each probability map (``float32 [H, W]``, the slice's own size) is compared with the mask as
read from disk, never resized, through ``metrics.confusion_counts`` and ``metrics.histograms``;
only ``batch_size`` maps live at once, so memory stays bounded whatever the number of slices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from covidseg import metrics
from covidseg.errors import CovidSegError
from covidseg.inference import Predictor
from covidseg.io import read_image, read_mask
from covidseg.sources import Sample


@dataclass
class Scores:
    """What streaming the slices leaves behind.

    Shapes: ``rows``, ``counts`` (tp, fp, fn, tn), ``auroc`` one entry per slice ``[N]``;
    ``hists`` per-slice ``[N, 2, BINS]`` background/lesion histograms (int32).
    """

    rows: list[dict] = field(default_factory=list)
    counts: list[tuple[int, int, int, int]] = field(default_factory=list)
    auroc: list[float] = field(default_factory=list)
    hists: list[np.ndarray] = field(default_factory=list)

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


def score(predictor: Predictor, samples: Sequence[Sample], threshold: float, batch_size: int = 8, progress: bool = True, desc: str = "evaluating") -> Scores:
    """Predicts every slice of ``samples`` and scores it at ``threshold``."""
    out = Scores()
    probs = predictor.predict((read_image(s.image) for s in samples), batch_size)
    for s in tqdm(samples, desc=desc, unit="img", disable=not progress):
        try:
            prob = next(probs)
        except RuntimeError as err:  # shape/channel mismatch inside the network
            names = ", ".join(str(p) for p in predictor.paths)
            raise CovidSegError(f"{names}: the model cannot take these slices ({str(err).splitlines()[0][:160]})") from None
        p, gt = torch.from_numpy(prob)[None], torch.from_numpy(read_mask(s.mask))[None]
        tp, fp, fn, tn = (int(v) for v in metrics.confusion_counts(p, gt, threshold)[0])
        hist = metrics.histograms(p, gt).numpy().astype(np.int32)
        auc = metrics.roc_from_histograms(hist[1], hist[0])[2]
        out.counts.append((tp, fp, fn, tn))
        out.hists.append(hist)
        out.auroc.append(np.nan if auc is None else auc)
        r = metrics.rates(tp, fp, fn, tn)
        out.rows.append(
            {"file": s.image, "case_id": s.case_id, "source": s.source, "dice": float(r["dice"]), "iou": float(r["iou"]), "gt_pixels": tp + fn, "pred_pixels": tp + fp}
        )
    return out


def tuned_path(ckpt: str | Path) -> Path:
    """``RUN/checkpoints/best.ckpt`` -> ``RUN/checkpoints/best.tuned.ckpt``."""
    ckpt = Path(ckpt)
    return ckpt.with_name(f"{ckpt.stem}.tuned{ckpt.suffix}")


def write_tuned(ckpt: str | Path, loaded: dict, threshold: float, note: str) -> Path:
    """Writes a copy of a loaded checkpoint with ``threshold`` as its operating point next to the
    input (``tuned_path``); the input file is never modified."""
    out = tuned_path(ckpt)
    copy = {**loaded, "hyper_parameters": {**loaded["hyper_parameters"], "threshold": float(threshold)}, "covidseg_tuning": note}
    tmp = out.with_name(out.name + ".tmp")
    torch.save(copy, tmp)
    os.replace(tmp, out)
    return out
