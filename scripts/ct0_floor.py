"""Measurement: how much lung involvement does a model predict on studies WITHOUT lesion?

    python scripts/ct0_floor.py CKPT [--cases 20] [--slices 8] [--size 128] [--seed 1000]

Generates lesion-free synthetic cases (``synthetic.generate(lesions=False)``: the demo's
anatomy, every mask empty), predicts them with a lung-output checkpoint at its stored threshold
and prints each case's predicted involvement (lesion pixels inside the predicted lungs / lung
pixels, summed over the case's slices, as predict reports it) and their maximum. Any positive
value would grade a healthy study CT-1 without a CT-0 floor (``severity.CT0_MAX_PERCENT``); the
floor was set above what this measured (README, "Severity"). Synthetic anatomy is a stand-in:
see the README for the real data a proper floor needs.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np

from covidseg.data.io import read_image
from covidseg.data.synthetic import generate
from covidseg.metrics.severity import CT0_MAX_PERCENT, LUNG_THRESHOLD, grade, involvement
from covidseg.model.predictor import Predictor


def measure(ckpt: str | Path, cases: int = 20, slices: int = 8, size: int = 128, seed: int = 1000, device: str = "cpu") -> dict:
    """Per-case predicted involvement (percent) on lesion-free cases, and its summary."""
    predictor = Predictor(ckpt, device=device)
    if not predictor.card.lung_output:
        raise SystemExit(f"{ckpt}: no lung output (train with --data.lung_masks true)")
    t = predictor.card.threshold
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "healthy", cases, slices, size, seed, lesions=False)
        with (root / "manifest.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        sums: dict[str, list[int]] = {}
        maps = predictor.predict_maps((read_image(root / r["image"]) for r in rows), batch_size=16)
        for r, m in zip(rows, maps):
            inside, lung, _ = involvement(m[0] >= t, m[1] >= LUNG_THRESHOLD)
            s = sums.setdefault(r["case_id"], [0, 0])
            s[0], s[1] = s[0] + inside, s[1] + lung
    percents = {c: 100.0 * i / lung if lung else float("nan") for c, (i, lung) in sums.items()}
    values = np.array(list(percents.values()))
    return {
        "checkpoint": str(ckpt), "threshold": t, "cases": len(percents), "slices_per_case": slices, "size": size,
        "per_case_percent": percents, "max_percent": float(np.nanmax(values)), "p95_percent": float(np.nanpercentile(values, 95)),
        "cases_with_any_lesion": int((values > 0).sum()), "floor_percent": CT0_MAX_PERCENT,
        "grades_with_floor": sorted({grade(p) for p in values if not np.isnan(p)}),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1000)
    a = p.parse_args(argv)
    out = measure(a.ckpt, a.cases, a.slices, a.size, a.seed)
    print(json.dumps(out, indent=1))
    print(f"{out['cases_with_any_lesion']} of {out['cases']} lesion-free cases have predicted lesion in the lungs; "
          f"max {out['max_percent']:.3f} %, 95th percentile {out['p95_percent']:.3f} %; floor {CT0_MAX_PERCENT} %: grades {out['grades_with_floor']}")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
