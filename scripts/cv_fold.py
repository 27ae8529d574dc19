"""Scores one finished cross-validation fold and writes its result file (``scripts/crossval.sh``).

    python scripts/cv_fold.py RUN_DIR --name NAME --fold K --num_folds 5 --output docs/experiments/NAME/fold-K.json \
        [--commit SHA] [--train_seconds S] [--command "..."]

The fold's ``RUN_DIR/checkpoints/last.ckpt`` (its final epoch) predicts the fold's held-out
patients without and with flip TTA; the file holds per-source per-image Dice at thresholds
0.3-0.7, and at 0.5 the global Dice, Dice by lesion size and, for lung-output models, lung Dice
and the per-patient involvement error (``covidseg.evaluation.crossval.fold_record``).
"""

import argparse
import json
import os
from pathlib import Path

from covidseg.evaluation.crossval import fold_record


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--name", required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--num_folds", type=int, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--train_seconds", type=float, default=0.0)
    p.add_argument("--command", default="")
    a = p.parse_args(argv)
    record = fold_record(a.run, a.name, a.fold, a.num_folds, a.command, a.commit, a.train_seconds, progress=True)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out)  # a fold cut short leaves no result file, so it is simply run again
    medians = {s: v["dice_image"] for s, v in record["scores"]["tta"]["at_0.5"].items()}
    print(f"cv_fold: wrote {out} (epochs {record['epochs']}, {record['train_seconds'] / 60:.1f} min training; TTA, threshold 0.5: "
          + ", ".join(f"{s} {d:.3f}" for s, d in medians.items()) + ")")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
