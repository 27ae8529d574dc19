"""The viewer of a sharded or resumed cohort, rebuilt from what its studies wrote.

A viewer kept in memory cannot survive a killed process or span shards; every study's outputs
can. ``rebuild`` reads each finished study's input again (the image, or the scan through the
HU window the run used: ``cohort.json`` records the window, normalisation and model line) with
its mask, lung and class files, and writes ``index.html`` and ``viewer/`` as an uninterrupted
``predict --viewer true`` would have: the same slices, overlays, mL, involvement, grades and
"not graded" reasons (from ``summary.csv``). ``covidseg merge OUTPUT --viewer true`` calls it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from covidseg.data.io import read_image, read_label_map
from covidseg.data.volumes import apply_window, read_scan, to_display, voxel_ml
from covidseg.prediction.journal import study_key
from covidseg.prediction.viewing import add_image, add_volume, open_viewer


def _volume_file(path: str) -> np.ndarray:
    import nibabel as nib

    img = nib.load(path)
    return to_display(np.asanyarray(img.dataobj), img.affine)


def rebuild(output: Path, rows: list[dict], cohort: dict) -> Path:
    """Writes the viewer of ``rows`` (merged summary rows) into ``output``; returns ``index.html``."""
    view = cohort.get("viewer") or {}
    window = tuple(view.get("window") or (-600.0, 1500.0))
    normalization = view.get("normalization", "auto")
    lungs = any(r.get("lungs") for r in rows)
    classes = any(r.get("classes") for r in rows)
    writer = open_viewer(output, view.get("line", ""), lungs=lungs, classes=classes)
    case_of = {study_key(s): s.get("case") or s.get("study_id") or Path(s["input"]).name for s in cohort.get("studies", [])}
    for row in tqdm(rows, desc="viewer", unit="study", disable=None):
        case = case_of.get(study_key(row), Path(row["input"]).name)
        if row.get("status") != "ok":
            writer.add_failed(case, row.get("reason", ""), kind=row.get("type", ""), source=row["input"])
            continue
        if row.get("qc") not in ("", "ok", None):
            writer.not_graded(case, row["qc"])
        if row["type"] == "image":
            lung = read_label_map(row["lungs"]) if row.get("lungs") else None
            labels = read_label_map(row["classes"]) if row.get("classes") else None
            add_image(writer, case, read_image(row["input"]), read_label_map(row["mask"]), normalization=normalization, source=row["input"], lungs=lung, classes=labels)
            continue
        ref, hu, _ = read_scan(row["input"], row.get("series") or None)
        lung = _volume_file(row["lungs"]) if row.get("lungs") else None
        labels = _volume_file(row["classes"]) if row.get("classes") else None
        add_volume(writer, case, apply_window(hu, *window), _volume_file(row["mask"]), normalization=normalization, source=row["input"], ml_per_voxel=voxel_ml(ref),
                   lungs=lung, classes=labels)  # fmt: skip
    return writer.write()
