"""Slices per second of the training loader on a DICOM series with a NIfTI mask (the slice cache's hot path).

    python scripts/loader_speed.py [--slices 200] [--size 128] [--rounds 3] [--out DIR]

Writes a phantom chest as a DICOM series (one file per slice) with its lesion mask as NIfTI and a
``manifest.csv``, validates it once (decoding both into the slice cache, not timed), then reads
every slice ``--rounds`` times: ``raw`` is ``samples.image_of`` + ``samples.mask_of`` (the cache
alone), ``dataset`` is ``SliceDataset[i]`` (also preprocessing and resize to 128 px). One process,
no workers: what one DataLoader worker does.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def write_set(root: Path, slices: int, size: int) -> Path:
    import nibabel as nib

    from covidseg.data.phantom import affine_of, phantom, write_dicom_series, write_nifti
    from covidseg.data.volumes import from_display

    p = phantom("chest", slices=slices, size=size, lesions=max(3, slices // 40))
    affine = affine_of(p)
    write_dicom_series(nib.Nifti1Image(from_display(p.hu, affine), affine), root / "ct")
    write_nifti(root / "ct_mask.nii.gz", p.lesion, p, dtype="uint8")
    (root / "manifest.csv").write_text("image,mask,case_id\nct,ct_mask.nii.gz,ct\n")
    return root


def measure(root: Path, rounds: int) -> dict[str, float]:
    from covidseg.data.dataset import SliceDataset
    from covidseg.data.samples import image_of, mask_of
    from covidseg.data.validate import validate_data

    samples = validate_data([root], progress=False).samples
    out = {}
    start = time.perf_counter()
    for _ in range(rounds):
        for s in samples:
            image_of(s), mask_of(s)
    out["raw"] = rounds * len(samples) / (time.perf_counter() - start)
    dataset = SliceDataset(samples, 128)
    start = time.perf_counter()
    for _ in range(rounds):
        for i in range(len(dataset)):
            dataset[i]
    out["dataset"] = rounds * len(samples) / (time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python scripts/loader_speed.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="folder for the set (default: a temporary one); its slice cache lives under $COVIDSEG_CACHE")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out) if a.out else Path(tmp)
        if not (root / "manifest.csv").is_file():
            write_set(root, a.slices, a.size)
        os.environ.setdefault("COVIDSEG_CACHE", str(root / "cache"))
        speed = measure(root, a.rounds)
    print(f"loader: {a.slices} slices of {a.size} px from a DICOM series + NIfTI mask: raw {speed['raw']:.0f} slices/s, dataset {speed['dataset']:.0f} slices/s")
    return speed


if __name__ == "__main__":
    main()
