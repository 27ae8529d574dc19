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
(``docs/experiments/CV/fold-*.json``; ``covidseg.model.pretrained.card_fields`` writes these fields), the agreement, and its terms of use.
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


def main(argv: list[str] | None = None) -> int:
    from covidseg.data.phantom import write_chest as make_volume

    from covidseg.data.samples import image_of
    from covidseg.data.validate import validate_data
    from covidseg.data.volumes import read_volume
    from covidseg.errors import CovidSegError
    from covidseg.model.card import read_card
    from covidseg.model.checkpoint import read_checkpoint
    from covidseg.model import provenance
    from covidseg.model.pretrained import card_fields, packaging

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
    experiments = REPO / "docs" / "experiments"
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
            "recipe": card_fields.recipe(loaded),
            **packaging.training_inputs(loaded),  # initial weights and their licence, unlabelled data, classes
            "trained_on": card_fields.trained_on(a.ckpt),
            "cross_validation": card_fields.cv_scores(experiments / a.cv) if a.cv else {},
        }
        volume_threshold, card["volume_rule"] = card_fields.volume_operating_point(a.volume_threshold, experiments / a.cv if a.cv else None)
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
