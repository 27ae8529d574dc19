"""Turns a trained checkpoint into a built-in model of the package (``covidseg/model/pretrained``).

    python scripts/package_model.py CKPT --slices ../shared/data/medseg50 ../shared/data/zenodo20 \
        [--volume scan.nii.gz] [--cv reference] [--volume_threshold auto] [--name reference] [--version 1] [--output covidseg/model/pretrained/reference.ckpt]

Slims ``CKPT`` (the checkpoint ``scripts/reproduce.sh`` prints) to fp16 weights plus its model
card, then predicts with both on up to ``--max_slices`` slices of each ``--slices`` folder and on
one CT volume (``--volume``, else a generated 512x512 CT-like volume), each at the checkpoint's
operating point (threshold, TTA) and in the intensity protocol it was trained with, and writes
the file only if the masks agree (mean per-slice Dice >= 0.99 for lesions and lungs,
probabilities within 0.02); otherwise it writes nothing and exits 2. The card records the commit the checkpoint was trained from and whether that tree was clean
(``covidseg.model.provenance``, stored by ``covidseg fit``; ``packaged_from`` is this checkout), what the
model was trained on (its run's data and split), its recipe, its cross-validated scores
(``docs/experiments/CV/fold-*.json`` via ``covidseg.evaluation.crossval``), the agreement, and its terms of use.
``--volume_threshold auto`` (the default) writes the volume operating point that
``covidseg.evaluation.volume_rule.choose`` picks on the ``--cv`` folds' patients into the model
card (none when their files hold no involvement by threshold); a number sets it, ``none`` keeps the checkpoint's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]


def trained_on(ckpt_path: Path) -> dict:
    """Sources and case/slice counts of the run's training split (``RUN/splits.csv``)."""
    splits = ckpt_path.resolve().parent.parent / "splits.csv"
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
    out = {k: hp.get(k) for k in ("encoder_name", "decoder_channels", "lung_output", "dice_per_image", "lr", "scheduler")}
    out.update({k: data.get(k) for k in ("image_size", "patch_size", "foreground_fraction", "batch_size", "balance_sources", "rotate", "zoom",
                                         "shift", "hflip", "brightness", "contrast", "gamma", "blur")})  # fmt: skip
    out.update(epochs=ckpt.get("epoch", -1) + 1, steps=ckpt.get("global_step"))
    return out


def cv_scores(name: str) -> dict:
    """The recipe's cross-validated scores from ``docs/experiments/NAME`` (empty if none)."""
    from covidseg.evaluation.crossval import best_setting, pooled_by_lesion_size, read_records, source_means

    records = read_records(REPO / "docs" / "experiments" / name)
    if not records:
        return {}
    tta, t, overall = best_setting(records)
    out = {"experiment": name, "folds": sorted(records), "operating_point": {"tta": tta == "tta", "threshold": float(t)},
           "per_image_dice": source_means(records, tta, t), "mean_of_sources": overall,
           "per_image_dice_by_lesion_size_at_0.5": pooled_by_lesion_size(records, tta)}  # fmt: skip
    lungs = [r["scores"][tta].get("lungs") for r in records.values() if r["scores"][tta].get("lungs")]
    if lungs:
        out["lung_dice_image"] = sum(v["lung_dice_image"] for v in lungs) / len(lungs)
        errors = [c["abs_error_pp"] for v in lungs for c in v["cases"] or []]
        out["involvement_abs_error_pp"] = {"mean": sum(errors) / len(errors), "max": max(errors), "cases": len(errors)} if errors else None
    return out


def volume_operating_point(value: str, cv: str | None) -> tuple[float | None, dict | None]:
    """``--volume_threshold``: ``(threshold or None, what chose it)``; ``auto`` applies
    ``evaluation.volume_rule.choose`` to the ``--cv`` experiment's folds."""
    from covidseg.evaluation.crossval import read_records
    from covidseg.evaluation.volume_rule import choose

    if value == "none":
        return None, None
    if value != "auto":
        return float(value), {"rule": "given", "volume_threshold": float(value)}
    if not cv:
        return None, None
    try:
        rule = choose(read_records(REPO / "docs" / "experiments" / cv))
    except ValueError:
        return None, None
    return rule["volume_threshold"], {"rule": f"least mean involvement error over the {cv} folds' patients (covidseg.evaluation.volume_rule)", **rule}


def main(argv: list[str] | None = None) -> int:
    from covidseg.data.phantom import write_chest as make_volume

    from covidseg.data.samples import image_of
    from covidseg.data.validate import validate_data
    from covidseg.data.volumes import read_volume
    from covidseg.errors import CovidSegError
    from covidseg.model.card import read_card
    from covidseg.model.checkpoint import read_checkpoint
    from covidseg.model import provenance
    from covidseg.model.pretrained import packaging

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("--slices", nargs="*", default=[], help="data folders whose slices are checked")
    p.add_argument("--max_slices", type=int, default=200, help="per --slices folder (evenly spaced)")
    p.add_argument("--volume", type=Path, default=None, help="a CT volume to check (default: a generated 512x512 one)")
    p.add_argument("--volume_slices", type=int, default=40, help="slices of the generated volume")
    p.add_argument("--cv", default=None, help="experiment in docs/experiments with the recipe's cross-validated scores")
    p.add_argument("--volume_threshold", default="auto", help="auto (chosen on the --cv folds), none, or a lesion threshold for volumes")
    p.add_argument("--name", default="reference")
    p.add_argument("--version", default="1")
    p.add_argument("--output", type=Path, default=None, help="default: covidseg/model/pretrained/NAME.ckpt")
    p.add_argument("--min_dice", type=float, default=packaging.MIN_DICE)
    p.add_argument("--max_prob_diff", type=float, default=packaging.MAX_PROB_DIFF)
    a = p.parse_args(argv)
    output = a.output or REPO / "covidseg" / "model" / "pretrained" / f"{a.name}.ckpt"
    try:
        loaded = read_checkpoint(a.ckpt)
        model_card = read_card(loaded)
        checks = {}
        for root in a.slices:
            samples = validate_data([root]).samples
            step = max(1, len(samples) // a.max_slices)
            checks[f"slices:{Path(root).name}"] = [image_of(s, model_card.window) for s in samples[::step][: a.max_slices]]
        with tempfile.TemporaryDirectory() as tmp:
            volume = a.volume or make_volume(Path(tmp) / "ct.nii.gz", a.volume_slices, 512)
            checks[f"volume:{volume.name if a.volume else 'generated 512x512x%d CT' % a.volume_slices}"] = list(read_volume(volume, *model_card.window)[1])
        card = {
            "name": a.name,
            "version": a.version,
            "created": datetime.date.today().isoformat(),
            **provenance.card_fields(loaded),  # the commit the checkpoint was trained from, and whether that tree was clean
            "packaged_from": provenance.git_provenance(REPO),
            "recipe": recipe(loaded),
            **packaging.training_inputs(loaded),  # initial weights and their licence, unlabelled data, classes
            "trained_on": trained_on(a.ckpt),
            "cross_validation": cv_scores(a.cv) if a.cv else {},
        }
        volume_threshold, card["volume_rule"] = volume_operating_point(a.volume_threshold, a.cv)
        written = packaging.write(a.ckpt, output, card, checks, a.min_dice, a.max_prob_diff, volume_threshold)
    except CovidSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = output.stat().st_size / 2**20
    print(json.dumps(written["agreement"], indent=1))
    print(f"package_model: wrote {output} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
