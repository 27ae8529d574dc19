"""What ``--viewer true`` adds to a 300-slice 512x512 volume: seconds and megabytes.

    python scripts/viewer_cost.py                       # synthetic CT (covidseg.data.synthetic.make_volume)
    python scripts/viewer_cost.py --slices DIR          # real texture: 8-bit PNG slices from DIR, resized to 512

Times ``ViewerWriter`` (the whole report step of predict: shrink, JPEG/PNG encode, pages) on the
slices with a lesion and lung mask, and sums the bytes written. The masks are stand-ins (the
synthetic labels, or ``DIR/../masks`` and ``DIR/../lungs`` when present); the prediction itself is
not timed, it is the same with and without the viewer. Results: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from covidseg.data.synthetic import make_volume
from covidseg.data.volumes import apply_window
from covidseg.viewer import ViewerWriter


def slices(folder: Path | None, n: int, size: int):
    """``(image [0, 1], lesion, lungs)`` per slice, ``size`` x ``size``."""
    if folder is None:
        hu, labels = make_volume(np.random.default_rng(0), n, size)
        for image, label in zip(apply_window(hu), labels):
            yield image / 255.0, label > 0, image < 60
        return
    files = sorted(folder.glob("*.png"))[:n]
    for f in files:
        image = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (size, size), interpolation=cv2.INTER_CUBIC)
        masks = []
        for sub in ("masks", "lungs"):
            m = folder.parent / sub / f.name
            masks.append(cv2.resize(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE), (size, size), interpolation=cv2.INTER_NEAREST) > 0 if m.is_file() else image < 60)
        yield image / 255.0, masks[0], masks[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=Path, help="a folder of 8-bit PNG slices (default: synthetic)")
    p.add_argument("-n", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    a = p.parse_args()
    data = list(slices(a.slices, a.n, a.size))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        writer = ViewerWriter(tmp, "cost", lungs=True)
        for image, lesion, lungs in data:
            writer.add_slice("volume", image, lesion, lungs=lungs, kind="volume", ml_per_voxel=0.001)
        writer.write()
        seconds = time.perf_counter() - start
        files = [f for f in Path(tmp).rglob("*") if f.is_file()]
        ct = sum(f.stat().st_size for f in files if f.name.startswith("ct_"))
        ov = sum(f.stat().st_size for f in files if f.name.startswith("ov_"))
        total = sum(f.stat().st_size for f in files)
    print(f"{len(data)} slices {a.size}x{a.size} ({'synthetic' if a.slices is None else 'real texture'}): {seconds:.1f} s, "
          f"{total / 1e6:.2f} MB ({ct / 1e6:.2f} MB slices, {ov / 1e6:.2f} MB overlays, {len(files)} files)")  # fmt: skip


if __name__ == "__main__":
    main()
