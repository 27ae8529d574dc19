"""Summarise cross-validation runs: per-source mean per-image Dice over folds (mean and spread),
then per source and lesion-size bin the per-image Dice over all folds' held-out slices (reports
with ``by_lesion_size``, i.e. evaluated since issue 17).

    python scripts/cv_summary.py runs/cv-NAME-fold*/version_*
"""

import json
import statistics
import sys
from pathlib import Path


def main(run_dirs: list[str]) -> None:
    rows: dict[str, dict[str, list[float]]] = {}
    bins: dict[tuple[str, str, str], list[float]] = {}  # (kind, source, bin) -> [dice sum, slices]
    seconds = []
    for run in map(Path, run_dirs):
        if (run / "train_seconds.txt").is_file():
            seconds.append(int((run / "train_seconds.txt").read_text()))
        for kind in ("cv_eval", "cv_eval_tta"):
            path = run / kind / "metrics.json"
            if not path.is_file():
                continue
            metrics = json.loads(path.read_text())
            for source, values in metrics.get("per_source", {}).items():
                rows.setdefault(f"{kind}:{source}", {}).setdefault("dice", []).append(values["dice_image"])
                for label, b in values.get("by_lesion_size", {}).items():
                    acc = bins.setdefault((kind, source, label), [0.0, 0])
                    acc[0] += (b["dice_image"] or 0.0) * b["images"]
                    acc[1] += b["images"]
    print(f"folds: {len(run_dirs)}, training time per fold: {statistics.mean(seconds) / 60:.1f} min" if seconds else f"folds: {len(run_dirs)}")
    print("| eval | source | folds | mean per-image Dice | sd | per fold |")
    print("|---|---|---|---|---|---|")
    for key, values in sorted(rows.items()):
        kind, source = key.split(":", 1)
        d = values["dice"]
        sd = statistics.stdev(d) if len(d) > 1 else float("nan")
        print(f"| {'TTA' if kind.endswith('tta') else 'plain'} | {source} | {len(d)} | {statistics.mean(d):.3f} | {sd:.3f} | {', '.join(f'{x:.3f}' for x in d)} |")
    if bins:
        print("\n| eval | source | lesion size (px, original resolution) | slices (all folds) | per-image Dice |")
        print("|---|---|---|---|---|")
        for (kind, source, label), (total, n) in bins.items():
            dice = f"{total / n:.3f}" if n else "n/a"
            print(f"| {'TTA' if kind.endswith('tta') else 'plain'} | {source} | {label} | {n} | {dice} |")


if __name__ == "__main__":
    main(sys.argv[1:])
