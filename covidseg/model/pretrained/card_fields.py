"""What a built-in model's card says about how it was made (``scripts/package_model.py``): the
training split it saw, its recipe, its cross-validated scores and the volume operating point
chosen on those folds. ``packaging`` slims the checkpoint and checks agreement; this module only
reads the run's files and the experiment's fold records."""

from __future__ import annotations

from pathlib import Path

from covidseg.evaluation.crossval import best_setting, class_means, pooled_by_lesion_size, read_records, source_means
from covidseg.evaluation.volume_rule import choose

RECIPE_MODEL = ("encoder_name", "decoder_channels", "lung_output", "dice_per_image", "lr", "scheduler")
RECIPE_DATA = ("image_size", "patch_size", "foreground_fraction", "batch_size", "balance_sources", "rotate", "zoom",
               "shift", "hflip", "brightness", "contrast", "gamma", "blur")  # fmt: skip


def trained_on(ckpt_path: str | Path) -> dict:
    """Sources and case/slice counts of the run's training split (``RUN/splits.csv`` beside the
    checkpoint's ``checkpoints/`` folder; empty when the run has none)."""
    splits = Path(ckpt_path).resolve().parent.parent / "splits.csv"
    if not splits.is_file():
        return {}
    rows = [line.split(",") for line in splits.read_text().splitlines()[1:] if line]  # key,case_id,split
    train = [r for r in rows if r[-1] == "train"]
    slices: dict[str, int] = {}
    cases: dict[str, set] = {}
    for key, case, _ in train:
        source = key.split("/")[0]
        slices[source] = slices.get(source, 0) + 1
        cases.setdefault(source, set()).add(case)
    return {"slices": len(train), "cases": sum(len(c) for c in cases.values()), "slices_per_source": slices,
            "cases_per_source": {k: len(c) for k, c in cases.items()}, "held_out_slices": len(rows) - len(train)}  # fmt: skip


def recipe(ckpt: dict) -> dict:
    """What trained the model: network, loss, optimisation and data settings, epochs and steps."""
    hp, data = ckpt["hyper_parameters"], ckpt.get("datamodule_hyper_parameters") or {}
    out = {k: hp.get(k) for k in RECIPE_MODEL}
    out.update({k: data.get(k) for k in RECIPE_DATA})
    out.update(epochs=ckpt.get("epoch", -1) + 1, steps=ckpt.get("global_step"))
    return out


def cv_scores(experiment: str | Path) -> dict:
    """The recipe's cross-validated scores from an experiment folder of fold records
    (``docs/experiments/NAME``; empty if it holds none)."""
    experiment = Path(experiment)
    records = read_records(experiment)
    if not records:
        return {}
    tta, t, overall = best_setting(records)
    out = {"experiment": experiment.name, "folds": sorted(records), "operating_point": {"tta": tta == "tta", "threshold": float(t)},
           "per_image_dice": source_means(records, tta, t), "mean_of_sources": overall,
           "per_image_dice_by_lesion_size_at_0.5": pooled_by_lesion_size(records, tta)}  # fmt: skip
    per_fold = [(r["scores"][tta].get("classes_by_threshold") or {}).get(t) for r in records.values()]
    if all(per_fold):  # a class model whose folds score the classes at every threshold
        out["classes_at_operating_point"] = class_means(per_fold)
    lungs = [r["scores"][tta].get("lungs") for r in records.values() if r["scores"][tta].get("lungs")]
    if lungs:
        out["lung_dice_image"] = sum(v["lung_dice_image"] for v in lungs) / len(lungs)
        errors = [c["abs_error_pp"] for v in lungs for c in v["cases"] or []]
        out["involvement_abs_error_pp"] = {"mean": sum(errors) / len(errors), "max": max(errors), "cases": len(errors)} if errors else None
    return out


def volume_operating_point(value: str, experiment: str | Path | None) -> tuple[float | None, dict | None]:
    """``--volume_threshold``: ``(threshold or None, what chose it)``. ``none`` keeps the
    checkpoint's; a number is taken as given; ``auto`` applies ``evaluation.volume_rule.choose``
    to the experiment's folds (none when there is no experiment or its files hold no involvement
    by threshold)."""
    if value == "none":
        return None, None
    if value != "auto":
        return float(value), {"rule": "given", "volume_threshold": float(value)}
    if not experiment:
        return None, None
    try:
        rule = choose(read_records(Path(experiment)))
    except ValueError:
        return None, None
    name = Path(experiment).name
    return rule["volume_threshold"], {"rule": f"least mean involvement error over the {name} folds' patients (covidseg.evaluation.volume_rule)", **rule}
