"""Stores flip TTA in a checkpoint only if it raised the validation Dice.

    python scripts/choose_tta.py CKPT PLAIN_REPORT_DIR TTA_REPORT_DIR

The score is the mean over sources of the per-image Dice (each source counts equally, as
each is judged on its own), read from the two ``metrics.json`` written by
``covidseg.evaluate`` on the same validation split without and with ``--tta``.
"""

import json
import sys
from pathlib import Path

from covidseg.evaluate import store_settings
from covidseg.inference import load_checkpoint


def score(report: Path) -> float:
    metrics = json.loads((report / "metrics.json").read_text())
    per_source = metrics.get("per_source")
    if per_source:
        return sum(v["dice_image"] for v in per_source.values()) / len(per_source)
    return metrics["per_image_mean"]["dice"]


def main(ckpt: str, plain: str, tta: str) -> None:
    plain_score, tta_score = score(Path(plain)), score(Path(tta))
    use = tta_score > plain_score
    store_settings(ckpt, load_checkpoint(ckpt), tta=use)
    print(f"validation Dice without TTA {plain_score:.4f}, with TTA {tta_score:.4f}: tta={use} stored in {ckpt}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
