"""The slice cache for training: volumes decoded once, read one slice at a time.

A ``.nii.gz`` cannot be memory mapped and decoding a 512x512x300 volume per sample takes seconds,
so each volume is decoded once (during validation) into an uncompressed ``.npy`` in display
order ``[Z, H, W]`` under ``$COVIDSEG_CACHE/volumes`` (default ``~/.cache/covidseg/volumes``),
keyed by path, modification time and size. A sample maps the file, copies its one slice and
unmaps it, so a worker holds one slice, not volumes (measured: ``scripts/volume_memory.py``,
docs/PERFORMANCE.md). HU stored as float (a rescale slope/intercept) is cached as ``int16``
when that is exact (whole numbers in range: the usual CT case), half the disk of ``float32``.
The cache is never pruned: validation notes its folder and size whenever it grew
(``cache_note``); delete the folder to reclaim disk.

Finding a volume's cache entry costs a ``stat`` of every file of a DICOM folder and a JSON parse,
too much per sample, so each process keeps what it found in memory (``_memo``), valid while
one ``stat`` of the path (the file, or the DICOM folder: files added, removed or renamed change
it) is unchanged; a new process checks every file again. A DataLoader worker inherits the memo
that validation filled. Measured: ``scripts/loader_speed.py``, docs/PERFORMANCE.md.

Mask volumes are read through the one label rule (``io.lesion_mask``), as 2D masks are.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidseg.data.io import MaskLabelError, is_binary, lesion_mask
from covidseg.data.volumes import LUNG_WINDOW, apply_window, display_spacing, read_voxels, to_display
from covidseg.errors import VolumeReadError

CACHE_VERSION = "v1"


# -- the slice cache for training ------------------------------------------------------------
@dataclass(frozen=True)
class VolumeInfo:
    """A cached volume: ``shape`` is the display shape ``[Z, H, W]``; ``affine`` and ``zooms``
    are the file's; ``values`` are its distinct values when it is a mask (else ``None``)."""

    path: str
    cache: str
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    zooms: tuple[float, float, float]
    dtype: str
    values: tuple | None = None

    @classmethod
    def from_json(cls, text: str) -> "VolumeInfo":
        d = json.loads(text)
        d["affine"] = tuple(map(tuple, d["affine"]))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def cache_dir() -> Path:
    return Path(os.environ.get("COVIDSEG_CACHE", Path.home() / ".cache" / "covidseg")) / "volumes"


_written = [0]  # bytes this process added to the slice cache


def cache_note() -> str | None:
    """``slice cache DIR: SIZE (+ADDED now; delete the folder to clear it)`` after this process
    added to the cache (reset on each call), else ``None``."""
    added, _written[0] = _written[0], 0
    if not added:
        return None
    total = sum(p.stat().st_size for p in cache_dir().glob("*") if p.is_file())
    return f"slice cache {cache_dir()}: {_size(total)} (+{_size(added)} now; delete the folder to clear it)"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _exact_int16(display: np.ndarray) -> np.ndarray:
    """Float HU as ``int16`` when every value is a whole number in range (checked slice by
    slice, no second copy of the volume), else unchanged."""
    if display.dtype.kind != "f":
        return display
    for x in display:
        if not (np.all(np.rint(x) == x) and x.min(initial=0) >= -32768 and x.max(initial=0) <= 32767):
            return display
    return display.astype(np.int16)


def _cache_key(path: Path) -> str:
    """Path, modification time and size; for a DICOM folder, the newest file and total size."""
    stats = [p.stat() for p in path.iterdir() if p.is_file()] if path.is_dir() else [path.stat()]
    mtime, size = max((st.st_mtime_ns for st in stats), default=0), sum(st.st_size for st in stats)
    return hashlib.sha1(f"{path.resolve()}|{mtime}|{size}|{len(stats)}|{CACHE_VERSION}".encode()).hexdigest()


# (path, cache folder) -> (stat of the path when found, its VolumeInfo): see the module docstring
_memo: dict[tuple[str, str], tuple[tuple[int, int], VolumeInfo]] = {}


def cache_volume(path: str | Path, mask: bool = False) -> VolumeInfo:
    """Decodes a volume once into the slice cache (see the module docstring) and describes it.

    Raises:
        VolumeReadError: naming the file (missing, truncated gzip, not 3D, ...).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VolumeReadError(f"{path}: file not found") from None
    memo_key, token = (str(path), str(cache_dir())), (st.st_mtime_ns, st.st_size)
    hit = _memo.get(memo_key)
    if hit is not None and hit[0] == token and (not mask or hit[1].values is not None):
        return hit[1]
    info = _cache_volume(path, mask)
    _memo[memo_key] = (token, info)
    return info


def _cache_volume(path: Path, mask: bool) -> VolumeInfo:
    key = _cache_key(path)
    meta = cache_dir() / f"{key}.json"
    if meta.is_file():
        info = VolumeInfo.from_json(meta.read_text())
        if Path(info.cache).is_file() and (not mask or info.values is not None):
            return info
    img, data = read_voxels(path)
    if not mask:  # the HU protocol predict applies (volumes.read_scan): an offset-less volume is corrected, a non-HU one refused
        from covidseg.anatomy.checks import hu_protocol

        data, note = hu_protocol(data, str(path))
        if note:
            print(f"warning: {note}", file=sys.stderr)
    display = to_display(data, img.affine)
    del data
    if not mask:
        display = _exact_int16(display)
    values = tuple(v.item() for v in np.unique(np.concatenate([np.unique(x) for x in display]))) if mask else None  # per slice: no sort of the whole volume
    meta.parent.mkdir(parents=True, exist_ok=True)
    npy = meta.with_suffix(".npy")
    tmp = npy.with_name(f"{key}.{os.getpid()}.tmp.npy")
    np.save(tmp, display)
    _written[0] += tmp.stat().st_size
    os.replace(tmp, npy)  # atomic: DDP ranks and workers may race here
    info = VolumeInfo(str(path), str(npy), tuple(display.shape), tuple(map(tuple, img.affine.tolist())), tuple(float(z) for z in img.header.get_zooms()[:3]), str(display.dtype), values)
    tmp = meta.with_name(f"{key}.{os.getpid()}.tmp.json")
    tmp.write_text(json.dumps(info.__dict__))
    os.replace(tmp, meta)
    return info


def read_slice(path: str | Path, index: int) -> np.ndarray:
    """Display slice ``index`` of a cached volume, ``[H, W]`` in the stored dtype (HU or labels).

    The cache file is mapped for this one read and unmapped, so no volume stays in memory.
    """
    return _slice(cache_volume(path), index)


def _slice(info: VolumeInfo, index: int) -> np.ndarray:
    try:
        volume = np.load(info.cache, mmap_mode="r")
    except FileNotFoundError:  # the cache folder was deleted while this process ran: decode again
        _memo.pop((info.path, str(cache_dir())), None)
        volume = np.load(cache_volume(info.path, info.values is not None).cache, mmap_mode="r")
    out = np.array(volume[index])
    del volume
    return out


def read_hu_slice(path: str | Path, index: int, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """The training input of a volume slice: ``uint8 [H, W]`` through the HU ``window``, the
    same step ``read_volume`` applies for predict."""
    return apply_window(read_slice(path, index), *window)


def _mask_labels(path: str | Path, lesion_labels: list[int] | None) -> tuple[VolumeInfo, list]:
    """The lesion values of a mask volume: ``lesion_labels``, or without them (a binary mask,
    judged on the whole volume, not one slice) its non-zero value; ``MaskLabelError`` otherwise."""
    info = cache_volume(path, mask=True)
    if lesion_labels is not None:
        return info, list(lesion_labels)
    if not is_binary(list(info.values), np.dtype(info.dtype)):
        raise MaskLabelError(str(path), list(info.values))
    return info, [v for v in info.values if v != 0]


def read_mask_volume(path: str | Path, lesion_labels: list[int] | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A whole mask volume for per-case scoring: ``uint8 [Z, H, W]`` in {0, 1} in display
    order (as ``read_mask_slice`` and predict's slices) through ``io.lesion_mask``, and its
    ``display_spacing`` in mm."""
    info, labels = _mask_labels(path, lesion_labels)
    return lesion_mask(np.load(info.cache, mmap_mode="r"), labels, str(path)), display_spacing(np.array(info.affine))


def read_mask_slice(path: str | Path, index: int, lesion_labels: list[int] | None = None) -> np.ndarray:
    """Display slice ``index`` of a mask volume as ``uint8 [H, W]`` in {0, 1}, through the one
    label rule ``io.lesion_mask`` (the volume equivalent of ``io.read_mask``)."""
    info, labels = _mask_labels(path, lesion_labels)
    return lesion_mask(_slice(info, index), labels, str(path))  # the entry found once, not twice
