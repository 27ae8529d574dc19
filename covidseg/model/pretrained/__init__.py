"""Built-in models: trained covidseg models that ship inside the package, so ``covidseg predict``
works on a scan without training first (``--ckpt`` omitted, or ``--ckpt reference``).

A built-in model is a slim checkpoint ``NAME.ckpt`` in this folder (or in a folder of
``$COVIDSEG_MODELS``, ``:``-separated): the network's weights in fp16 (computation stays fp32),
the hyper-parameters with its model card (``covidseg.model.card``: what inference needs), no
optimizer state and no training data, plus its provenance (``covidseg_card``: what it was trained
on, its cross-validated scores, its terms of use, and how closely it agrees with the checkpoint it
was made from). ``scripts/package_model.py`` writes it and refuses to when the masks disagree.
"""

from __future__ import annotations

import os
from pathlib import Path

from covidseg.errors import CovidSegError
from covidseg.model.card import read_card
from covidseg.model.checkpoint import read_checkpoint

HERE = Path(__file__).resolve().parent
DEFAULT = "reference"
CARD_KEY = "covidseg_card"
TERMS = ("Research use only: not a medical device, not for diagnosis or treatment decisions. Trained on research-use-only "
         "public data (MedSeg / Inf-Net COVID-SemiSeg slices; Ma Jun et al., Zenodo 10.5281/zenodo.3757476, whose "
         "coronacases.org and Radiopaedia cases carry their own terms).")  # fmt: skip


def search_dirs() -> list[Path]:
    """Where built-in models are looked up: ``$COVIDSEG_MODELS`` folders first, then the package's."""
    extra = [Path(p) for p in os.environ.get("COVIDSEG_MODELS", "").split(os.pathsep) if p]
    return [*extra, HERE]


def available() -> dict[str, Path]:
    """Name -> file of every built-in model (the first folder that has a name wins)."""
    found: dict[str, Path] = {}
    for folder in search_dirs():
        for path in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def is_name(value: str) -> bool:
    """``reference`` names a built-in model; anything with a suffix or a slash is a path."""
    return bool(value) and "/" not in value and os.sep not in value and not Path(value).suffix


def resolve(name: str | None = None) -> Path:
    """The file of built-in model ``name`` (default ``reference``); a clear error if absent."""
    name = name or DEFAULT
    models = available()
    if name in models:
        return models[name]
    have = ", ".join(models) or "none"
    raise CovidSegError(
        f"no built-in model {name!r} (installed: {have}); pass --ckpt PATH to a trained checkpoint or ONNX file"
        + ("" if models else ", or train one: bash scripts/reproduce.sh DATA_DIR")
    )


def card(path: str | Path) -> dict:
    """A built-in model's card: its model card (``model``: ``card.ModelCard`` as a dict) with the
    provenance stored beside it (none for a plain checkpoint)."""
    ckpt = read_checkpoint(path)
    return {"model": read_card(ckpt).as_dict(), **dict(ckpt.get(CARD_KEY) or {})}


def describe(name: str, path: Path, info: dict) -> str:
    """The one line predict prints when it uses a built-in model."""
    version = info.get("version", "?")
    return f"using the built-in model {name!r} version {version} ({path.name}; covidseg models shows its card). {info.get('terms', TERMS).split(':')[0]}."
