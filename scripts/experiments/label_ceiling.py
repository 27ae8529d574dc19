"""Measurement: how much Dice the training-target resolution alone costs, per source.

    python scripts/experiments/label_ceiling.py DATA_DIR/medseg50 DATA_DIR/zenodo20 [--sizes 96 128 160 192]

Each true mask goes through ``io.preprocess_mask`` at input size S (nearest-neighbour, the
default target, or ``soft``, the area-resized lesion fraction), comes back to its own size
the way a prediction does (``io.resize``, bilinear), is thresholded at 0.5 and scored against
itself with the per-image Dice (``metrics.image_dice``). A model that learned its targets
perfectly would score this; nothing is trained. About 2 minutes for the 1,369 shared slices.
"""

import argparse
from collections import defaultdict

import numpy as np

from covidseg.data.io import preprocess_mask, read_mask, resize
from covidseg.data.validate import validate_data
from covidseg.metrics.scores import image_dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 192])
    args = parser.parse_args()
    samples = validate_data(args.roots).samples
    scores: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for s in samples:
        mask = read_mask(s.mask)
        for size in args.sizes:
            for mode, soft in (("nearest", False), ("soft", True)):
                back = resize(preprocess_mask(mask, size, soft=soft).astype(np.float32), mask.shape[:2])
                scores[(s.source, size, mode)].append(image_dice(back >= 0.5, mask))
    sources = sorted({s.source for s in samples})
    print("size | " + " | ".join(f"{src} nearest / soft" for src in sources))
    for size in args.sizes:
        cells = [f"{np.mean(scores[(src, size, 'nearest')]):.3f} / {np.mean(scores[(src, size, 'soft')]):.3f}" for src in sources]
        print(f"{size} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
