"""A deterministic, CT-like demo set: a body with two dark lungs, ribs/spine, and brighter
lesion blobs (ground-glass-like) inside the lungs. Learnable, not noise; no patient data.

    python -m covidseg.synthetic OUT_DIR [--cases 30] [--slices 8] [--size 128]

writes ``OUT_DIR/images/*.png``, ``OUT_DIR/masks/*.png`` (lesions), ``OUT_DIR/lungs/*.png`` (lung
masks) and ``OUT_DIR/manifest.csv`` (``image,mask,lung_mask,case_id``).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from covidseg.io import write_image, write_mask

DEMO_VERSION = "v2"  # v2: lung masks


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    y, x = yy - cy, xx - cx
    return ((x * c + y * s) / rx) ** 2 + ((-x * s + y * c) / ry) ** 2 <= 1.0


def make_slice(rng: np.random.Generator, size: int = 128, lesions: int = 2, case_shape=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``uint8 [size, size]`` slice, its ``{0,1}`` lesion mask and its ``{0,1}`` lung mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    b = case_shape if case_shape is not None else rng.uniform(-1, 1, 4)
    img = np.full((size, size), 0.03, np.float32)
    body = _ellipse(yy, xx, 0.52, 0.5, 0.36 + 0.03 * b[0], 0.44 + 0.03 * b[1])
    img[body] = 0.55
    lung_l = _ellipse(yy, xx, 0.48, 0.32 + 0.01 * b[2], 0.24 + 0.02 * b[3], 0.12, 0.1)
    lung_r = _ellipse(yy, xx, 0.48, 0.68 - 0.01 * b[2], 0.24 + 0.02 * b[3], 0.12, -0.1)
    lungs = lung_l | lung_r
    img[lungs] = 0.12
    img[_ellipse(yy, xx, 0.8, 0.5, 0.05, 0.05)] = 0.95  # spine
    img[body & ~_ellipse(yy, xx, 0.52, 0.5, 0.33 + 0.03 * b[0], 0.41 + 0.03 * b[1])] = 0.8  # ribs/wall
    # vessels: small bright dots in the lungs, so "bright in lung" alone is not the answer
    for _ in range(12):
        cy, cx = rng.uniform(0.3, 0.7), rng.choice([rng.uniform(0.24, 0.4), rng.uniform(0.6, 0.76)])
        img[_ellipse(yy, xx, cy, cx, 0.008, 0.008) & lungs] = 0.5
    mask = np.zeros((size, size), np.uint8)
    for _ in range(lesions):
        cy = rng.uniform(0.32, 0.66)
        cx = rng.choice([rng.uniform(0.26, 0.38), rng.uniform(0.62, 0.74)])
        blob = np.zeros((size, size), np.float32)
        for _ in range(3):  # irregular shape from a few overlapping ellipses
            blob += _ellipse(yy, xx, cy + rng.normal(0, 0.025), cx + rng.normal(0, 0.02), rng.uniform(0.03, 0.08), rng.uniform(0.025, 0.06), rng.uniform(0, np.pi))
        lesion = (blob > 0) & lungs
        img[lesion] = rng.uniform(0.3, 0.42) + 0.08 * rng.standard_normal(int(lesion.sum()))
        mask[lesion] = 1
    img = cv2.GaussianBlur(img, (3, 3), 0.8) + rng.normal(0, 0.025, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask, lungs.astype(np.uint8)


def generate(out_dir: str | Path, cases: int = 30, slices: int = 8, size: int = 128, seed: int = 0) -> Path:
    """Writes the demo set (manifest layout) and returns ``out_dir``. Same arguments, same bytes."""
    out = Path(out_dir)
    rows = []
    for c in range(cases):
        rng = np.random.default_rng([seed, c])
        shape = rng.uniform(-1, 1, 4)
        for k in range(slices):
            n_lesions = int(rng.choice([0, 1, 2, 3], p=[0.15, 0.35, 0.3, 0.2]))
            image, mask, lungs = make_slice(rng, size, n_lesions, shape)
            name = f"case{c:03d}_{k:02d}.png"
            write_image(out / "images" / name, image)
            write_mask(out / "masks" / name, mask)
            write_mask(out / "lungs" / name, lungs)
            rows.append((f"images/{name}", f"masks/{name}", f"lungs/{name}", f"case{c:03d}"))
    with (out / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "lung_mask", "case_id"])
        w.writerows(rows)
    return out


def demo_dir() -> Path:
    """Where the built-in demo set lives: ``$COVIDSEG_CACHE`` or ``~/.cache/covidseg``."""
    base = Path(os.environ.get("COVIDSEG_CACHE", Path.home() / ".cache" / "covidseg"))
    return base / f"demo-{DEMO_VERSION}"


def ensure_demo() -> Path:
    """Generates the demo set once (about a second) and returns its folder."""
    out = demo_dir()
    if not (out / "manifest.csv").is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        generate(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process (a DDP rank) got there first: its copy is the same
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m covidseg.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = generate(a.out_dir, a.cases, a.slices, a.size, a.seed)
    print(f"wrote {a.cases * a.slices} slices from {a.cases} cases to {out}")


if __name__ == "__main__":
    main()
