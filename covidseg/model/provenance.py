"""Where a model came from: the git commit of the code that trained it and whether that checkout
had uncommitted changes, stored in every checkpoint ``covidseg fit`` writes and copied into a
built-in model's card (``scripts/package_model.py``), so a card's commit can be checked.

    checkpoint["covidseg_provenance"] = {"commit": "<40 hex>", "describe": "v1-3-gabc1234-dirty",
                                         "dirty": False, "earlier": [...]}

``dirty`` is true when tracked files differ from the commit (untracked files do not count: they
are not part of the package unless imported). ``earlier`` lists the provenance of the runs a
resumed run continued, when they differ. Outside a git checkout (an installed wheel) nothing is
recorded, and the card says so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pytorch_lightning.callbacks import Callback

PROVENANCE_KEY = "covidseg_provenance"
_PACKAGE = Path(__file__).resolve().parents[1]  # the covidseg/ folder whose code runs


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def git_provenance(folder: str | Path | None = None) -> dict | None:
    """``{"commit", "describe", "dirty"}`` of the git checkout holding ``folder`` (default: this
    package's code), or ``None`` when it is not in a git checkout or git is missing."""
    folder = Path(folder) if folder is not None else _PACKAGE
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = bool(_git(folder, "status", "--porcelain", "--untracked-files=no"))
        describe = _git(folder, "describe", "--always", "--tags", "--dirty")
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit, "describe": describe, "dirty": dirty}


def read_provenance(ckpt: dict) -> dict | None:
    """The provenance stored in a loaded checkpoint (``None`` for one written before it was)."""
    value = ckpt.get(PROVENANCE_KEY)
    return value if isinstance(value, dict) else None


def card_fields(ckpt: dict) -> dict:
    """What a model card records of a checkpoint's provenance: ``commit`` (the training commit)
    and ``tree_clean``, plus ``describe`` and ``earlier`` when known; ``commit`` says
    ``unknown`` with the reason for a checkpoint without provenance."""
    found = read_provenance(ckpt)
    if found is None:
        return {"commit": "unknown (the checkpoint records no provenance: trained outside a git checkout or before it was recorded)", "tree_clean": None}
    out = {"commit": found["commit"], "tree_clean": not found["dirty"], "describe": found.get("describe")}
    if found.get("earlier"):
        out["earlier"] = found["earlier"]
    return out


class RecordProvenance(Callback):
    """Writes ``git_provenance()`` of the training process into every checkpoint; on resume, the
    provenance of the checkpoint it continued goes to ``earlier`` when it differs."""

    def __init__(self, provenance: dict | None = None):
        self.provenance = provenance if provenance is not None else git_provenance()
        self.earlier: list[dict] = []

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        before = read_provenance(checkpoint)
        if before is not None:
            own = {k: v for k, v in before.items() if k != "earlier"}
            self.earlier = [*before.get("earlier", []), *([own] if own != self.provenance else [])]

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.provenance is not None:
            checkpoint[PROVENANCE_KEY] = {**self.provenance, **({"earlier": self.earlier} if self.earlier else {})}
