"""Scores one finished cross-validation fold and writes its result file (``scripts/crossval.sh``).

    python scripts/cv_fold.py RUN_DIR --name NAME --fold K --num_folds 5 --output docs/experiments/NAME/fold-K.json \
        [--commit SHA] [--train_seconds S] [--command "..."]

The fold's ``RUN_DIR/checkpoints/last.ckpt`` (its final epoch) predicts the fold's held-out
patients without and with flip TTA; the file holds per-source per-image Dice at thresholds
0.3-0.7, and at 0.5 the global Dice, Dice by lesion size and, for lung-output models, lung Dice
and the per-patient involvement error (``covidseg.evaluation.crossval.fold_record``).

    python scripts/cv_fold.py RUN_DIR --rescore docs/experiments/NAME/fold-K.json

adds what today's scoring records and the file lacks (e.g. ``classes_by_threshold``) to a fold
file from the same run's checkpoint: every score the file already has must come out the same
(within 1e-6), or nothing is written; the file's ``rescored`` says what was added, when and at
which commit.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from covidseg.evaluation.crossval import fold_record, score_fold


def _write(record: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out)  # a fold cut short leaves no result file, so it is simply run again


def merge(old, new, path: str = "scores") -> tuple[object, list[str], list[str]]:
    """``old`` with what ``new`` adds: ``(merged, added key paths, differing key paths)``. A
    number differs when it moved by more than 1e-6; ``None``/NaN equal themselves."""
    if isinstance(old, dict) and isinstance(new, dict):
        merged, added, differ = dict(old), [], []
        for k, v in new.items():
            if k not in old:
                merged[k] = v
                added.append(f"{path}/{k}")
            else:
                merged[k], a, d = merge(old[k], v, f"{path}/{k}")
                added += a
                differ += d
        return merged, added, differ
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        parts = [merge(a, b, f"{path}/{i}") for i, (a, b) in enumerate(zip(old, new))]
        return [p[0] for p in parts], [a for p in parts for a in p[1]], [d for p in parts for d in p[2]]
    same = old == new or (isinstance(old, float) and isinstance(new, float) and (abs(old - new) <= 1e-6 or old != old and new != new))
    return old, [], [] if same else [path]


def rescore(run: str, path: Path) -> int:
    """``--rescore``: adds today's new score fields to an existing fold file (module docstring)."""
    record = json.loads(path.read_text())
    merged, added, differ = merge(record["scores"], score_fold(run, progress=True))
    if differ:
        print(f"cv_fold: {path} not rescored: {len(differ)} existing score(s) differ, e.g. {differ[0]}", file=sys.stderr)
        return 2
    if not added:
        print(f"cv_fold: {path} already has every score; unchanged")
        return 0
    here = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip() or "unknown"
    fields = sorted({a.split("/")[-1] for a in added})  # the new keys' names, e.g. classes_by_threshold, or 0.10 inside each patient's pred_percent
    note = f"{', '.join(fields)} added by scripts/cv_fold.py --rescore at {here} {datetime.date.today().isoformat()} (same checkpoint; every other score identical)"
    record["scores"], record["rescored"] = merged, "; ".join(filter(None, [record.get("rescored"), note]))
    _write(record, path)
    print(f"cv_fold: {path} rescored: added {', '.join(fields)}")
    return 0


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--rescore", type=Path, default=None, help="an existing fold file to add today's new score fields to")
    p.add_argument("--name")
    p.add_argument("--fold", type=int)
    p.add_argument("--num_folds", type=int)
    p.add_argument("--output")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--train_seconds", type=float, default=0.0)
    p.add_argument("--command", default="")
    a = p.parse_args(argv)
    if a.rescore:
        raise SystemExit(rescore(a.run, a.rescore))
    if None in (a.name, a.fold, a.num_folds, a.output):
        p.error("--name, --fold, --num_folds and --output are required (or --rescore FILE)")
    record = fold_record(a.run, a.name, a.fold, a.num_folds, a.command, a.commit, a.train_seconds, progress=True)
    out = Path(a.output)
    _write(record, out)
    medians = {s: v["dice_image"] for s, v in record["scores"]["tta"]["at_0.5"].items()}
    print(f"cv_fold: wrote {out} (epochs {record['epochs']}, {record['train_seconds'] / 60:.1f} min training; TTA, threshold 0.5: "
          + ", ".join(f"{s} {d:.3f}" for s, d in medians.items()) + ")")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
