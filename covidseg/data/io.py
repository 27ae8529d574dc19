"""Reading slices and masks from disk, and the one preprocessing path.

Data contract (shared by training, evaluation, predict and export):

* ``read_image(path)`` -> ``np.ndarray`` ``[H, W]``, the file's own dtype (uint8, uint16 or
  float), colour converted to grayscale.
* ``normalize_intensity(raw, rule)`` -> ``float32 [H, W]`` in ``[0, 1]``:

  - ``"auto"`` (default): 8-bit images are divided by 255; anything else (16-bit PNG/TIFF,
    float) is min-max scaled per image, because 16-bit CT exports rarely use the full range.
  - ``"dtype"``: divide by the dtype's maximum (255 or 65535); floats are clipped to [0, 1].
  - ``"minmax"``: per-image min-max for every input.

* ``preprocess_image(raw, image_size, rule)`` -> ``float32 [S, S]``: normalise, then resize
  with area/linear interpolation. Every consumer calls this one function.
* ``read_label_map(path)`` -> ``[H, W]``, a mask file's values as stored: the palette index of a
  palette (``P``) PNG, the value of an 8-bit, 16-bit or 32-bit grey image; never a colour
  conversion (a palette's colours, or RGB weights, would turn labels 1, 2 into 38, 75).
* ``read_mask(path, lesion_labels)`` -> ``uint8 [H, W]`` in ``{0, 1}`` through ``lesion_mask``
  (the one label rule, shared with volumes): without ``lesion_labels`` a mask must be binary
  (``{0, 1}``, ``{0, 255}``, ``{0, dtype max}`` or empty) and lesion is non-zero; with them,
  lesion is a value in the list. ``preprocess_mask`` resizes it as the image is resized and
  thresholds the covered fraction at 0.5 (or keeps the fraction: soft training targets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
Normalization = Literal["auto", "dtype", "minmax"]


class ImageReadError(ValueError):
    """A file that is missing, unreadable or not a 2D image."""


def read_image(path: str | Path) -> np.ndarray:
    """Reads a slice as a 2D array in its own dtype (uint8, uint16 or float32).

    RGB(A) images are converted to grayscale. Raises ``ImageReadError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageReadError(f"{path}: unreadable or corrupt image")
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif image.shape[2] == 1:
            image = image[..., 0]
        else:
            raise ImageReadError(f"{path}: {image.shape[2]} channels, expected 1, 3 or 4")
    if image.ndim != 2:
        raise ImageReadError(f"{path}: not a 2D image (shape {image.shape})")
    return image


def read_label_map(path: str | Path) -> np.ndarray:
    """Reads a 2D mask or label map as stored, ``[H, W]``: palette PNGs give their palette
    indices (the labels; the palette only colours them), grey images their values (uint8,
    uint16, int32 or float32). RGB(A) masks are accepted when their colour channels are equal
    (grey saved as colour); a mask drawn in colours is refused, naming the file, since labels
    cannot be read from colours. Raises ``ImageReadError``."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("LA", "PA"):  # the alpha channel is not part of the labels
                img = img.getchannel(0)
                mode = img.mode
            arr = np.array(img)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageReadError(f"{path}: unreadable or corrupt image ({err.__class__.__name__})") from None
    if mode == "1":
        arr = arr.astype(np.uint8)
    if arr.ndim == 3:
        colour = arr[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise ImageReadError(
                f"{path}: a colour ({mode}) mask; covidseg reads labels as stored values: save masks as single-channel "
                "or palette PNG label maps (e.g. 0 background, 1 lesion)"
            )
        arr = colour[..., 0]
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: not a 2D image (shape {arr.shape})")
    return arr


class MaskLabelError(ValueError):
    """A mask whose values are not binary and no ``lesion_labels`` say which are lesion."""

    def __init__(self, source: str, values: list):
        self.source, self.values = source, values
        what = grey_level_message(values) if is_grey_level(values) else f"mask has label values {format_values(values)}; pass --data.lesion_labels to say which are lesion"
        super().__init__(f"{source}: {what}")


# A label map names a few structures; a mask with more distinct values than this holds grey
# levels (JPEG compression, anti-aliased drawing or resampling by interpolation), not labels.
MAX_LABELS = 32


def is_grey_level(values: list) -> bool:
    """Whether a mask's distinct values are too many for a label map (``MAX_LABELS``) or not integers."""
    return len(values) > MAX_LABELS or any(float(v) != int(v) for v in values)


def grey_level_message(values: list) -> str:
    """What a grey-level mask is and what to do, for an error line."""
    lo, hi = values[0], values[-1]
    return (
        f"mask holds {len(values)} grey levels from {lo:g} to {hi:g}, not labels: it was saved lossy (JPEG) or "
        "anti-aliased/interpolated, so no list of label values names the lesion; re-export the masks losslessly (PNG, NIfTI) "
        "with one value per label, or binarise them yourself (e.g. lesion where value >= half the maximum)"
    )


def format_values(values, limit: int | None = None) -> str:
    """``[0, 1, 2]`` -> ``{0, 1, 2}`` (integers without a trailing ``.0``); with ``limit``, at
    most that many values and then how many more."""
    shown = list(values)[:limit] if limit else list(values)
    more = f", ... ({len(values) - len(shown)} more)" if len(shown) < len(values) else ""
    return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in shown) + more + "}"


def mask_values(raw: np.ndarray) -> list:
    """The distinct values of a mask as Python numbers, sorted."""
    return [v.item() for v in np.unique(raw)]


def is_binary(values: list, dtype: np.dtype) -> bool:
    """Whether distinct ``values`` are a binary mask: ``{0}``, ``{0, 1}``, ``{0, 255}`` or ``{0, dtype max}``."""
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    return set(values) <= {0, 1} or set(values) <= {0, 255} or set(values) <= {0, top}


def lesion_mask(raw: np.ndarray, lesion_labels: list[int] | None = None, source: str = "mask") -> np.ndarray:
    """The one label rule: raw mask or label map (any shape) -> ``uint8`` {0, 1}, same shape.

    Args:
        raw: mask as stored (PNG values, NIfTI label map).
        lesion_labels: label values that are lesion (``[1, 2]`` for MedSeg's ground-glass and
            consolidation); ``None``: the mask must be binary and every non-zero value is lesion.
        source: the file, for the error message.

    Raises:
        MaskLabelError: without ``lesion_labels``, a mask with other values (a label map, or
            grey levels), naming the file and the values; never a silent binarisation.
    """
    if lesion_labels is None:
        if not is_binary(values := mask_values(raw), raw.dtype):
            raise MaskLabelError(source, values)
        return (raw != 0).astype(np.uint8)
    return np.isin(raw, np.asarray(lesion_labels)).astype(np.uint8)


def lung_mask(raw: np.ndarray, lung_labels: list[int] | None = None) -> np.ndarray:
    """The lung rule: a lung mask or label map as stored -> ``uint8`` {0, 1}, same shape. Lungs
    are every non-zero value (left/right maps such as 1/2, lobe maps 1-5, {0, 255} masks), or
    the values in ``lung_labels`` when given."""
    if lung_labels is None:
        return (raw != 0).astype(np.uint8)
    return np.isin(raw, np.asarray(lung_labels)).astype(np.uint8)


def read_mask(path: str | Path, lesion_labels: list[int] | None = None) -> np.ndarray:
    """Reads a 2D mask as ``uint8 [H, W]`` in {0, 1}: its stored values (``read_label_map``)
    through ``lesion_mask`` (raises ``MaskLabelError`` for a label map without ``lesion_labels``)."""
    return lesion_mask(read_label_map(path), lesion_labels, str(path))


def normalize_intensity(raw: np.ndarray, rule: Normalization = "auto") -> np.ndarray:
    """Scales a raw slice to ``float32`` in [0, 1] (see the module docstring for the rules)."""
    if rule not in ("auto", "dtype", "minmax"):
        raise ValueError(f"unknown normalization {rule!r}, expected auto, dtype or minmax")
    if rule == "dtype" or (rule == "auto" and raw.dtype == np.uint8):
        if np.issubdtype(raw.dtype, np.integer):
            out = raw.astype(np.float32) / float(np.iinfo(raw.dtype).max)
        else:
            out = np.clip(raw.astype(np.float32), 0.0, 1.0)
        return out
    out = raw.astype(np.float32)
    lo, hi = float(out.min()), float(out.max())
    if hi - lo < 1e-8:
        return np.zeros_like(out)
    return (out - lo) / (hi - lo)


def resize(image: np.ndarray, size: int | tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resizes ``[H, W]`` to ``size`` (an int for square, or ``(h, w)``)."""
    h, w = (size, size) if isinstance(size, int) else size
    if image.shape[:2] == (h, w):
        return image
    if nearest:
        interp = cv2.INTER_NEAREST
    elif image.shape[0] > h and image.shape[1] > w:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def preprocess_image(raw: np.ndarray, image_size: int, normalization: Normalization = "auto") -> np.ndarray:
    """The one preprocessing path: raw slice ``[H, W]`` -> ``float32 [S, S]`` in [0, 1]."""
    return resize(normalize_intensity(raw, normalization), image_size).astype(np.float32, copy=False)


def preprocess_mask(mask: np.ndarray, image_size: int, soft: bool = False) -> np.ndarray:
    """Binary mask ``[H, W]`` -> ``uint8 [S, S]`` in {0, 1}: resized exactly as the image is
    (``resize``: area when shrinking, linear when enlarging) and thresholded at 0.5, so each
    target pixel covers the same source pixels as its image pixel. With ``soft``, ``float32
    [S, S]`` in [0, 1]: that resized fraction itself, unthresholded.

    Nearest-neighbour (as before issue 32) samples each block's top-left pixel while the image
    is averaged around the block's centre: every target sat (f-1)/2 source pixels off its image.
    """
    frac = np.clip(resize(np.asarray(mask, np.float32), image_size), 0.0, 1.0)
    return frac if soft else (frac >= 0.5).astype(np.uint8)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Writes a {0, 1} or boolean mask as an 8-bit PNG with values {0, 255}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", (mask > 0).astype(np.uint8) * 255)
    if not ok:
        raise OSError(f"{path}: could not encode mask")
    buf.tofile(str(path))


# Colours of a written label map's palette (index: background, GGO, consolidation); the labels
# are the indices (``read_label_map``), the colours only show them in an image viewer.
LABEL_PALETTE = (0, 0, 0, 255, 200, 0, 220, 40, 40)


def write_label_map(path: str | Path, labels: np.ndarray) -> None:
    """Writes a label map (values 0-255, e.g. 0 background, 1 GGO, 2 consolidation) as a palette
    PNG: read back by index (``read_label_map``), shown in colour by image viewers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    img.putpalette(list(LABEL_PALETTE) + [0, 0, 0] * (256 - len(LABEL_PALETTE) // 3))
    img.save(path, format="PNG")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Writes an 8/16-bit grayscale or BGR image; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OSError(f"{path}: could not encode image")
    buf.tofile(str(path))
