"""An offline HTML case viewer for ``predict --viewer true`` and ``evaluate --viewer true``.

Slices arrive one at a time (``ViewerWriter.add_slice``) in the model's display (the window and
normalisation it predicted with), are shrunk and written at once, so memory holds one slice
and a thumbnail per case whatever the number of slices. ``write`` then adds the pages::

    OUTPUT/index.html              one row per case, sortable; a thumbnail of its most involved slice
    OUTPUT/viewer/viewer.js, .css  the page code (package data: no network, opens from file://)
    OUTPUT/viewer/CASE.html        the case view: slices, overlay, lung outline, lesion strip
    OUTPUT/viewer/CASE/ct_0000.jpg the slice (JPEG, longest side <= ``max_side``)
    OUTPUT/viewer/CASE/ov_0000.png its overlay, RGBA: lesion (or truth vs prediction) on top,
                                   lung outline below when the model has lungs
    OUTPUT/viewer/CASE/thumb.jpg   the index thumbnail (``overlay.overlay``)

Lesion areas, lung pixels and involvement are counted on the full-size masks; the grade is
``severity.aggregate_cases`` of the case's summed pixels, as in ``cases.csv``.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from covidseg.data.overlay import LUNG_RGB, class_layer, layer, overlay
from covidseg.metrics.severity import aggregate_cases, involvement

INDEX = "index.html"
FOLDER = "viewer"
OUTPUTS = (INDEX, FOLDER)  # what --viewer adds to an output folder
ASSETS = Path(__file__).with_name("assets")
THUMB_SIDE = 112
COVERAGE = 0.25  # a shrunk pixel shows a mask when at least this share of it is masked
_LUNG_RGBA = np.array([*np.rint(LUNG_RGB * 255), 255], np.uint8)

# (key, label, kind): kind picks the format in the page; a column shows when a row has a value
COLUMNS = (
    ("name", "case", "text"),
    ("slices", "slices", "int"),
    ("lesion_ml", "lesion mL", "num1"),
    ("lung_ml", "lung mL", "num0"),
    ("involvement_percent", "involvement %", "num1"),
    ("grade", "grade", "text"),
    ("dice", "Dice", "num3"),
    ("truth_ml", "truth lesion mL", "num1"),
    ("truth_involvement_percent", "truth involvement %", "num1"),
    ("truth_grade", "truth grade", "text"),
    ("status", "status", "text"),
)


@dataclass
class _Case:
    name: str
    folder: str
    kind: str = ""
    source: str = ""
    ml_per_voxel: float | None = None
    reasons: list[str] = field(default_factory=list)
    qc: str = ""  # why the study is not graded (the anatomy stage's scan checks), as summary.csv
    slices: list[dict] = field(default_factory=list)  # per slice: label and pixel counts at full size
    cell: tuple[int, int] | None = None  # (h, w) of the written slices
    thumb: tuple[float, int, np.ndarray] | None = None  # (score, slice, RGB uint8) of the most involved slice


def _cell(shape: tuple[int, ...], max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(shape[:2]))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _shrink(mask: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    if mask.shape[:2] == cell:
        return np.asarray(mask, bool)
    return cv2.resize(np.asarray(mask, np.float32), cell[::-1], interpolation=cv2.INTER_AREA) >= COVERAGE


def _outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))) > 0


def _folder_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "case"
    out, n = base, 1
    while out.lower() in taken:
        n += 1
        out = f"{base}_{n}"
    taken.add(out.lower())
    return out


class ViewerWriter:
    """Collects slices per case and writes the viewer into ``output`` (see the module docstring).

    Args:
        output: the predict or evaluate output folder.
        title: the page heading; ``subtitle``: one line under it (models, threshold, window).
        lungs: the slices come with lung masks (a model with a lung output).
        truth: the slices come with true masks (evaluate): the overlay shows agreement.
        max_side: longest side of the written slices in pixels; ``quality``: their JPEG
            quality. 256 and 65 keep a 300-slice 512x512 CT near 5 MB (docs/PERFORMANCE.md).
    """

    def __init__(self, output: str | Path, title: str, subtitle: str = "", *, lungs: bool = False, truth: bool = False, max_side: int = 256, quality: int = 65,
                 classes: bool = False):  # fmt: skip
        self.output, self.title, self.subtitle = Path(output), title, subtitle
        self.lungs, self.truth, self.max_side, self.quality = lungs, truth, max_side, quality
        self.classes = classes  # a class model's slices: ground-glass and consolidation coloured apart
        self.cases: dict[str, _Case] = {}
        self._taken: set[str] = set()

    def _case(self, name: str) -> _Case:
        if name not in self.cases:
            self.cases[name] = _Case(name, _folder_name(name, self._taken))
        return self.cases[name]

    def add_slice(
        self, case: str, image: np.ndarray, pred: np.ndarray, *, lungs: np.ndarray | None = None, truth: np.ndarray | None = None,
        label: str = "", kind: str = "image", source: str = "", ml_per_voxel: float | None = None, classes: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """Writes one slice of ``case`` (slices of a case in the order given).

        Shape:
            image: ``[H, W]`` float in [0, 1] (the model's display); pred, lungs, truth: ``[H, W]`` bool;
            classes: ``[H, W]`` labels 0/1/2 (ground-glass, consolidation) of a class model.
        """
        c = self._case(case)
        c.kind, c.source, c.ml_per_voxel = c.kind or kind, c.source or source, ml_per_voxel
        c.cell = c.cell or _cell(image.shape, self.max_side)
        k = len(c.slices)
        inside, lung, _ = involvement(pred, lungs) if lungs is not None else (0, 0, None)
        row = {"label": label or f"slice {k}", "lesion_pixels": int(np.count_nonzero(pred)), "lung_pixels": lung, "lesion_in_lung_pixels": inside}
        if truth is not None:
            row["truth_pixels"] = int(np.count_nonzero(truth))
        if classes is not None:
            labels = np.asarray(classes)[np.asarray(pred, bool)]
            row["ggo_pixels"], row["consolidation_pixels"] = int(np.count_nonzero(labels == 1)), int(np.count_nonzero(labels == 2))
        c.slices.append(row)

        h, w = c.cell
        small = cv2.resize(np.asarray(image, np.float32), (w, h), interpolation=cv2.INTER_AREA) if image.shape != c.cell else np.asarray(image, np.float32)
        gray = np.rint(np.clip(small, 0, 1) * 255).astype(np.uint8)
        folder = self.output / FOLDER / c.folder
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"ct_{k:04d}.jpg"), gray, [cv2.IMWRITE_JPEG_QUALITY, self.quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
        p_small = _shrink(pred, c.cell)
        t_small = _shrink(truth, c.cell) if truth is not None else None
        if classes is not None and t_small is None:  # predict with a class model: the two classes apart
            small_classes = np.zeros(c.cell, np.uint8)
            for value in (1, 2):
                small_classes[_shrink(np.asarray(classes) == value, c.cell) & p_small] = value
            rgba = class_layer(small_classes)
        else:
            rgba = layer(p_small, t_small)
        if self.lungs:
            ring = _outline(_shrink(lungs, c.cell)) if lungs is not None else np.zeros(c.cell, bool)
            lung_rgba = np.zeros((h, w, 4), np.uint8)
            lung_rgba[ring] = _LUNG_RGBA
            rgba = np.concatenate([rgba, lung_rgba], axis=0)
        cv2.imwrite(str(folder / f"ov_{k:04d}.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 6])

        score = (inside if lungs is not None else row["lesion_pixels"]) + row.get("truth_pixels", 0)
        if c.thumb is None or score > c.thumb[0]:
            side = _cell(c.cell, THUMB_SIDE)
            thumb = overlay(cv2.resize(small, side[::-1], interpolation=cv2.INTER_AREA), _shrink(p_small, side), None if t_small is None else _shrink(t_small, side), alpha=0.5)
            c.thumb = (score, k, np.rint(thumb * 255).astype(np.uint8))

    def add_failed(self, case: str, reason: str, *, kind: str = "", source: str = "") -> None:
        """Lists ``case`` as failed with ``reason`` (added to its slices, if any arrived)."""
        c = self._case(case)
        c.kind, c.source = c.kind or kind, c.source or source
        c.reasons.append(reason)

    def not_graded(self, case: str, qc: str) -> None:
        """Shows ``case`` without involvement and grade, with the reason ``summary.csv`` gives."""
        self._case(case).qc = qc

    def summary(self, c: _Case) -> dict:
        """The index row of a case: counts, mL, involvement and grade (``aggregate_cases``)."""
        row = {"name": c.name, "slices": len(c.slices) or None, "kind": c.kind, "source": c.source,
               "status": "failed: " + "; ".join(c.reasons) if c.reasons else "ok"}  # fmt: skip
        if not c.slices:
            return row
        (agg,) = aggregate_cases({"case_id": c.name, **s} for s in c.slices)
        if c.ml_per_voxel is not None:
            row["lesion_ml"] = agg["lesion_pixels"] * c.ml_per_voxel
            if self.lungs:
                row["lung_ml"] = agg["lung_pixels"] * c.ml_per_voxel
        if self.lungs and c.qc:
            row["status"] = f"ok; not graded: {c.qc}"
        elif self.lungs:
            row["involvement_percent"], row["grade"] = agg["involvement_percent"], agg["severity"]
        return row

    def write(self, extras: dict[str, dict] | None = None) -> Path:
        """Writes the thumbnails, the case pages and ``index.html``; returns its path.

        Args:
            extras: more index columns per case name (evaluate: ``dice``, ``truth_ml``,
                ``truth_involvement_percent``, ``truth_grade``).
        """
        folder = self.output / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for asset in ("viewer.js", "viewer.css"):
            shutil.copyfile(ASSETS / asset, folder / asset)
        rows = []
        for c in self.cases.values():
            row = {**self.summary(c), **(extras or {}).get(c.name, {})}
            if c.slices:
                row["href"] = f"{FOLDER}/{c.folder}.html"
                row["thumb"] = f"{FOLDER}/{c.folder}/thumb.jpg"
                cv2.imwrite(str(folder / c.folder / "thumb.jpg"), c.thumb[2][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
            rows.append({k: _plain(v) for k, v in row.items()})
        columns = [{"key": k, "label": label, "kind": kind} for k, label, kind in COLUMNS if k in ("name", "status") or any(r.get(k) is not None for r in rows)]
        head = {"title": self.title, "subtitle": self.subtitle, "lungs": self.lungs, "truth": self.truth, "classes": self.classes, "columns": columns}
        shown = [c for c in self.cases.values() if c.slices]
        for i, c in enumerate(shown):
            near = {"prev": f"{shown[i - 1].folder}.html" if i else None, "next": f"{shown[i + 1].folder}.html" if i + 1 < len(shown) else None}
            data = {**head, "page": "case", "index": f"../{INDEX}", **near, "row": rows[list(self.cases).index(c.name)],
                    "case": {"folder": c.folder, "cell": list(c.cell), "start": c.thumb[1], "slices": c.slices}}  # fmt: skip
            _page(folder / f"{c.folder}.html", f"{c.name} - {self.title}", "", data)
        _page(self.output / INDEX, self.title, f"{FOLDER}/", {**head, "page": "index", "rows": rows})
        return self.output / INDEX


def _plain(v):
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and v != v else v


def _page(path: Path, title: str, root: str, data: dict) -> None:
    text = (ASSETS / "page.html").read_text()
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    esc = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    path.write_text(text.replace("{{title}}", esc).replace("{{root}}", root).replace("{{data}}", payload))
