"""Evaluate one checkpoint or a fold ensemble and write a report folder.

    python -m covidseg.evaluate --ckpt CKPT [CKPT ...] --data.root PATH [PATH ...] --output DIR
    python -m covidseg.evaluate --ckpt RUN/checkpoints/best.ckpt --split test --output DIR
        [--threshold T|auto] [--batch-size N] [--device cpu|cuda] [--tensorboard DIR]

Without ``--split`` every pair under ``--data.root`` is scored (an external test set). With
``--split train|val|test`` the split recorded with the run (``RUN/splits.csv``, else the split
stored in the checkpoint) is scored, on ``--data.root`` or else on the data the run trained on.
Slices go through ``inference.Predictor`` (the checkpoint's own preprocessing) and are scored
at their original resolution against ``io.read_mask``. ``--threshold auto`` picks the
Dice-best threshold on the run's validation split and stores it in the checkpoint(s).

Writes ``metrics.json``, ``metrics.md``, ``per_image.csv``, ``roc_curve.png``, ``pr_curve.png``,
``confusion_matrix.png``, ``prediction_samples.png`` and, when the run directory is known,
``learning_curves.png``; see ``covidseg.report`` for the metric rules.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from covidseg import report
from covidseg.errors import CovidSegError, user_errors
from covidseg.inference import Predictor, load_checkpoint
from covidseg.io import normalize_intensity, read_image, read_mask
from covidseg.sources import DataError, Sample, scan
from covidseg.splits import SPLITS, read_splits
from covidseg.synthetic import ensure_demo

PathLike = str | Path


@dataclass
class Scores:
    """What streaming the slices leaves behind: small per-slice rows and pooled histograms.

    Shapes: ``rows``, ``counts`` (tp, fp, fn, tn) and ``auroc`` one entry per slice ``[N]``;
    ``pos``/``neg`` ``int64 [BINS]`` pooled lesion/background probability histograms.
    """

    rows: list[dict] = field(default_factory=list)
    counts: list[tuple[int, int, int, int]] = field(default_factory=list)
    auroc: list[float] = field(default_factory=list)
    pos: np.ndarray = field(default_factory=lambda: np.zeros(report.BINS, np.int64))
    neg: np.ndarray = field(default_factory=lambda: np.zeros(report.BINS, np.int64))


# -- models and data -------------------------------------------------------------------------
def make_predictor(ckpts: Sequence[PathLike], device: str | None = None, threshold: float | None = None, tta: bool | None = None) -> Predictor:
    """``Predictor`` over the checkpoint(s); a bad file raises ``CovidSegError`` naming it."""
    if device == "cuda" and not torch.cuda.is_available():
        raise CovidSegError("--device cuda: no CUDA device is available")
    return Predictor(list(ckpts), device=device, threshold=threshold, tta=tta)


def run_dir_of(ckpt: PathLike) -> Path:
    """The run directory of ``RUN/checkpoints/x.ckpt``."""
    return Path(ckpt).resolve().parent.parent


def stored_data(ckpt: dict) -> tuple[list[str] | None, dict]:
    """The data roots and scan policies a run trained with (``root: None`` is the demo set).

    Returns ``(None, {})`` when the checkpoint holds no DataModule settings.
    """
    hp = ckpt.get("datamodule_hyper_parameters")
    if not isinstance(hp, dict):
        return None, {}
    root = hp.get("root")
    roots = [root] if isinstance(root, str) else [str(r) for r in root] if root else [str(ensure_demo())]
    policies = {k: hp[k] for k in ("case_regex", "empty_masks", "nonbinary_masks") if k in hp}
    return roots, policies


def split_of(path: PathLike, ckpt: dict, samples: list[Sample]) -> dict[str, str]:
    """Image path -> split, from ``RUN/splits.csv`` or else the split stored in the checkpoint."""
    csv_path = run_dir_of(path) / "splits.csv"
    if csv_path.is_file():
        return read_splits(csv_path, samples)
    stored = (ckpt.get("CTDataModule") or {}).get("split")
    if not stored:
        raise CovidSegError(f"{path}: no {csv_path} and no split stored in the checkpoint; the run's splits are unknown")
    table = {str(Path(k).resolve()): v for k, v in stored.items()}
    missing = [s.image for s in samples if str(Path(s.image).resolve()) not in table]
    if missing:
        raise DataError(f"{path}: {len(missing)} image(s) not in the split stored in the checkpoint, e.g. {missing[0]}")
    return {s.image: table[str(Path(s.image).resolve())] for s in samples}


def select_split(ckpts: Sequence[PathLike], loaded: Sequence[dict], samples: list[Sample], name: str) -> list[Sample]:
    """The samples in split ``name``; every run of an ensemble must have the same ones."""
    chosen: list[Sample] | None = None
    for path, ckpt in zip(ckpts, loaded):
        split = split_of(path, ckpt, samples)
        picked = [s for s in samples if split[s.image] == name]
        if chosen is not None and picked != chosen:
            raise CovidSegError(f"{path}: its {name} split differs from that of {ckpts[0]}; an ensemble can only be scored on a split all its runs share")
        chosen = picked
    if not chosen:
        raise DataError(f"{run_dir_of(ckpts[0])}: the {name} split is empty")
    return chosen


# -- scoring ---------------------------------------------------------------------------------
def score(predictor: Predictor, samples: list[Sample], threshold: float, batch_size: int = 8, progress: bool = True, desc: str = "evaluating") -> Scores:
    """Predicts every slice and keeps only counts and histograms (memory stays bounded).

    Each probability map (``float32 [H, W]``, the slice's own size) is compared with
    ``io.read_mask`` (``uint8 [H, W]``) and dropped; only ``batch_size`` maps live at once.
    """
    out = Scores()
    probs = predictor.predict((read_image(s.image) for s in samples), batch_size)
    for s in tqdm(samples, desc=desc, unit="img", disable=not progress):
        try:
            prob = next(probs)
        except RuntimeError as err:  # shape/channel mismatch inside the network
            names = ", ".join(str(p) for p in predictor.paths)
            raise CovidSegError(f"{names}: the model cannot take these slices ({str(err).splitlines()[0][:160]})") from None
        gt = read_mask(s.mask)
        counts = report.pixel_counts(prob, gt, threshold)
        pos, neg = report.prob_histograms(prob, gt)
        out.pos += pos
        out.neg += neg
        auc = report.roc_from_histograms(pos, neg)[3]
        out.auroc.append(np.nan if auc is None else auc)
        out.counts.append(counts)
        r = report.rates(*counts)
        out.rows.append(
            {"file": s.image, "case_id": s.case_id, "source": s.source, "dice": float(r["dice"]), "iou": float(r["iou"]), "gt_pixels": counts[0] + counts[2], "pred_pixels": counts[0] + counts[1]}
        )
    return out


def tune_threshold(predictor: Predictor, ckpts: Sequence[PathLike], loaded: Sequence[dict], samples: list[Sample], batch_size: int = 8, progress: bool = True) -> tuple[float, float]:
    """Dice-best grid threshold (0.05..0.95) on ``samples``, written into every checkpoint.

    Returns:
        ``(threshold, global pixel Dice at it)``.
    """
    scores = score(predictor, samples, 0.5, batch_size, progress, desc="tuning threshold")
    t, dice = report.best_threshold(scores.pos, scores.neg)
    for path, ckpt in zip(ckpts, loaded):
        store_threshold(path, ckpt, t)
    return t, dice


def store_threshold(path: PathLike, ckpt: dict, threshold: float) -> None:
    """Rewrites a checkpoint with ``hyper_parameters.threshold`` set; everything else kept."""
    store_settings(path, ckpt, threshold=float(threshold))


def store_settings(path: PathLike, ckpt: dict, **settings) -> None:
    """Rewrites a checkpoint with inference settings (``threshold``, ``tta``) in its
    hyper-parameters, atomically; everything else is kept."""
    path = Path(path)
    ckpt["hyper_parameters"].update(settings)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


# -- the report ------------------------------------------------------------------------------
def _pick_samples(rows: list[dict]) -> list[tuple[str, int]]:
    """Worst, median and best slice by Dice, among slices with lesion when there are any."""
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
            curves = report.read_learning_curves(d)
            if curves:
                runs[f"{d.parent.name}/{d.name}"] = curves
    return runs


def write_report(
    model: Predictor | PathLike | Sequence[PathLike],
    samples: list[Sample],
    output: PathLike,
    *,
    threshold: float | None = None,
    threshold_source: str | None = None,
    split: str | None = None,
    roots: Sequence[PathLike] | None = None,
    run_dirs: Sequence[PathLike] | None = None,
    tensorboard=None,
    step: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Scores ``samples`` and writes every report file into ``output``; returns ``metrics.json``.

    Args:
        model: a ``Predictor`` or checkpoint path(s) (several: an ensemble).
        samples: the slices to score (e.g. ``CTDataModule.samples("test")``).
        output: report folder (created).
        threshold: lesion threshold; ``None`` uses the one stored with the model.
        threshold_source: how the threshold was chosen, for the report text.
        split: name of the split scored (report text and TensorBoard tag prefix).
        roots: data roots, for the report text (default: the samples' source folders).
        run_dirs: run directories whose TensorBoard events give the learning curves (default:
            ``RUN`` of each ``RUN/checkpoints/x.ckpt``).
        tensorboard: a log dir or a ``SummaryWriter``: ROC, PR, confusion matrix and samples
            are added as figures under ``{split or 'test'}/``.
        step: TensorBoard global step of those figures.
    """
    predictor = model if isinstance(model, Predictor) else make_predictor([model] if isinstance(model, (str, Path)) else model, device)
    if not samples:
        raise DataError("no slices to evaluate")
    t = predictor.settings.threshold if threshold is None else float(threshold)
    source = threshold_source or ("stored with the model" if threshold is None else "given")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    scores = score(predictor, samples, t, batch_size, progress)
    counts = np.asarray(scores.counts, dtype=np.int64)
    metrics = {
        "checkpoints": [str(p) for p in predictor.paths],
        "roots": [str(r) for r in roots] if roots else sorted({str(Path(s.image).parent.parent) for s in samples}),
        "split": split,
        "threshold_source": source,
        "tta": predictor.settings.tta,
        **report.summarize(counts, np.asarray(scores.auroc), scores.pos, scores.neg, [s.case_id for s in samples], [s.source for s in samples], t),
    }
    report.write_json(out / "metrics.json", metrics)
    (out / "metrics.md").write_text(report.markdown(metrics))
    report.write_per_image(out / "per_image.csv", scores.rows)

    tp, fp, fn, tn = (int(v) for v in counts.sum(0))
    g = metrics["global"]
    picks = _pick_samples(scores.rows)
    raws = [read_image(samples[i].image) for _, i in picks]
    rows = [
        (f"{name}: {Path(samples[i].image).name}\nDice {scores.rows[i]['dice']:.3f}", normalize_intensity(raw, predictor.settings.normalization), read_mask(samples[i].mask), prob)
        for (name, i), raw, prob in zip(picks, raws, predictor.predict(raws, batch_size))
    ]
    figures = {
        "roc_curve": report.roc_figure(scores.pos, scores.neg, (1 - g["specificity"], g["recall"]) if None not in (g["specificity"], g["recall"]) else None, t),
        "pr_curve": report.pr_figure(scores.pos, scores.neg, (g["recall"], g["precision"]), t),
        "confusion_matrix": report.confusion_figure(tp, fp, fn, tn, t),
        "prediction_samples": report.samples_figure(rows, t, "slices with lesion" if any(r["gt_pixels"] for r in scores.rows) else "all slices"),
    }
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else list(dict.fromkeys(run_dir_of(p) for p in predictor.paths))
    curves = _learning_curves(dirs)
    if curves:
        figures["learning_curves"] = report.learning_curves_figure(curves)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png")
    if tensorboard is not None:
        _log_figures(tensorboard, figures, split or "test", step)
    return metrics


def _log_figures(tensorboard, figures: dict, prefix: str, step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = tensorboard if isinstance(tensorboard, SummaryWriter) else SummaryWriter(str(tensorboard))
    for name in ("roc_curve", "pr_curve", "confusion_matrix", "prediction_samples"):
        writer.add_figure(f"{prefix}/{name}", figures[name], global_step=step, close=False)
    if writer is tensorboard:
        writer.flush()
    else:
        writer.close()


def evaluate(
    ckpts: PathLike | Sequence[PathLike],
    roots: Sequence[PathLike] | None = None,
    output: PathLike = "evaluation",
    split: str | None = None,
    threshold: float | str | None = None,
    batch_size: int = 8,
    device: str | None = None,
    tensorboard: PathLike | None = None,
    progress: bool = True,
    tta: bool | None = None,
) -> dict:
    """Finds the slices (all pairs, or a split of the run), settles the threshold, writes the report.

    Args:
        ckpts: checkpoint path(s); several are a fold ensemble (probabilities averaged).
        roots: data folder(s) as for fit; optional with ``split`` (default: the run's data).
        output: report folder.
        split: ``train``, ``val`` or ``test`` of the run, or ``None`` for every pair.
        threshold: a value, ``None`` (stored with the model) or ``"auto"`` (Dice-best on the
            run's validation split, then stored in the checkpoint files).
        tensorboard: optional log dir for the figures.
        tta: flip test-time augmentation; ``None`` uses the setting stored with the model.

    Returns:
        The content of ``metrics.json``.
    """
    ckpts = [Path(ckpts)] if isinstance(ckpts, (str, Path)) else [Path(c) for c in ckpts]
    if split is not None and split not in SPLITS:
        raise CovidSegError(f"--split {split}: expected one of {', '.join(SPLITS)}")
    if threshold is not None and threshold != "auto" and not 0 < float(threshold) < 1:
        raise CovidSegError(f"--threshold {threshold}: expected a value in (0, 1) or auto")
    if split is None and not roots:
        raise CovidSegError("--data.root is required unless --split selects a split of the checkpoint's run")
    predictor = make_predictor(ckpts, device, tta=tta)
    loaded = [load_checkpoint(p) for p in ckpts] if split or threshold == "auto" else []
    scanned: dict[tuple, list[Sample]] = {}

    def pairs(data_roots: Sequence[PathLike], policies: dict) -> list[Sample]:
        key = (tuple(str(r) for r in data_roots), tuple(sorted(policies.items())))
        if key not in scanned:
            scanned[key] = scan(data_roots, **policies).samples
        return scanned[key]

    run_roots, policies = stored_data(loaded[0]) if loaded else (None, {})
    eval_roots = list(roots) if roots else run_roots
    if eval_roots is None:
        raise CovidSegError(f"{ckpts[0]}: no data settings stored in the checkpoint; pass --data.root")
    if split:
        samples = select_split(ckpts, loaded, pairs(eval_roots, policies), split)
    else:
        samples = pairs(eval_roots, {})

    source = None
    if threshold == "auto":
        tune_roots = eval_roots if split else run_roots  # the run's validation data
        if tune_roots is None:
            raise CovidSegError(f"{ckpts[0]}: no data settings stored in the checkpoint; --threshold auto needs the run's data (use --split with --data.root)")
        val = select_split(ckpts, loaded, pairs(tune_roots, policies), "val")
        threshold, dice = tune_threshold(predictor, ckpts, loaded, val, batch_size, progress)
        source = f"auto: Dice-best on {len(val)} validation slices"
        print(f"threshold auto: {threshold:.2f} (global pixel Dice {dice:.4f} on {len(val)} validation slices); stored in {', '.join(map(str, ckpts))}")
    return write_report(
        predictor,
        samples,
        output,
        threshold=None if threshold is None else float(threshold),
        threshold_source=source,
        split=split,
        roots=eval_roots,
        tensorboard=tensorboard,
        batch_size=batch_size,
        progress=progress,
    )


# -- command line ----------------------------------------------------------------------------
def _threshold(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number nor auto") from None
    if not 0 < t < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1)")
    return t


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m covidseg.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", nargs="+", required=True, metavar="CKPT", help="checkpoint(s); several are averaged (fold ensemble)")
    p.add_argument("--data.root", dest="roots", nargs="+", metavar="PATH", help="data folder(s) as for fit; default with --split: the run's data")
    p.add_argument("--split", choices=SPLITS, help="score this split of the checkpoint's run instead of every pair")
    p.add_argument("--output", required=True, metavar="DIR", help="report folder")
    p.add_argument("--threshold", type=_threshold, metavar="T|auto", help="lesion threshold (default: stored with the model); auto tunes it on the run's validation split and stores it")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--tensorboard", metavar="DIR", help="also add the figures to this TensorBoard log dir")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="average flipped predictions (default: as stored with the model)")
    return p.parse_args(argv)


@user_errors
def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; prints the metric table and the report folder."""
    a = parse_args(argv)
    metrics = evaluate(a.ckpt, a.roots, a.output, a.split, a.threshold, a.batch_size, a.device, a.tensorboard, tta=a.tta)
    print("\n" + report.metric_table(metrics))
    print(f"\nreport: {Path(a.output).resolve()}")
    return metrics


if __name__ == "__main__":
    main()
