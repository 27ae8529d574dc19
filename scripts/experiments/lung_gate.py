"""Experiment: does restricting lesion predictions to the (dilated) predicted lungs help?

    python scripts/experiments/lung_gate.py RUN_DIR [RUN_DIR ...]    (fold runs of a lung-output model, scripts/crossval.sh)

Each fold's last checkpoint predicts its own validation patients at its stored threshold and TTA;
the lesion mask is scored as predicted and gated by the predicted lungs grown by 0, 3 or 7 px
(``severity.restrict_to_lungs``), by per-source mean per-image Dice averaged over folds.
"""

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from covidseg.data.samples import image_of, mask_of
from covidseg.evaluation.crossval import fold_validation, print_fold_table
from covidseg.metrics.scores import image_dice
from covidseg.metrics.severity import LUNG_THRESHOLD, restrict_to_lungs
from covidseg.model.predictor import Predictor

GATES = (None, 0, 3, 7)  # None: no gating; else the lungs' dilation in pixels


def fold_scores(run: Path) -> dict[tuple, dict[str, float]]:
    ckpt, samples = fold_validation(run)
    predictor = Predictor(ckpt, device="cpu")
    if not predictor.card.lung_output:
        raise SystemExit(f"{ckpt}: no lung output (train with --data.lung_masks true)")
    t, per = predictor.card.threshold, {}
    maps = predictor.predict_maps((image_of(s, predictor.card.window) for s in samples), batch_size=16)
    for s, m in tqdm(zip(samples, maps), total=len(samples), desc=run.parent.name, leave=False):
        truth, lesion, lungs = mask_of(s) > 0, m[0] >= t, m[1] >= LUNG_THRESHOLD
        for gate in GATES:
            pred = lesion if gate is None else restrict_to_lungs(lesion, lungs, gate)
            per.setdefault((str(gate),), {}).setdefault(s.source, []).append(image_dice(pred, truth))
    return {k: {src: float(np.mean(v)) for src, v in d.items()} for k, d in per.items()}


def main(runs: list[str]) -> None:
    (gate,), overall = print_fold_table(runs, [fold_scores(Path(r)) for r in runs], ["lung gate (dilation px)"])
    print(f"best: gate={gate} (mean of sources {overall:.4f})")


if __name__ == "__main__":
    main(sys.argv[1:])
