"""Layouts of two folders matched by file name: Kaggle "COVID-19 CT scan lesion segmentation"
``frames/``+``masks/`` (identical names; the case id parsed from the name:
``Jun_coronacases_case10_100`` -> ``Jun_coronacases_case10``, ``Morozov_study_0255_12`` ->
``Morozov_study_0255``; ``bjorke_17`` has no patient id and stays one case per slice),
``images/``+``masks/`` (matched by stem: ``12.jpg`` with ``12.png``, ``ct_01.nii.gz`` with
``ct_01.nii``; the case id is the stem unless ``case_regex`` says otherwise) and nnU-Net
``imagesTr/``+``labelsTr/`` (``CASE_0000`` with ``CASE``, or MSD style ``CASE`` with ``CASE``
when no image name ends in ``_0000``)."""

from __future__ import annotations

from pathlib import Path

from covidseg.data.io import IMAGE_SUFFIXES
from covidseg.data.layouts.nnunet import NNUNET_CHANNEL
from covidseg.data.samples import case_id_from_name
from covidseg.data.volumes import is_volume, volume_stem

# Kaggle names: the source prefix and patient, then the slice index.
KAGGLE_CASE_REGEX = r"^((?:Jun|Morozov)_.+?)_\d+$"


def file_stem(path: Path) -> str:
    return volume_stem(path) if is_volume(path) else path.name if path.is_dir() else path.stem


def is_3d(path: str | Path) -> bool:
    """A NIfTI file or a folder (a DICOM series, e.g. named in a manifest)."""
    return is_volume(path) or Path(path).is_dir()


def files_in(folder: Path) -> dict[str, Path]:
    """Slices and volumes in ``folder`` by stem."""
    return {file_stem(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith("._") and (p.suffix.lower() in IMAGE_SUFFIXES or is_volume(p))}  # ._X: macOS metadata (MSD tarballs hold them)


def pairs_from_folders(root: Path, image_dir: str, regex: str | None, exact_names: bool, problems: list[str], mask_dir: str = "masks") -> list[tuple[Path, Path, str]]:
    images, masks = files_in(root / image_dir), files_in(root / mask_dir)
    if image_dir == "imagesTr" and any(k.endswith(NNUNET_CHANNEL) for k in images):  # nnU-Net: CASE_0000.nii.gz is channel 0 of CASE
        for key, path in images.items():
            if not key.endswith(NNUNET_CHANNEL):
                problems.append(f"{path}: not named CASE{NNUNET_CHANNEL}.nii.gz like the other images (covidseg reads one CT channel, _0000): "
                                f"rename it {key}{NNUNET_CHANNEL}{path.name[len(key):]}, or drop _0000 from every name (MSD style)")  # fmt: skip
        images = {k.removesuffix(NNUNET_CHANNEL): p for k, p in images.items() if k.endswith(NNUNET_CHANNEL)}
    # else MSD style (Medical Segmentation Decathlon): imagesTr/CASE.nii.gz with labelsTr/CASE.nii.gz
    if exact_names:  # Kaggle: identical file names
        images = {p.name: p for p in images.values()}
        masks = {p.name: p for p in masks.values()}
    for key in sorted(images.keys() - masks.keys()):
        problems.append(f"{images[key]}: image without mask (expected {mask_dir}/{key}{'' if exact_names else '.*'})")
    for key in sorted(masks.keys() - images.keys()):
        problems.append(f"{masks[key]}: mask without image")
    return [(images[k], masks[k], case_id_from_name(k if image_dir == "imagesTr" else file_stem(images[k]), regex)) for k in sorted(images.keys() & masks.keys())]
