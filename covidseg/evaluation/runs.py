"""What a checkpoint knows about its run: the data it trained on and its patient-level split.

A run directory is ``RUN/`` of ``RUN/checkpoints/x.ckpt``; its ``splits.csv`` and the split
stored in each checkpoint are keyed by ``Sample.key`` (source folder name + path inside it),
and checkpoints store absolute data roots, so a run and its data can move: pass
``--data.root`` where the data now lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from covidseg.data.samples import Sample
from covidseg.data.splits import match_keys, read_splits
from covidseg.data.synthetic import ensure_demo
from covidseg.data.validate import validate_data
from covidseg.errors import CovidSegError, DataError
from covidseg.model.checkpoint import read_checkpoint

PathLike = str | Path
SCAN_SETTINGS = ("case_regex", "empty_masks", "lesion_labels", "lung_labels", "lesion_classes")  # nonbinary_masks: gone with label maps (issue 16)


def run_dir_of(ckpt: PathLike) -> Path:
    """The run directory of ``RUN/checkpoints/x.ckpt``."""
    return Path(ckpt).resolve().parent.parent


def stored_data(ckpt: dict) -> tuple[list[str] | None, dict]:
    """The data roots and scan settings a run trained with; ``(None, {})`` if the checkpoint
    holds no DataModule settings. Roots are the absolute ones stored with the split when present
    (checkpoints before that store them as typed, relative to where fit ran)."""
    hp = ckpt.get("datamodule_hyper_parameters")
    if not isinstance(hp, dict):
        return None, {}
    roots = (ckpt.get("CTDataModule") or {}).get("roots")
    if not roots:
        root = hp.get("root")
        roots = [root] if isinstance(root, str) else [str(r) for r in root] if root else [str(ensure_demo())]
    return list(roots), {k: hp[k] for k in SCAN_SETTINGS if k in hp}


def split_of(path: PathLike, ckpt: dict, samples: list[Sample]) -> dict[str, str]:
    """Image path -> split, from ``RUN/splits.csv`` or else the split stored in the checkpoint."""
    csv_path = run_dir_of(path) / "splits.csv"
    if csv_path.is_file():
        return read_splits(csv_path, samples)
    stored = (ckpt.get("CTDataModule") or {}).get("split")
    if not stored:
        raise CovidSegError(f"{path}: no {csv_path} and no split stored in the checkpoint; the run's splits are unknown")
    return match_keys(stored, samples, f"{path} (stored split)")


def select_split(ckpts: Sequence[PathLike], loaded: Sequence[dict], samples: list[Sample], name: str) -> list[Sample]:
    """The samples in split ``name``; every run of an ensemble must have the same ones."""
    chosen: list[Sample] | None = None
    for path, ckpt in zip(ckpts, loaded):
        split = split_of(path, ckpt, samples)
        picked = [s for s in samples if split[s.image] == name]
        if chosen is not None and picked != chosen:
            raise CovidSegError(f"{path}: its {name} split differs from that of {ckpts[0]}; an ensemble can only be scored on a split all its runs share")
        chosen = picked
    if not chosen:
        raise DataError(f"{run_dir_of(ckpts[0])}: the {name} split is empty")
    return chosen


def split_samples(ckpt_path: PathLike, name: str, roots: Sequence[PathLike] | None = None) -> list[Sample]:
    """The slices of split ``name`` of the run of ``ckpt_path``, on ``roots`` or the run's own data
    (e.g. a cross-validation fold's held-out patients: ``split_samples(last_ckpt, "val")``)."""
    ckpt = read_checkpoint(ckpt_path)
    run_roots, settings = stored_data(ckpt)
    data = list(roots) if roots else run_roots
    if data is None:
        raise CovidSegError(f"{ckpt_path}: no data settings stored in the checkpoint; pass --data.root")
    return select_split([ckpt_path], [ckpt], validate_data(data, **settings).samples, name)
