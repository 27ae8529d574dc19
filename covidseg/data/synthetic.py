"""A deterministic, CT-like demo set: a body with two dark lungs, ribs/spine, and brighter
lesion blobs (ground-glass-like) inside the lungs. Learnable, not noise; no patient data.

    python -m covidseg.data.synthetic OUT_DIR [--cases 30] [--slices 8] [--size 128]

writes ``OUT_DIR/images/*.png``, ``OUT_DIR/masks/*.png`` (lesions), ``OUT_DIR/lungs/*.png`` (lung
masks) and ``OUT_DIR/manifest.csv`` (``image,mask,lung_mask,case_id``).
``generate_volumes`` writes the same anatomy as NIfTI volumes in HU with label-map masks.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from covidseg.data.io import write_image, write_label_map, write_mask

DEMO_VERSION = "v2"  # v2: lung masks


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    y, x = yy - cy, xx - cx
    return ((x * c + y * s) / rx) ** 2 + ((-x * s + y * c) / ry) ** 2 <= 1.0


def make_slice(rng: np.random.Generator, size: int = 128, lesions: int = 2, case_shape=None, classes: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``uint8 [size, size]`` slice, its ``{0,1}`` lesion mask and its ``{0,1}`` lung mask.
    ``classes``: the mask is a label map instead, each blob 1 (ground-glass) or, every second
    blob, 2 (consolidation: denser, so brighter), drawn in that order (a later blob wins)."""
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
    for i in range(lesions):
        cy = rng.uniform(0.32, 0.66)
        cx = rng.choice([rng.uniform(0.26, 0.38), rng.uniform(0.62, 0.74)])
        blob = np.zeros((size, size), np.float32)
        for _ in range(3):  # irregular shape from a few overlapping ellipses
            blob += _ellipse(yy, xx, cy + rng.normal(0, 0.025), cx + rng.normal(0, 0.02), rng.uniform(0.03, 0.08), rng.uniform(0.025, 0.06), rng.uniform(0, np.pi))
        lesion = (blob > 0) & lungs
        dense = classes and i % 2 == 1
        img[lesion] = rng.uniform(0.3, 0.42) + (0.3 if dense else 0.0) + 0.08 * rng.standard_normal(int(lesion.sum()))
        mask[lesion] = 2 if dense else 1
    img = cv2.GaussianBlur(img, (3, 3), 0.8) + rng.normal(0, 0.025, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask, lungs.astype(np.uint8)


def generate(out_dir: str | Path, cases: int = 30, slices: int = 8, size: int = 128, seed: int = 0, lesions: bool = True, classes: bool = False) -> Path:
    """Writes the demo set (manifest layout) and returns ``out_dir``. Same arguments, same bytes.
    ``lesions=False``: the same kind of cases without any lesion (empty masks), e.g. to measure
    what a model predicts on lesion-free studies (``scripts/ct0_floor.py``). ``classes``: also
    ``masks_multiclass/`` palette label maps, 1 ground-glass, 2 consolidation (MedSeg's layout;
    ``masks/`` stays their union), for ``data.lesion_classes``."""
    out = Path(out_dir)
    rows = []
    for c in range(cases):
        rng = np.random.default_rng([seed, c])
        shape = rng.uniform(-1, 1, 4)
        for k in range(slices):
            n_lesions = int(rng.choice([0, 1, 2, 3], p=[0.15, 0.35, 0.3, 0.2])) if lesions else 0
            image, mask, lungs = make_slice(rng, size, n_lesions, shape, classes)
            name = f"case{c:03d}_{k:02d}.png"
            if classes:
                write_label_map(out / "masks_multiclass" / name, mask)  # a palette PNG, as MedSeg's
            write_image(out / "images" / name, image)
            write_mask(out / "masks" / name, mask)
            write_mask(out / "lungs" / name, lungs)
            rows.append((f"images/{name}", f"masks/{name}", f"lungs/{name}", f"case{c:03d}"))
    with (out / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "lung_mask", "case_id"])
        w.writerows(rows)
    return out


# Stored orientations for generated volumes: voxel axes -> patient axes, spacing applied.
AXES = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),  # DICOM's patient frame, the usual scanner export
    "SLP": np.array([[0, 0, -1.0], [0, -1.0, 0], [1.0, 0, 0]]),  # slices along the first axis
}


def volume_affine(orientation: str, spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine of a generated volume: ``orientation`` (a key of ``AXES``) and display spacing
    ``(row, column, slice)`` in mm, i.e. anterior-posterior, left-right and axial."""
    axes = AXES[orientation]
    ras_spacing = np.array([spacing[1], spacing[0], spacing[2]])  # R-L, A-P, S-I
    affine = np.eye(4)
    affine[:3, :3] = axes * ras_spacing[:, None]
    affine[:3, 3] = (-100.0, -120.0, -300.0)
    return affine


# the demo slice's 8-bit levels (air 8, lung 31, lesion 77-107, body 140, spine 242) -> HU
DEMO_HU = ([0, 8, 31, 107, 140, 242, 255], [-1024, -1000, -850, -300, 40, 700, 800])


def make_volume(rng: np.random.Generator, slices: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Display-ordered ``int16 [Z, H, W]`` HU and ``uint8`` label map {0, 1, 2, 3}: lesions
    in the patient's right lung (image left) 1, left lung 2, a pleural-effusion-like band 3.

    The demo's grey levels become physical HU (``DEMO_HU``: air -1000, lung -850, lesion up to
    -300, body 40, bone 700), so the anatomy stage sees a body in air as on a scanner.

    This is training data (the volume demo, the tests' label maps); a scan built from physics
    (table, fat, bone, gas; the benchmarks' and anatomy tests' input) is ``covidseg.data.phantom``."""
    return make_volume_with_lungs(rng, slices, size)[:2]


def make_volume_with_lungs(rng: np.random.Generator, slices: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_volume`` and a ``uint8 [Z, H, W]`` lung label map as lung tools write them: the
    patient's right lung (image left) 1, left lung 2."""
    shape = rng.uniform(-1, 1, 4)
    hu = np.empty((slices, size, size), np.int16)
    labels = np.zeros((slices, size, size), np.uint8)
    lungs = np.zeros((slices, size, size), np.uint8)
    for k in range(slices):
        image, mask, lung = make_slice(rng, size, int(rng.choice([0, 1, 2, 3], p=[0.15, 0.35, 0.3, 0.2])), shape)
        hu[k] = np.rint(np.interp(image, *DEMO_HU))
        labels[k][mask > 0] = 1
        labels[k][:, size // 2 :][mask[:, size // 2 :] > 0] = 2
        lungs[k][lung > 0] = 1
        lungs[k][:, size // 2 :][lung[:, size // 2 :] > 0] = 2
        if k % 3 == 0:
            labels[k, int(0.78 * size) : int(0.8 * size), int(0.3 * size) : int(0.4 * size)] = 3
    return hu, labels, lungs


def generate_volumes(
    out_dir: str | Path,
    cases: int = 4,
    slices: int = 6,
    size: int = 64,
    layout: str = "images-masks",
    spacing: tuple[float, float, float] = (0.7, 0.7, 2.5),
    orientation: str = "LPS",
    seed: int = 0,
    lungs: bool = False,
) -> Path:
    """Writes ``cases`` NIfTI CT volumes in HU with label-map masks and returns ``out_dir``.

    Args:
        layout: ``images-masks`` (``images/caseN.nii.gz`` + ``masks/caseN.nii.gz``), ``nnunet``
            (``imagesTr/caseN_0000.nii.gz`` + ``labelsTr/caseN.nii.gz`` + ``dataset.json``) or
            ``manifest`` (``volumes/`` and ``labels/`` listed in ``manifest.csv``).
        spacing: display ``(row, column, slice)`` spacing in mm.
        orientation: stored voxel orientation, ``RAS``, ``LPS`` or ``SLP`` (see ``AXES``).
        lungs: also write left/right lung label maps (1/2) in ``lungs/caseN.nii.gz`` (manifest:
            its ``lung_mask`` column).
    """
    import nibabel as nib

    from covidseg.data.volumes import from_display

    out = Path(out_dir)
    image_dir, mask_dir = {"images-masks": ("images", "masks"), "nnunet": ("imagesTr", "labelsTr"), "manifest": ("volumes", "labels")}[layout]
    affine = volume_affine(orientation, spacing)
    rows = []
    for c in range(cases):
        hu, labels, lung = make_volume_with_lungs(np.random.default_rng([seed, c]), slices, size)
        name = f"case{c:03d}"
        image_name = f"{name}_0000.nii.gz" if layout == "nnunet" else f"{name}.nii.gz"
        files = [(image_dir, image_name, hu), (mask_dir, f"{name}.nii.gz", labels)] + ([("lungs", f"{name}.nii.gz", lung)] if lungs else [])
        for folder, file, data in files:
            (out / folder).mkdir(parents=True, exist_ok=True)
            img = nib.Nifti1Image(from_display(data, affine), affine)
            img.header.set_xyzt_units("mm")
            nib.save(img, out / folder / file)
        rows.append((f"{image_dir}/{image_name}", f"{mask_dir}/{name}.nii.gz", name) + ((f"lungs/{name}.nii.gz",) if lungs else ()))
    if layout == "nnunet":
        labels = {"background": 0, "ground-glass": 1, "consolidation": 2, "effusion": 3}
        (out / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz"}, indent=2))
    if layout == "manifest":
        with (out / "manifest.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("image", "mask", "case_id") + (("lung_mask",) if lungs else ()), *rows])
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
    p = argparse.ArgumentParser(prog="python -m covidseg.data.synthetic", description=__doc__.split("\n\n")[0])
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
