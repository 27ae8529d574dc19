"""Which layout a data folder has, and the image/mask pairs (with lung masks) found in it.

Layouts detected from each root folder (slices are 2D image files, volumes NIfTI ``.nii(.gz)``
or DICOM series folders): ``manifest.csv`` (``layouts.manifest``), nnU-Net
``imagesTr/``+``labelsTr/``, Kaggle ``frames/``+``masks/`` and ``images/``+``masks/``
(``layouts.folders``). A volume is one case; ``validate`` expands it into its axial slices.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from covidseg.data.layouts.folders import KAGGLE_CASE_REGEX, file_stem, files_in, is_3d, pairs_from_folders
from covidseg.data.layouts.manifest import lung_masks_from_manifest, pairs_from_manifest
from covidseg.data.layouts.nnunet import NNUNET_CHANNEL
from covidseg.data.samples import Sample, case_id_from_name, check_case_regex, compile_case_regex
from covidseg.errors import DataError


def detect_layout(root: Path) -> str:
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "manifest.csv").is_file():
        return "manifest"
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return "nnunet"
    if (root / "frames").is_dir() and (root / "masks").is_dir():
        return "kaggle"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "images-masks"
    raise DataError(
        f"{root}: no data layout found; expected manifest.csv, imagesTr/+labelsTr/, frames/+masks/ or images/+masks/"
    )


def source_names(roots: list[Path]) -> list[str]:
    """A unique, stable name per root: its folder name, or where two roots share one
    (``/a/covid``, ``/b/covid``) the shortest tail of their paths that tells them apart, joined
    by ``-`` (``a-covid``, ``b-covid``). Names that do not collide stay the folder name, so
    existing ``splits.csv`` keys and case ids keep their meaning. Raises ``DataError`` for a root
    given twice."""
    paths = [r.resolve() for r in roots]
    for i, p in enumerate(paths):
        if p in paths[:i]:
            raise DataError(f"{roots[i]}: data root given twice")
    parts = [p.parts[1:] for p in paths]  # without the anchor ("/")
    depth = [1] * len(paths)
    while True:
        names = ["-".join(q[-d:]) for q, d in zip(parts, depth)]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1]
        if not clash:
            return names
        for i in clash:
            if depth[i] >= len(parts[i]):
                raise DataError(f"{roots[i]}: its name {names[i]!r} cannot be told apart from another data root's")
            depth[i] += 1


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # a manifest may point outside its folder
        return path.resolve().as_posix()


def find_pairs(
    roots: Iterable[str | Path], case_regex: str | None = None, notes: list[str] | None = None
) -> tuple[list[Sample], dict[str, str], list[str]]:
    """Lists (image, mask, case_id) for every root, with the problems found on the way. With
    ``case_regex``, how many stems it matched goes to ``notes`` (``DataError`` when none).

    A volume pair comes out as one ``Sample`` with ``slice=None``; ``validate.validate_data`` checks it and
    expands it into its slices. With several roots, case ids are prefixed with the root's
    folder name (``source_names``: unique, also for two folders of one name) so that two sources
    never share a patient id by accident.
    """
    roots = [Path(r) for r in roots]
    samples, layouts, problems = [], {}, []
    stems: list[str] = []  # what case_regex is matched against
    if case_regex:
        compile_case_regex(case_regex)
    prefix = len(roots) > 1
    for root, source in zip(roots, source_names(roots)):
        layout = detect_layout(root)
        layouts[str(root)] = layout
        if layout == "manifest":
            pairs = pairs_from_manifest(root, problems)
            if case_regex:
                pairs = [(i, m, case_id_from_name(file_stem(i), case_regex)) for i, m, _ in pairs]
        elif layout == "kaggle":
            pairs = pairs_from_folders(root, "frames", case_regex or KAGGLE_CASE_REGEX, True, problems)
        elif layout == "nnunet":
            pairs = pairs_from_folders(root, "imagesTr", case_regex, False, problems, mask_dir="labelsTr")
        else:
            pairs = pairs_from_folders(root, "images", case_regex, False, problems)
        if not pairs and not problems:
            problems.append(f"{root}: no image/mask pairs found ({layout} layout)")
        stems += [file_stem(i).removesuffix(NNUNET_CHANNEL) if layout == "nnunet" else file_stem(i) for i, _, _ in pairs]
        lungs = find_lung_masks(root, layout, [i for i, _, _ in pairs])
        samples += [Sample(str(i), str(m), f"{source}/{c}" if prefix else c, source, _relative(i, root), lung_mask=lungs.get(i)) for i, m, c in pairs]
    if case_regex:
        line = check_case_regex(case_regex, stems)
        if notes is not None:
            notes.append(line)
    return samples, layouts, problems


def find_lung_masks(root: Path, layout: str, images: list[Path]) -> dict[Path, str]:
    """Image -> lung mask path, where the source has them (slices or volumes): the ``lung_mask``
    column of a manifest (empty cells: none) or a ``lungs/`` folder beside ``masks/`` (or
    ``labelsTr/``; same file name, else same stem, nnU-Net: ``CASE``). Images without one train
    the lesion output only (partial labels)."""
    if layout == "manifest":
        return lung_masks_from_manifest(root, images)
    folder = root / "lungs"
    if not folder.is_dir():
        return {}
    found = files_in(folder)
    by_name = {p.name: p for p in found.values()}
    out = {}
    for image in images:
        stem = file_stem(image)
        match = by_name.get(image.name) or found.get(stem) or (found.get(stem.removesuffix(NNUNET_CHANNEL)) if layout == "nnunet" else None)
        if match is not None:
            out[image] = str(match)
    return out


def data_kind(roots: Iterable[str | Path]) -> str:
    """``volume`` or ``image``: what the roots hold, judged from their first pair (cheap, no
    decoding). Raises ``DataError`` for a missing root or roots of both kinds."""
    kinds = set()
    for root in map(Path, roots):
        samples, _, _ = find_pairs([root])
        kinds |= {"volume" if is_3d(s.image) else "image" for s in samples[:1]}
    if len(kinds) > 1:
        raise DataError("the data roots hold both 2D slices and volumes; their intensity protocols differ (8-bit image vs HU window): train on one kind")
    return kinds.pop() if kinds else "image"
