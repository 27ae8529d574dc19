"""Evaluate a model (a checkpoint, an ONNX export or a fold ensemble) and write a report folder.

    covidseg evaluate --ckpt RUN/checkpoints/best.ckpt --split test --output DIR
    covidseg evaluate --ckpt "[fold0.ckpt, fold1.ckpt]" --data.root /data/external --output DIR

Without ``--split`` every pair under ``--data.root`` is scored (an external test set). With
``--split train|val|test`` the split recorded with the run (``RUN/splits.csv``, else the split
stored in the checkpoint) is scored, on ``--data.root`` (where the data lives now) or else on the
data the run trained on. Scores are taken at the model's operating point (its stored threshold
and TTA; ``--threshold``/``--tta`` override them), at each slice's original resolution.

``--threshold auto`` picks the threshold with the best mean per-image Dice (grid 0.05..0.95) on
the run's validation split (on the run's own data when ``--data.root`` is an external set
scored without ``--split``; refused in one line when that data is not readable here), writes ``NAME.tuned.ckpt`` next to each input checkpoint (the input
is never modified) and reports with it.

``--viewer true`` also writes ``index.html`` and ``viewer/`` into the report folder: every
case with its Dice and true and predicted involvement, sortable, and a slice-by-slice view of
truth against prediction (``covidseg.viewer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from covidseg import options
from covidseg.data.samples import Sample
from covidseg.data.splits import SPLITS
from covidseg.data.validate import validate_data
from covidseg.errors import CovidSegError, DataError, user_errors
from covidseg.evaluation.report import write_report
from covidseg.evaluation.report.writers import metric_table
from covidseg.evaluation.runs import select_split, stored_data
from covidseg.evaluation.scoring import score, write_tuned
from covidseg.metrics.scores import best_threshold
from covidseg.model.checkpoint import read_checkpoint
from covidseg.model.predictor import Predictor

PathLike = str | Path


def tune_threshold(
    predictor: Predictor, ckpts: Sequence[PathLike], loaded: Sequence[dict], samples: list[Sample], batch_size: int = 8, progress: bool = True, lesion_labels: list[int] | None = None
) -> tuple[float, float, list[Path]]:
    """The threshold with the best mean per-image Dice on ``samples`` (the run's validation
    split), written into tuned copies of the checkpoints.

    Returns:
        ``(threshold, mean per-image Dice at it, tuned checkpoint paths)``.
    """
    scores = score(predictor, samples, 0.5, batch_size, progress, desc="tuning threshold", lesion_labels=lesion_labels)
    t, dice = best_threshold(scores.dice_by_threshold())
    note = f"threshold {t:.2f}: best mean per-image Dice ({dice:.4f}) on {len(samples)} validation slices"
    return t, dice, [write_tuned(path, ckpt, t, note) for path, ckpt in zip(ckpts, loaded)]


def _windowed(predictor: Predictor, window: tuple[float, float] | None) -> Predictor:
    """``predictor`` with its volume window replaced by ``window`` (``--data.window``), as predict does."""
    if window is not None:
        predictor.card = replace(predictor.card, window=(float(window[0]), float(window[1])))
    return predictor


def evaluate(
    ckpts: PathLike | Sequence[PathLike],
    roots: Sequence[PathLike] | None = None,
    output: PathLike = "evaluation",
    split: str | None = None,
    threshold: float | str | None = None,
    tta: bool | None = None,
    batch_size: int = 8,
    device: str | None = None,
    tensorboard=None,
    step: int = 0,
    progress: bool = True,
    lesion_labels: list[int] | None = None,
    viewer: bool = False,
    tensorboard_prefix: str | None = None,
    case_regex: str | None = None,
    anatomy: bool = True,
    window: tuple[float, float] | None = None,
    lung_labels: list[int] | None = None,
    lesion_classes: dict | None = None,
) -> dict:
    """Finds the slices (all pairs, or a split of the run), settles the operating point, writes
    the report and returns ``metrics.json``.

    Args:
        ckpts: checkpoint/ONNX path(s); several are a fold ensemble (probabilities averaged).
        roots: data folder(s) as for fit; optional with ``split`` (default: the run's data).
        output: report folder.
        split: ``train``, ``val`` or ``test`` of the run, or ``None`` for every pair.
        threshold: a value, ``None`` (the model's) or ``"auto"`` (see the module docstring).
        tta: flip test-time augmentation; ``None`` uses the model's setting.
        tensorboard, step: optional log dir or writer for scalars and figures.
        lesion_labels: label values that are lesion; default: the mapping the run trained with.
        tensorboard_prefix: tag prefix of those (default: the split's name, or ``test``).
        viewer: also write the HTML case viewer (``index.html``, ``viewer/``) into ``output``.
        case_regex: case id from a file stem (as fit's ``--data.case_regex``): groups the slices
            of an external 2D set into cases for the bootstrap interval and per-case rows.
        window: ``(center, width)`` in HU for volume slices (default: the model's), as predict's.
        lung_labels: lung mask values that are lung (default: the run's; else every non-zero value).
        lesion_classes: which sources' masks carry GGO/consolidation labels, as fit's
            ``--data.lesion_classes`` (default: the run's, for its own data): a class model is
            then also scored per class (``evaluation.classes``).
    """
    ckpts = [Path(ckpts)] if isinstance(ckpts, (str, Path)) else [Path(c) for c in ckpts]
    if split is not None and split not in SPLITS:
        raise CovidSegError(f"--split {split}: expected one of {', '.join(SPLITS)}")
    if threshold not in (None, "auto"):
        options.check_threshold(threshold)
    if split is None and not roots:
        raise CovidSegError("--data.root is required unless --split selects a split of the checkpoint's run")
    options.check_device(device)
    if window is not None and window[1] <= 0:
        raise CovidSegError(f"--data.window {window[0]:g} {window[1]:g}: width must be positive")
    predictor = _windowed(Predictor(ckpts, device=device, tta=tta, threshold=None if threshold == "auto" else threshold), window)
    needs_run = bool(split) or threshold == "auto"
    if needs_run and any(p.suffix.lower() == ".onnx" for p in ckpts):
        raise CovidSegError("--split and --threshold auto need checkpoints (.ckpt): an ONNX file does not know its run")
    loaded = [read_checkpoint(p) for p in ckpts if p.suffix.lower() != ".onnx"]
    run_roots, settings = stored_data(loaded[0]) if loaded else (None, {})
    run_settings = dict(settings)
    if lesion_labels is not None:
        settings["lesion_labels"] = list(lesion_labels)
    elif not split and roots and settings.get("lesion_labels") is not None:
        print(f"lesion labels {settings['lesion_labels']}: the run's mapping, applied to {', '.join(map(str, roots))} (--data.lesion_labels to change)")
    if case_regex is not None:
        settings["case_regex"] = case_regex
    if lung_labels is not None:
        settings["lung_labels"] = list(lung_labels)
    if lesion_classes is not None:
        settings["lesion_classes"] = dict(lesion_classes)
    given = ("lesion_labels", "case_regex", *(("lung_labels",) if lung_labels is not None else ()), *(("lesion_classes",) if lesion_classes is not None else ()))
    eval_roots = list(roots) if roots else run_roots
    if eval_roots is None:
        raise CovidSegError(f"{ckpts[0]}: no data settings stored in the checkpoint; pass --data.root")
    # the run's own data: its scan settings; other data: only the label mapping (and a given case pattern) carry over
    samples = validate_data(eval_roots, **(settings if split else {k: v for k, v in settings.items() if k in given})).samples
    chosen = select_split(ckpts, loaded, samples, split) if split else samples

    source = None
    if threshold == "auto":
        if split or not roots:
            val = select_split(ckpts, loaded, samples, "val")
        else:  # an external set: the validation split lives in the run's own data, not in it
            try:
                if run_roots is None:
                    raise DataError("no data settings stored in the checkpoint")
                run_samples = validate_data(run_roots, **run_settings, progress=progress).samples
            except (DataError, OSError) as err:
                first = str(err).splitlines()[0]
                raise CovidSegError(f"--threshold auto tunes on the run's validation split, but the run's data ({', '.join(run_roots or [])}) cannot be read here ({first}); pass --threshold VALUE") from None
            val = select_split(ckpts, loaded, run_samples, "val")
        t, dice, tuned = tune_threshold(predictor, ckpts, loaded, val, batch_size, progress, settings.get("lesion_labels"))
        predictor = _windowed(Predictor(tuned, device=device, tta=tta), window)
        source = f"auto: best mean per-image Dice on {len(val)} validation slices"
        print(f"threshold auto: {t:.2f} (mean per-image Dice {dice:.4f} on {len(val)} validation slices); wrote {', '.join(map(str, tuned))}")
    elif threshold is not None:
        source = "given"
    return write_report(
        predictor, chosen, output, threshold_source=source, split=split, roots=eval_roots,
        run_dirs=None, tensorboard=tensorboard, step=step, batch_size=batch_size, progress=progress,
        lesion_labels=settings.get("lesion_labels"), viewer=viewer, lung_labels=settings.get("lung_labels"), tensorboard_prefix=tensorboard_prefix, anatomy=anatomy,
    )  # fmt: skip


def build_parser():
    p = options.parser("covidseg evaluate", __doc__)
    options.add_model(p)
    p.add_argument("--data.root", type=list[str] | str | None, default=None, help="data folder(s) as for fit; default with --split: the run's data")
    p.add_argument("--split", type=Literal["train", "val", "test"] | None, default=None, help="score this split of the checkpoint's run instead of every pair")
    p.add_argument("--output", type=str, required=True, help="report folder")
    p.add_argument("--data.lesion_labels", type=list[int] | None, default=None, help="label values that are lesion in label-map masks (default: the mapping the run trained with)")
    p.add_argument("--data.case_regex", "--case_regex", type=str | None, default=None, help="case id from each file stem (first group), as in fit: groups an external set's slices into cases")
    p.add_argument("--data.window", "--window", type=tuple[float, float] | None, default=None, help="HU window [center, width] for volume slices (default: the model's), as in fit and predict")
    p.add_argument("--data.lung_labels", type=list[int] | None, default=None, help="lung mask values that are lung (default: the run's mapping; else every non-zero value), as in fit")
    p.add_argument("--data.lesion_classes", type=dict[str, dict[int, str]] | None, default=None,
                   help="sources whose masks carry classes, as in fit, e.g. \"{medseg50: {1: ggo, 2: consolidation}}\": per-class Dice, sensitivity, specificity")  # fmt: skip
    options.add_inference(p, auto_threshold=True)
    p.add_argument("--viewer", type=bool, default=False, help="also write index.html and viewer/: every case in a browser (offline), with Dice and truth vs prediction")
    p.add_argument("--anatomy", type=bool, default=True, help="score what predict writes: lesions only inside the lungs and the body, lungs cleaned (covidseg.anatomy); false scores the network's maps as they are")
    p.add_argument("--tensorboard", type=str | None, default=None, help="also add scalars and figures to this TensorBoard log dir")
    return p


@user_errors
def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point; prints the metric table and the report folder."""
    a = build_parser().parse_args(argv)
    options.checked(a)
    metrics = evaluate(
        options.model_paths(a.ckpt), options.as_list(a.data.root) or None, a.output, a.split, a.threshold, a.tta, a.batch_size, a.device, a.tensorboard,
        lesion_labels=a.data.lesion_labels, viewer=a.viewer, case_regex=a.data.case_regex, anatomy=a.anatomy, window=a.data.window,
        lung_labels=a.data.lung_labels, lesion_classes=a.data.lesion_classes,
    )  # fmt: skip
    print("\n" + metric_table(metrics))
    print(f"\nreport: {Path(a.output).resolve()}")
    if a.viewer:
        print(f"viewer: {Path(a.output).resolve() / 'index.html'}")
    return metrics


if __name__ == "__main__":
    main()
