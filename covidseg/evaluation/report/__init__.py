"""The evaluation report of a model on a set of slices, scored at the model's operating point.

``write_report`` scores the slices (``covidseg.evaluation.scoring``), then writes ``metrics.json``,
``metrics.md``, ``per_image.csv`` and, for volumes, ``per_case.csv`` (``writers``), ``roc_curve.png``, ``pr_curve.png``,
``confusion_matrix.png``, ``dice_by_lesion_size.png``, ``prediction_samples.png`` (``figures``) and, when the run's TensorBoard
events are found, ``learning_curves.png`` (``curves``). Metric rules: ``covidseg.metrics.scores``.
With ``viewer``, ``index.html`` and ``viewer/`` (``covidseg.viewer``) show each case with its
Dice and truth against prediction.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidseg.data.cache import cache_volume
from covidseg.data.io import normalize_intensity
from covidseg.data.samples import Sample, image_of, mask_of
from covidseg.data.volumes import display_spacing
from covidseg.errors import DataError
from covidseg.evaluation.report import curves, figures, writers
from covidseg.evaluation.runs import run_dir_of
from covidseg.evaluation.scoring import Scores, score
from covidseg.metrics import scores as M
from covidseg.metrics.summary import case_summary, headline, lung_summary, summarize
from covidseg.model.predictor import Predictor
from covidseg.viewer import ViewerWriter

PathLike = str | Path


def pick_samples(rows: list[dict]) -> list[tuple[str, int]]:
    """Best, median and worst slice by Dice, among slices with lesion when there are any."""
    pool = [i for i, r in enumerate(rows) if r["gt_pixels"] > 0] or list(range(len(rows)))
    order = sorted(pool, key=lambda i: (rows[i]["dice"], i))
    picks = [("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])]
    seen, out = set(), []
    for name, i in picks:
        if i not in seen:
            seen.add(i)
            out.append((name, i))
    return out


def _learning_curves(run_dirs: Sequence[Path]) -> dict[str, dict]:
    runs = {}
    for d in run_dirs:
        if any(d.glob("events.out.tfevents.*")):
            found = curves.read_learning_curves(d)
            if found:
                runs[f"{d.parent.name}/{d.name}"] = found
    return runs


def log_to_tensorboard(tensorboard, metrics: dict, figs: dict, prefix: str, step: int) -> None:
    """Adds the headline numbers as scalars ``{prefix}/{name}`` and the figures under ``{prefix}/``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = tensorboard if isinstance(tensorboard, SummaryWriter) else SummaryWriter(str(tensorboard))
    for name, value in headline(metrics).items():
        writer.add_scalar(f"{prefix}/{name}", value, global_step=step)
    for name in ("roc_curve", "pr_curve", "confusion_matrix", "dice_by_lesion_size", "prediction_samples"):
        writer.add_figure(f"{prefix}/{name}", figs[name], global_step=step, close=False)
    if writer is tensorboard:
        writer.flush()
    else:
        writer.close()


def write_report(
    predictor: Predictor,
    samples: list[Sample],
    output: PathLike,
    *,
    threshold_source: str | None = None,
    split: str | None = None,
    roots: Sequence[PathLike] | None = None,
    run_dirs: Sequence[PathLike] | None = None,
    tensorboard=None,
    step: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    lesion_labels: list[int] | None = None,
    viewer: bool = False,
    lung_labels: list[int] | None = None,
    tensorboard_prefix: str | None = None,
    anatomy: bool = True,
) -> dict:
    """Scores ``samples`` at the predictor's operating point and writes every report file into
    ``output``; returns the content of ``metrics.json``.

    Args:
        predictor: the model(s) with their threshold and TTA setting.
        samples: the slices to score (e.g. a split of the run).
        output: report folder (created).
        threshold_source: how the threshold was chosen, for the report text.
        split: name of the split scored (report text and TensorBoard tag prefix).
        roots: data roots, for the report text (default: the samples' source folders).
        run_dirs: run directories whose TensorBoard events give the learning curves (default:
            ``RUN`` of each ``RUN/checkpoints/x.ckpt``).
        tensorboard: a log dir or a ``SummaryWriter``: headline scalars and figures are added
            under ``{split or 'test'}/``.
        step: TensorBoard global step of those.
        tensorboard_prefix: their tag prefix instead (fit's report on the validation split: ``report_val``).
        lesion_labels: label values that are lesion (label-map masks), as the model was trained.
        viewer: also write ``index.html`` and ``viewer/``: each case in a browser, with its Dice
            and truth against prediction (``covidseg.viewer``).
        anatomy: score the anatomy stage's output, as predict writes it (``scoring.score``).
    """
    if not samples:
        raise DataError("no slices to evaluate")
    s = predictor.card
    t = s.threshold
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    sink = _viewer(predictor, out, split) if viewer else None
    scores = score(predictor, samples, t, batch_size, progress, lesion_labels=lesion_labels, on_slice=_keeper(sink, s.normalization) if sink else None, lung_labels=lung_labels, anatomy=anatomy)
    counts = np.asarray(scores.counts, dtype=np.int64)
    pos, neg = scores.pos, scores.neg
    metrics = {
        "checkpoints": [str(p) for p in predictor.paths],
        "roots": [str(r) for r in roots] if roots else sorted({str(Path(x.image).parent.parent) for x in samples}),
        "split": split,
        "threshold_source": threshold_source or "stored with the model",
        "tta": s.tta,
        **summarize(counts, np.asarray(scores.auroc), pos, neg, [x.case_id for x in samples], [x.source for x in samples], t),
    }
    if scores.cases:
        metrics["per_case"] = case_summary(scores.cases)
        writers.write_per_case(out / "per_case.csv", scores.cases)
    if scores.lungs:
        metrics["lungs"] = lung_summary(scores.lungs)
    if scores.classes:
        from covidseg.evaluation.classes import class_summary

        metrics["classes"] = class_summary(scores.classes)
    writers.write_json(out / "metrics.json", metrics)
    (out / "metrics.md").write_text(writers.markdown(metrics))
    writers.write_per_image(out / "per_image.csv", scores.rows)

    tp, fp, fn, tn = (int(v) for v in counts.sum(0))
    g = metrics["global"]
    picks = pick_samples(scores.rows)
    raws = [image_of(samples[i], s.window) for _, i in picks]
    rows = [
        (f"{name}: {Path(samples[i].image).name}\nDice {scores.rows[i]['dice']:.3f}", normalize_intensity(raw, s.normalization), mask_of(samples[i], lesion_labels), prob)
        for (name, i), raw, prob in zip(picks, raws, predictor.predict(raws, batch_size))
    ]
    figs = {
        "roc_curve": figures.roc_figure(pos, neg, (1 - g["specificity"], g["recall"]) if None not in (g["specificity"], g["recall"]) else None, t),
        "pr_curve": figures.pr_figure(pos, neg, (g["recall"], g["precision"]), t),
        "confusion_matrix": figures.confusion_figure(tp, fp, fn, tn, t),
        "dice_by_lesion_size": figures.lesion_size_figure(metrics["by_lesion_size"]),
        "prediction_samples": figures.samples_figure(rows, t, "slices with lesion" if any(r["gt_pixels"] for r in scores.rows) else "all slices"),
    }
    if "classes" in metrics:
        figs["class_confusion_matrix"] = figures.matrix_figure(np.array(metrics["classes"]["confusion"]), metrics["classes"]["labels"],
                                                               f"Class confusion matrix (threshold {t:.2f})\ncounts and share of each true class")  # fmt: skip
    if metrics.get("lungs", {}).get("severity"):
        figs["involvement"] = figures.involvement_figure(metrics["lungs"]["severity"]["cases_table"])
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else list(dict.fromkeys(run_dir_of(p) for p in predictor.paths))
    found = _learning_curves(dirs)
    if found:
        figs["learning_curves"] = curves.learning_curves_figure(found)
    for name, fig in figs.items():
        fig.savefig(out / f"{name}.png")
    if tensorboard is not None:
        log_to_tensorboard(tensorboard, metrics, figs, tensorboard_prefix or split or "test", step)
    if sink:
        sink.write(case_columns(scores, metrics))
    return metrics


def _viewer(predictor: Predictor, out: Path, split: str | None) -> ViewerWriter:
    s = predictor.card
    line = f"{', '.join(p.name for p in predictor.paths)} \u00b7 threshold {s.threshold:g} \u00b7 TTA {'on' if s.tta else 'off'}"
    return ViewerWriter(out, f"covidseg evaluate: {out.resolve().name}" + (f" ({split} split)" if split else ""), line, lungs=s.lung_output, truth=True)


def _keeper(sink: ViewerWriter, normalization: str):
    """``score``'s ``on_slice``: each slice into the viewer, in the model's display."""
    ml: dict[str, float] = {}

    def keep(sample: Sample, raw: np.ndarray, pred: np.ndarray, truth: np.ndarray, lungs: np.ndarray | None) -> None:
        if sample.slice is not None and sample.image not in ml:  # as metrics.volume: display spacing in mm -> mL
            ml[sample.image] = math.prod(display_spacing(np.array(cache_volume(sample.image).affine))) / 1000.0
        label = f"{Path(sample.image).name} slice {sample.slice + 1}" if sample.slice is not None else Path(sample.image).name
        sink.add_slice(sample.case_id, normalize_intensity(raw, normalization), pred, lungs=lungs, truth=truth, label=label,
                       kind="image" if sample.slice is None else "volume", source=sample.image, ml_per_voxel=ml.get(sample.image))  # fmt: skip

    return keep


def case_columns(scores: Scores, metrics: dict) -> dict[str, dict]:
    """The viewer's per-case evaluation columns: Dice (3D for volumes, ``metrics.volume``; else
    of the case's pooled slice counts), truth lesion mL, and the true involvement and grade of
    ``metrics["lungs"]`` (cases with true lung masks)."""
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(4, np.int64))
    for row, c in zip(scores.rows, scores.counts):
        counts[row["case_id"]] += c
    out = {case: {"dice": float(M.rates(*c)["dice"])} for case, c in counts.items()}
    for c in scores.cases:
        out[c["case_id"]].update(dice=c["dice"], truth_ml=c["truth_ml"])
    for c in metrics.get("lungs", {}).get("severity", {}).get("cases_table", []):
        out[c["case_id"]].update(truth_involvement_percent=c["true_percent"], truth_grade=c["true_grade"])
    return out
