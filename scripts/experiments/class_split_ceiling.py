"""Where a class model's ground-glass / consolidation Dice is lost: in the lesion mask or in the split.

    python scripts/experiments/class_split_ceiling.py RUN_DIR [RUN_DIR ...] [--threshold 0.3]   # fold runs of a class recipe

For each fold run (``RUN/checkpoints/last.ckpt``, flip TTA, lesion threshold ``--threshold``, by
default the model's own; pass the operating point ``cv_summary`` chose on the folds), on
its held-out class-labelled slices: per-class Dice (``evaluation.classes.class_summary``, per-image
means) when the predicted split divides the predicted lesion (what predict writes) and when it
divides the true lesion (the split alone; lesion errors removed). Then the mean over the runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> int:
    from covidseg.data.samples import classes_of, image_of
    from covidseg.evaluation.classes import class_summary, confusion, true_label_map
    from covidseg.evaluation.crossval import fold_validation
    from covidseg.model.predictor import Predictor
    from covidseg.model.split import class_label_map, split_channel

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--threshold", type=float, default=None, help="lesion threshold (default: each model's own)")
    a = p.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {"predicted lesion": [], "true lesion": []}
    print("| fold run | slices | predicted lesion: GGO / consolidation Dice | true lesion: GGO / consolidation Dice |")
    print("|---|---|---|---|")
    for run in a.runs:
        ckpt, held_out = fold_validation(run)
        samples = [s for s in held_out if s.classes is not None]
        predictor = Predictor(ckpt, device="cpu", tta=True)
        if not predictor.card.classes or not samples:
            print(f"class_split_ceiling: {run}: not a class model, or no held-out class-labelled slice", file=sys.stderr)
            return 2
        t, channel = a.threshold or predictor.card.threshold, split_channel(predictor.card.lung_output)
        truths = [true_label_map(classes_of(s)) for s in samples]
        maps = list(predictor.predict_maps([image_of(s, predictor.card.window) for s in samples], 16))
        cells = []
        for name, lesion in (("predicted lesion", lambda m, truth: m[0] >= t), ("true lesion", lambda m, truth: truth > 0)):
            s = class_summary([confusion(truth, class_label_map(lesion(m, truth), m[channel])) for m, truth in zip(maps, truths)])
            results[name].append((s["ggo"]["dice"], s["consolidation"]["dice"]))
            cells.append(f"{s['ggo']['dice']:.3f} / {s['consolidation']['dice']:.3f}")
        print(f"| {run} | {len(samples)} | {cells[0]} | {cells[1]} |")
    means = [" / ".join(f"{statistics.mean(v[i] for v in results[name]):.3f}" for i in (0, 1)) for name in results]
    print(f"| mean of {len(a.runs)} | | {means[0]} | {means[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
