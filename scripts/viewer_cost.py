"""What ``--viewer true`` adds to a 300-slice 512x512 volume: seconds and megabytes.

    python scripts/viewer_cost.py                       # a chest phantom in HU (covidseg.data.phantom)
    python scripts/viewer_cost.py --slices DIR          # real texture: 8-bit PNG slices from DIR, resized to 512
    python scripts/viewer_cost.py --predict             # end to end: covidseg predict --lungs with and without --viewer

Times ``ViewerWriter`` (the whole report step of predict: shrink, JPEG/PNG encode, pages) on the
slices with a lesion and lung mask, and sums the bytes written. The masks are the phantom's true
lesions and lungs (or ``DIR/../masks`` and ``DIR/../lungs`` when present); the prediction itself is
not timed, it is the same with and without the viewer. ``--predict`` times the whole command
instead, on ``scripts/predict_speed.py``'s CT-like volume with an untrained lung model at 128 px.
Results: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from covidseg.data.phantom import phantom
from covidseg.data.volumes import apply_window
from covidseg.viewer import ViewerWriter


def slices(folder: Path | None, n: int, size: int):
    """``(image [0, 1], lesion, lungs)`` per slice, ``size`` x ``size``."""
    if folder is None:
        p = phantom("chest", slices=n, size=size, spacing=(1.0, 0.7 * 512 / size, 0.7 * 512 / size), lesions=max(3, n // 40))
        for image, lesion, lungs in zip(apply_window(p.hu), p.lesion, p.lungs):
            yield image / 255.0, lesion > 0, lungs > 0
        return
    files = sorted(folder.glob("*.png"))[:n]
    for f in files:
        image = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (size, size), interpolation=cv2.INTER_CUBIC)
        masks = []
        for sub in ("masks", "lungs"):
            m = folder.parent / sub / f.name
            masks.append(cv2.resize(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE), (size, size), interpolation=cv2.INTER_NEAREST) > 0 if m.is_file() else image < 60)
        yield image / 255.0, masks[0], masks[1]


def time_predict(n: int, size: int) -> None:
    import sys

    import torch

    from covidseg.model.unet import LitUNet
    from covidseg.predict import main as predict

    from covidseg.data.phantom import write_chest as make_ct

    with tempfile.TemporaryDirectory() as tmp:
        volume = make_ct(Path(tmp) / "ct.nii.gz", n, size)
        model = LitUNet(image_size=128, lung_output=True)
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, Path(tmp) / "m.ckpt")
        for viewer in ("false", "true", "false", "true"):  # CPU seconds: less sensitive than wall time to other jobs
            out = Path(tmp) / f"out_{viewer}"
            start, cpu = time.perf_counter(), time.process_time()
            predict(["--ckpt", str(Path(tmp) / "m.ckpt"), "--input", str(volume), "--output", str(out), "--lungs", "true", "--viewer", viewer, "--device", "cpu", "--overwrite", "true"])
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            size_mb = sum(f.stat().st_size for f in (out / "viewer").rglob("*") if f.is_file()) / 1e6 if viewer == "true" else 0.0
            print(f"predict --lungs true --viewer {viewer}: {seconds:.1f} s wall, {cpu:.1f} s CPU" + (f", viewer {size_mb:.2f} MB" if viewer == "true" else ""), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=Path, help="a folder of 8-bit PNG slices (default: a chest phantom in HU)")
    p.add_argument("-n", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--predict", action="store_true", help="time covidseg predict with and without --viewer (twice each)")
    a = p.parse_args()
    if a.predict:
        return time_predict(a.n, a.size)
    data = list(slices(a.slices, a.n, a.size))
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        writer = ViewerWriter(tmp, "cost", lungs=True)
        for image, lesion, lungs in data:
            writer.add_slice("volume", image, lesion, lungs=lungs, kind="volume", ml_per_voxel=0.001)
        writer.write()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        files = [f for f in Path(tmp).rglob("*") if f.is_file()]
        ct = sum(f.stat().st_size for f in files if f.name.startswith("ct_"))
        ov = sum(f.stat().st_size for f in files if f.name.startswith("ov_"))
        total = sum(f.stat().st_size for f in files)
    print(f"{len(data)} slices {a.size}x{a.size} ({'synthetic' if a.slices is None else 'real texture'}): {seconds:.1f} s wall ({cpu:.1f} s CPU), "
          f"{total / 1e6:.2f} MB ({ct / 1e6:.2f} MB slices, {ov / 1e6:.2f} MB overlays, {len(files)} files)")  # fmt: skip


if __name__ == "__main__":
    main()
