"""Cross-validation folds: each fold's last checkpoint scored on its own held-out patients, one
small result record per fold (``docs/experiments/NAME/fold-K.json``), and the paired table of
two experiments over their common folds (``scripts/crossval.sh``, ``scripts/cv_summary.py``,
``scripts/experiments/cv_tune.py``)."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from covidseg.data.samples import Sample
from covidseg.evaluation.runs import split_samples
from covidseg.evaluation.scoring import score
from covidseg.metrics.summary import lung_summary, summarize
from covidseg.model.checkpoint import read_checkpoint
from covidseg.model.predictor import Predictor

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # the operating points a fold is scored at
REPORTED = 0.5  # threshold of the per-source details (global Dice, lesion size, lungs)
RECORD_VERSION = 1


def fold_validation(run: str | Path) -> tuple[Path, list[Sample]]:
    """A fold run's last checkpoint and the slices of its validation split (its held-out fold)."""
    ckpt = Path(run) / "checkpoints" / "last.ckpt"
    return ckpt, split_samples(ckpt, "val")


def score_fold(run: str | Path, progress: bool = False) -> dict:
    """Scores a fold's ``last.ckpt`` on its validation split, without and with flip TTA.

    Returns:
        ``{"plain"|"tta": {"by_threshold": {"0.3": {source: per-image Dice}, ...},
        "at_0.5": {source: {images, cases, dice_image, dice_global, by_lesion_size}},
        "lungs": {lung_dice_image, lung_dice_global, mean/max_abs_error_pp, grade_accuracy, cases},
        "classes": {slices, ggo: {dice, sensitivity, specificity, dice_global}, consolidation: ..., confusion}}}``
        (``lungs`` only for a lung-output model, ``classes`` only for a class model on slices with
        class labels, ``evaluation.classes.class_summary``; both at lesion threshold 0.5), and for
        a class model ``"classes_by_threshold": {"0.3": class summary, ...}`` at each of
        ``THRESHOLDS``, split from the same maps (``score``'s ``class_thresholds``).
    """
    ckpt, samples = fold_validation(run)
    sources, cases = [s.source for s in samples], [s.case_id for s in samples]
    out = {}
    for key, tta in (("plain", False), ("tta", True)):
        predictor = Predictor(ckpt, device="cpu", tta=tta, threshold=REPORTED)
        scores = score(predictor, samples, REPORTED, batch_size=16, progress=progress, desc=f"fold {key}", anatomy=False,  # the network's maps, as every fold file before issue 30
                       class_thresholds=THRESHOLDS)  # fmt: skip
        dice = scores.dice_by_threshold(THRESHOLDS)  # [N, T]
        of_source = {src: np.asarray(sources) == src for src in sorted(set(sources))}
        by_threshold = {f"{t:.1f}": {src: float(dice[rows, j].mean()) for src, rows in of_source.items()} for j, t in enumerate(THRESHOLDS)}
        summary = summarize(np.asarray(scores.counts), np.asarray(scores.auroc), scores.pos, scores.neg, cases, sources, REPORTED)
        per_source = summary.get("per_source") or {
            sources[0]: {"images": len(samples), "cases": len(set(cases)), "dice_image": summary["per_image_mean"]["dice"],
                         "dice_global": summary["global"]["dice"], "by_lesion_size": summary["by_lesion_size"]}  # fmt: skip
        }
        out[key] = {"by_threshold": by_threshold, f"at_{REPORTED}": per_source}
        if scores.lungs:
            lungs = lung_summary(scores.lungs)
            sev = lungs["severity"]
            out[key]["lungs"] = {
                "slices": lungs["slices"],
                "lung_dice_image": lungs["lung_dice_image"],
                "lung_dice_global": lungs["lung_dice_global"],
                "mean_abs_error_pp": sev.get("mean_abs_error_pp"),
                "max_abs_error_pp": sev.get("max_abs_error_pp"),
                "grade_accuracy": sev.get("grade_accuracy"),
                "grade_baseline_accuracy": sev.get("baseline_accuracy"),
                "cases": sev.get("cases_table"),
                "involvement_by_threshold": lungs.get("involvement_by_threshold"),
            }
        if scores.classes:
            from covidseg.evaluation.classes import class_summary

            out[key]["classes"] = class_summary(scores.classes)
            out[key]["classes_by_threshold"] = {t: class_summary(ms) for t, ms in scores.classes_by_threshold.items()}
    return out


def fold_record(run: str | Path, name: str, fold: int, num_folds: int, command: str, commit: str, train_seconds: float, progress: bool = False) -> dict:
    """The result file of one finished fold: its scores and how they were made."""
    ckpt = Path(run) / "checkpoints" / "last.ckpt"
    loaded = read_checkpoint(ckpt)
    hp = loaded["hyper_parameters"]
    start = time.monotonic()
    scores = score_fold(run, progress)
    return {
        "version": RECORD_VERSION,
        "name": name,
        "fold": fold,
        "num_folds": num_folds,
        "command": command,
        "commit": commit,
        "epochs": int(loaded["epoch"]) + 1,
        "train_seconds": round(train_seconds),
        "score_seconds": round(time.monotonic() - start),
        "torch_threads": torch.get_num_threads(),
        "recipe": {k: hp.get(k) for k in ("image_size", "patch_size", "foreground_fraction", "lung_output", "dice_per_image", "lr", "encoder_name")},
        **resolved_recipe(run),
        "scored": "last.ckpt (final epoch) on the fold's held-out patients; per-image Dice by threshold, without (plain) and with flip TTA (tta)",
        "scores": scores,
    }


# what differs between the folds (or machines) of one recipe, left out of its hash
_PER_FOLD_KEYS = {"data": ("fold", "root", "num_workers"), "trainer": ("logger", "default_root_dir", "enable_progress_bar"), "": ("ckpt_path",)}


def resolved_recipe(run: str | Path) -> dict:
    """The run's resolved ``config.yaml`` and the hash of its recipe (the config without the
    fold, data paths and logger), so a changed recipe cannot hide under an old experiment name.
    Runs without a ``config.yaml`` give ``{}``."""
    import yaml

    path = Path(run) / "config.yaml"
    if not path.is_file():
        return {}
    config = yaml.safe_load(path.read_text()) or {}
    recipe = json.loads(json.dumps(config, default=str))
    for section, keys in _PER_FOLD_KEYS.items():
        target = recipe if not section else recipe.get(section) or {}
        for key in keys:
            target.pop(key, None)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return {"recipe_sha256": digest, "config": config}


def read_records(folder: str | Path) -> dict[int, dict]:
    """Fold number -> record, from ``folder/fold-K.json``."""
    return {r["fold"]: r for r in (json.loads(p.read_text()) for p in sorted(Path(folder).glob("fold-*.json")))}


def setting_scores(record: dict, tta: str, threshold: str) -> dict[str, float]:
    """Source -> per-image Dice of one fold at one setting (``tta`` ``plain``/``tta``, threshold ``"0.4"``)."""
    return record["scores"][tta]["by_threshold"][threshold]


def best_setting(records: dict[int, dict]) -> tuple[str, str, float]:
    """The TTA mode and threshold with the best mean over sources of the fold-averaged per-image
    Dice (chosen over all the given folds at once, as the stored operating point is)."""
    best = None
    first = next(iter(records.values()))
    for tta in ("plain", "tta"):
        for t in first["scores"][tta]["by_threshold"]:
            value = mean_of_sources(records, tta, t)
            if best is None or value > best[2]:
                best = (tta, t, value)
    return best


def source_means(records: dict[int, dict], tta: str, threshold: str) -> dict[str, float]:
    """Source -> mean over folds of the per-image Dice at one setting."""
    per = [setting_scores(r, tta, threshold) for r in records.values()]
    return {s: statistics.mean(p[s] for p in per) for s in sorted(per[0])}


def pooled_by_lesion_size(records: dict[int, dict], mode: str = "tta") -> dict[str, dict[str, dict]]:
    """Source -> lesion-size bin -> ``{"images", "dice_image"}``: per-image Dice at threshold 0.5
    pooled over every fold's held-out slices (each slice weighs the same)."""
    acc: dict[str, dict[str, list[float]]] = {}
    for r in records.values():
        for source, v in r["scores"][mode]["at_0.5"].items():
            for label, b in v["by_lesion_size"].items():
                total = acc.setdefault(source, {}).setdefault(label, [0.0, 0])
                total[0] += (b["dice_image"] or 0.0) * b["images"]
                total[1] += b["images"]
    return {s: {label: {"images": n, "dice_image": total / n} for label, (total, n) in bins.items() if n} for s, bins in acc.items()}


def class_means(per_fold: list[dict]) -> dict:
    """Per-class Dice, sensitivity and specificity: the mean over folds of each fold's per-image
    means (``evaluation.classes.class_summary`` per fold; a fold without a value is skipped),
    with the slices counted."""
    from covidseg.data.classes import CLASS_NAMES

    out: dict = {"slices": sum(p["slices"] for p in per_fold)}
    for name in CLASS_NAMES:
        out[name] = {m: (statistics.mean(vals) if (vals := [p[name][m] for p in per_fold if p[name][m] is not None]) else None)
                     for m in ("dice", "sensitivity", "specificity")}  # fmt: skip
    return out


def mean_of_sources(records: dict[int, dict], tta: str, threshold: str) -> float:
    return statistics.mean(source_means(records, tta, threshold).values())


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def print_fold_table(runs: list[str], folds: list[dict[tuple, dict[str, float]]], columns: list[str]) -> tuple[tuple, float]:
    """Prints one markdown row per setting (``columns`` name the setting's key fields): per-source
    means over folds with the per-fold values, and the mean of sources. Returns the best row."""
    sources = sorted(folds[0][next(iter(folds[0]))])
    print(f"folds: {len(folds)} ({', '.join(map(str, runs))})")
    print("| " + " | ".join(columns) + " | " + " | ".join(f"{s} mean (per fold)" for s in sources) + " | mean of sources |")
    print("|" + "---|" * (len(columns) + len(sources) + 1))
    best = None
    for key in folds[0]:
        means = {s: statistics.mean(f[key][s] for f in folds) for s in sources}
        overall = statistics.mean(means.values())
        cells = " | ".join(f"{means[s]:.3f} ({', '.join(f'{f[key][s]:.3f}' for f in folds)})" for s in sources)
        print("| " + " | ".join(str(k) for k in key) + f" | {cells} | {overall:.4f} |")
        if best is None or overall > best[1]:
            best = (key, overall)
    return best
