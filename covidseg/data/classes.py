"""Lesion classes: which sources' masks say ground-glass (GGO) or consolidation, and how they are read.

``data.lesion_classes`` maps a source (its name, as in ``splits.csv`` keys, or its root as given)
to the label values of its class label maps, e.g. ``{medseg50: {1: ggo, 2: consolidation}}``.
Sources not named are binary: their masks say only "infection" (the union of the classes), and
they supervise only that. A class source reads its labels from a ``masks_multiclass/`` folder
beside ``masks/`` (same file name; MedSeg's layout) when it has one, otherwise from the mask file
itself (a label map, e.g. a NIfTI volume with 1 GGO, 2 consolidation; its lesion union is then
every mapped value, other values are not lesion, as with ``lesion_labels``). Class label maps are
read by value (``io.read_label_map``: palette PNGs by index) and validated like masks
(``validate``): on the image's pixels; a file of its own names no value the mapping does not and
its classes' union is the mask's lesion.

Per sample: ``classes`` ``uint8 [2, H, W]`` (channel 0 GGO, 1 consolidation; ``CLASS_NAMES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from covidseg.errors import DataError

CLASS_NAMES = ("ggo", "consolidation")
CLASS_FOLDER = "masks_multiclass"

# source name -> ((label value, class index), ...): hashable, so that a frozen Sample can carry it
ClassMap = tuple[tuple[int, int], ...]


def resolve_lesion_classes(spec: Mapping | None, roots: list[str], sources: list[str]) -> dict[str, ClassMap]:
    """``data.lesion_classes`` -> source name -> class map. Keys are source names or roots as
    given (or resolved); raises ``DataError`` (one line) for a key that names no source, a class
    name other than ``CLASS_NAMES``, a label value that is not a positive integer, or a mapping
    that names no class."""
    if not spec:
        return {}
    by_key = {}
    for root, source in zip(roots, sources):
        by_key[source] = by_key[str(root)] = by_key[str(Path(root).resolve())] = source
    out: dict[str, ClassMap] = {}
    for key, mapping in spec.items():
        source = by_key.get(str(key))
        if source is None:
            raise DataError(f"data.lesion_classes: {key!r} names no data source; the sources are {', '.join(sources)} (by name or root)")
        if not isinstance(mapping, Mapping) or not mapping:
            raise DataError(f"data.lesion_classes[{key}]: expected a mapping of label values to classes, e.g. {{1: ggo, 2: consolidation}}")
        pairs = []
        for value, name in mapping.items():
            try:
                v = int(value)
            except (TypeError, ValueError):
                v = None
            if v is None or str(v) != str(value).strip() or v <= 0:
                raise DataError(f"data.lesion_classes[{key}]: label {value!r} is not a positive integer (0 is background)")
            if name not in CLASS_NAMES:
                raise DataError(f"data.lesion_classes[{key}][{value}]: unknown class {name!r}; expected one of {', '.join(CLASS_NAMES)}")
            pairs.append((v, CLASS_NAMES.index(name)))
        out[source] = tuple(sorted(pairs))
    return out


def class_mask_path(mask: str, root: Path) -> str:
    """Where a class source's label map of ``mask`` is: ``ROOT/masks_multiclass/NAME`` when the
    source has that folder, else the mask itself."""
    folder = root / CLASS_FOLDER
    return str(folder / Path(mask).name) if folder.is_dir() else mask


def attach_classes(samples: list, roots: list[str], sources: list[str], classes: dict[str, ClassMap]) -> list:
    """The samples of class sources with ``class_mask`` and ``classes`` set (others unchanged)."""
    root_of = dict(zip(sources, roots))
    return [replace(s, class_mask=class_mask_path(s.mask, Path(root_of[s.source])), classes=classes[s.source]) if s.source in classes else s for s in samples]


def union_labels(classes: ClassMap) -> list[int]:
    """The label values that are lesion in a class label map: every mapped value."""
    return [v for v, _ in classes]


def class_targets(raw: np.ndarray, classes: ClassMap) -> np.ndarray:
    """A class label map as stored ``[H, W]`` -> ``uint8 [2, H, W]`` (GGO, consolidation)."""
    out = np.zeros((len(CLASS_NAMES), *raw.shape), np.uint8)
    for value, index in classes:
        out[index] |= raw == value
    return out


def class_problem(path: str, values: list, classes: ClassMap, source: str) -> str | None:
    """Why a class label map's values do not fit its mapping (a value it does not name), or ``None``."""
    known = {0, *union_labels(classes)}
    extra = [v for v in values if v not in known]
    if not extra:
        return None
    mapped = ", ".join(f"{v}: {CLASS_NAMES[i]}" for v, i in classes)
    return f"{path}: class label map holds {extra} that data.lesion_classes[{source}] ({{{mapped}}}) does not name"
