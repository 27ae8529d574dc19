"""nnU-Net / Medical Segmentation Decathlon: ``imagesTr/CASE_0000.nii.gz`` (nnU-Net) or
``imagesTr/CASE.nii.gz`` (MSD) with ``labelsTr/CASE.nii.gz``; ``dataset.json`` label names, when present, name the labels in the
error that asks for ``lesion_labels``."""

from __future__ import annotations

import json
from pathlib import Path

NNUNET_CHANNEL = "_0000"


def label_names(root: str | Path) -> dict[int, str]:
    """Label value -> name from an nnU-Net/MSD ``dataset.json`` (v1 ``{"1": "GGO"}`` or v2
    ``{"GGO": 1}``); empty when there is none or it cannot be read."""
    path = Path(root) / "dataset.json"
    try:
        labels = json.loads(path.read_text()).get("labels", {})
        names = {}
        for k, v in labels.items():
            value, name = (int(k), str(v)) if str(k).lstrip("-").isdigit() else (int(v), str(k))
            names[value] = name
        return names
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
