"""covidseg checkpoint files: read safely, and turned back into a network.

A checkpoint is Lightning's: ``state_dict``, ``hyper_parameters`` (the network's arguments and
its model card, ``card.read_card``) and, for one written by ``covidseg fit``, the DataModule's
settings and split (``evaluation.runs``).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from covidseg.errors import CovidSegError
from covidseg.model.unet import LitUNet


def read_checkpoint(path: str | Path) -> dict:
    """Reads a covidseg checkpoint with weights-only unpickling (no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CovidSegError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about legacy pickles before refusing
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f"it contains pickled code ({found.group(1)})" if found else "it contains pickled objects"
        raise CovidSegError(f"{path}: refused to load: not a covidseg checkpoint, {what}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError) as err:
        raise CovidSegError(f"{path}: truncated or corrupt checkpoint ({str(err).splitlines()[0][:120]})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt or "image_size" not in hp or "encoder_name" not in hp:
        raise CovidSegError(f"{path}: not a covidseg checkpoint (no covidseg hyper-parameters)")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> LitUNet:
    """The ``LitUNet`` of a loaded checkpoint, in eval mode, on CPU (never downloads weights)."""
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    hp["encoder_weights"] = None  # the trained weights follow; do not fetch pretrained ones
    model = LitUNet(**hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
