"""Unlabelled slices for semi-supervised training (``--data.unlabelled DIR``).

A folder of unlabelled slices is ``DIR/manifest.csv`` with an ``image`` column (paths relative to
``DIR``) and an optional ``case_id``, or ``DIR/images/*`` (case ids from ``--data.case_regex``,
else the file stem). Slices are read and preprocessed by the one path every image takes
(``io.read_image``, ``io.preprocess_image``) and augmented like the labelled training slices.

**No leaks.** An unlabelled slice whose case id belongs to a validation or test case of the
labelled split is never trained on (``held_in``): a cross-validation fold that holds a patient
out holds out that patient's unlabelled slices too. Case ids are compared as spelled in the
labelled source's manifest (the Zenodo unlabelled manifest spells them as ``zenodo20/manifest.csv``
does), with or without the source prefix that several roots add; a case the labelled data does
not know is a training case, and fit says how many of the unlabelled cases it knows.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from covidseg.data.io import IMAGE_SUFFIXES, Normalization, preprocess_image, read_image
from covidseg.data.samples import Sample, case_id_from_name
from covidseg.errors import DataError


@dataclass(frozen=True)
class UnlabelledSlice:
    image: str
    case_id: str


def read_unlabelled(root: str | Path, case_regex: str | None = None) -> list[UnlabelledSlice]:
    """The slices of an unlabelled folder (see the module docstring).

    Raises:
        DataError: one line naming the folder: missing, no ``image`` column, no images, a
            listed file that does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.unlabelled {root}: folder not found")
    manifest = root / "manifest.csv"
    out: list[UnlabelledSlice] = []
    if manifest.is_file():
        with manifest.open(newline="") as f:
            reader = csv.DictReader(f)
            if "image" not in (reader.fieldnames or []):
                raise DataError(f"{manifest}: needs an 'image' column (and optionally 'case_id'), has {reader.fieldnames}")
            for row in reader:
                path = root / row["image"]
                case = row.get("case_id") or case_id_from_name(path.stem, case_regex)
                out.append(UnlabelledSlice(str(path), case))
    else:
        folder = root / "images" if (root / "images").is_dir() else root
        out = [UnlabelledSlice(str(p), case_id_from_name(p.stem, case_regex)) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not out:
        raise DataError(f"data.unlabelled {root}: no images (a manifest.csv with an 'image' column, or images/*.png|jpg)")
    missing = [s.image for s in out if not Path(s.image).is_file()]
    if missing:
        raise DataError(f"data.unlabelled {root}: {len(missing)} listed file(s) not found, e.g. {missing[0]}")
    return out


def held_in(slices: list[UnlabelledSlice], samples: list[Sample], split: dict[str, str]) -> tuple[list[UnlabelledSlice], int, int]:
    """The unlabelled slices a training run may use, how many were held out, and how many of the
    unlabelled case ids the labelled data knows: every slice of a case that the labelled split
    puts in validation or test is dropped.

    With several data roots the labelled case ids carry their source (``zenodo20/coronacases_008``,
    ``find_samples``) while an unlabelled manifest spells them as its source's manifest does
    (``coronacases_008``): an unlabelled case id matches a labelled one spelled either way (a bare
    id that two sources share is held out if either source holds it out).

    Args:
        split: ``Sample.image`` -> ``train``/``val``/``test`` (``CTDataModule.split``).
    """

    def spellings(sample: Sample) -> tuple[str, ...]:
        prefix = f"{sample.source}/"
        return (sample.case_id, sample.case_id.removeprefix(prefix)) if sample.case_id.startswith(prefix) else (sample.case_id,)

    known = {c for s in samples for c in spellings(s)}
    held_out = {c for s in samples if split.get(s.image, "train") != "train" for c in spellings(s)}
    kept = [s for s in slices if s.case_id not in held_out]
    return kept, len(slices) - len(kept), len({s.case_id for s in slices} & known)


class UnlabelledDataset(Dataset):
    """Unlabelled slices, preprocessed and augmented as training slices are.

    Shape:
        image: ``float32 [1, S, S]`` in [0, 1] (with ``patch_size`` ``P``: a random ``[1, P, P]`` window).
    """

    def __init__(self, slices: list[UnlabelledSlice], image_size: int, normalization: Normalization = "auto", transform=None, patch_size: int | None = None):
        self.slices, self.image_size, self.normalization = slices, image_size, normalization
        self.transform, self.patch_size = transform, patch_size

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict:
        image = preprocess_image(read_image(self.slices[index].image), self.image_size, self.normalization)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        if self.patch_size is not None and self.patch_size < self.image_size:
            rng = np.random.default_rng()
            y, x = (int(rng.integers(0, self.image_size - self.patch_size + 1)) for _ in range(2))
            image = image[y : y + self.patch_size, x : x + self.patch_size]
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]}
