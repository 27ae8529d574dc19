"""Scan checks: is a volume CT in HU, and may its lungs be graded.

Before windowing (``hu_protocol``):

* A volume whose values start at 0 with air near 0 (``uint16`` or unsigned-looking data: the
  1st percentile within ``OFFSET_AIR_MAX`` of 0, the maximum above 1,000) was written without
  its rescale intercept: it is read as HU = value - 1024 (the intercept scanners write) and
  the study says so in one line.
* Values that span less than ``MIN_SPAN`` (a normalised 0..1 export), 8-bit data (a windowed
  export) or beyond ``MAX_ABS_HU`` are not CT in HU and are refused with one line.

After the lungs are cleaned (``grade_checks``), a study gets a grade only if:

* it has lungs (at least ``MIN_LUNG_ML``);
* the lungs lie inside the scan: the first and last slice hold less than ``CUT_SHARE`` of the
  largest lung cross-section (otherwise the scan covers part of the lungs: partial coverage);
* the lung volume lies in ``LUNG_ML_RANGE``: adult lungs on chest CT hold about 2-7 L (total
  lung capacity 4-8 L, less at expiration); 400 mL is below a small child's lungs, 10 L above
  any adult's, so outside the range the lung output is wrong, whatever the lesions;
* the pixel spacing is at most ``MAX_PIXEL_MM`` and the slice spacing at most ``MAX_SLICE_MM``
  (the model saw slices of 0.5-1.5 mm pixels shrunk to its input, about 2-3 mm a pixel; the
  3D clean-up needs slices close enough to follow a lung across them).
"""

from __future__ import annotations

import numpy as np

from covidseg.errors import VolumeReadError

OFFSET = 1024.0
OFFSET_AIR_MAX = 100.0
MIN_SPAN = 200.0
MAX_ABS_HU = 5000.0
MIN_LUNG_ML = 20.0
CUT_SHARE = 0.05
LUNG_ML_RANGE = (400.0, 10000.0)
MAX_PIXEL_MM = 3.5
MAX_SLICE_MM = 10.0


def hu_protocol(data: np.ndarray, name: str) -> tuple[np.ndarray, str | None]:
    """The voxel data as HU, and a one-line note when a documented correction was applied.

    Raises:
        VolumeReadError: naming ``name`` and the values, when the data is not CT in HU.
    """
    if data.dtype == np.uint8:
        raise VolumeReadError(f"{name}: 8-bit data (0-255) is a windowed export, not CT in HU; predict the slices as images or give the scan in HU")
    sample = np.asarray(data).ravel()[:: max(1, data.size // 2_000_000)]
    lo, p1, hi = np.percentile(sample, [0.5, 1.0, 99.5]).astype(float)
    vmin, vmax = float(sample.min()), float(sample.max())
    if hi - lo < MIN_SPAN:
        raise VolumeReadError(f"{name}: values span only {lo:.3g} to {hi:.3g}: not CT in HU (air -1000, soft tissue 40); a normalised export?")
    if max(abs(lo), abs(hi)) > MAX_ABS_HU:
        raise VolumeReadError(f"{name}: values {lo:.4g} to {hi:.4g} lie outside any CT range in HU (-1024 to about 3000)")
    if vmin >= 0 and p1 <= OFFSET_AIR_MAX and vmax > 1000:
        return np.asarray(data, np.float32) - OFFSET, (
            f"{name}: values start at {vmin:g} with air near 0, not -1000 HU: stored without its rescale offset; read as HU = value - {OFFSET:g}"
        )
    return data, None


def grade_checks(lungs: np.ndarray, spacing: tuple[float, float, float]) -> list[str]:
    """Why a study may not be graded (empty: it may).

    Shape:
        lungs: ``[Z, H, W]`` lung labels or mask (display order, slice 0 inferior); spacing:
        (slice, row, column) mm.
    """
    reasons = []
    area = np.count_nonzero(lungs, axis=(1, 2))
    ml = float(area.sum()) * float(np.prod(spacing)) / 1000.0
    if ml < MIN_LUNG_ML:
        return [f"no lungs found ({ml:.0f} mL)"]
    cut = [name for name, a in (("bottom (first)", area[0]), ("top (last)", area[-1])) if a > CUT_SHARE * area.max()]
    if cut or len(area) < 3:
        reasons.append(f"partial coverage: the lungs are cut by the {' and '.join(cut) or 'first and last'} slice")
    if not LUNG_ML_RANGE[0] <= ml <= LUNG_ML_RANGE[1]:
        reasons.append(f"lung volume {ml:.0f} mL outside {LUNG_ML_RANGE[0]:.0f}-{LUNG_ML_RANGE[1]:.0f} mL of a chest CT")
    if max(spacing[1], spacing[2]) > MAX_PIXEL_MM:
        reasons.append(f"pixel spacing {max(spacing[1], spacing[2]):.2g} mm above {MAX_PIXEL_MM:g} mm")
    if spacing[0] > MAX_SLICE_MM:
        reasons.append(f"slice spacing {spacing[0]:.2g} mm above {MAX_SLICE_MM:g} mm")
    return reasons
