"""Per-case volume metrics: 3D Dice, lesion volume in mL, HD95 and normalised surface Dice.

``case_metrics(pred, truth, spacing)`` scores one case (a whole volume, binary masks in the
same voxel layout) in physical units. The surface measures come from MONAI
(``monai.metrics.compute_hausdorff_distance`` with ``percentile=95`` and
``compute_surface_dice``): maintained, tested against DeepMind's reference
``surface-distance`` code, and respecting anisotropic ``spacing``. MONAI is pure Python and
needs only torch and numpy, which covidseg already has (about 16 MB installed), where
``surface-distance`` is not published on PyPI and ``medpy``/``seg-metrics`` pull in SimpleITK.
It is imported on first use (several seconds), so only evaluation pays for it.

Definitions (``A`` = prediction, ``B`` = truth, surfaces = voxels of a mask with a
6-connected neighbour outside it, distances in mm between voxel centres):

* ``dice``: ``2|A n B| / (|A| + |B|)``.
* ``truth_ml``, ``pred_ml``: voxel count x voxel volume / 1000; ``diff_ml = pred_ml - truth_ml``.
* ``hd95_mm``: the larger of the two directed 95th percentiles of surface-to-surface distances.
* ``nsd``: the share of both surfaces within ``tolerance_mm`` of the other surface
  (MONAI's voxel-count version, ``use_subvoxels=False``).

Empty masks (a case without lesion is common in evaluation and must stay in the table):
both empty -> ``dice = nsd = 1.0``, ``hd95_mm = 0.0`` (perfect agreement); exactly one empty
-> ``dice = nsd = 0.0`` and ``hd95_mm = nan`` (no distance exists; leave it out of means and
count such cases separately). Volumes are always defined.

Per case in evaluate, with volume samples (``Sample.slice`` set) grouped by volume: stack the
predicted slice masks in slice order (display order ``[Z, H, W]``, as predict and training
read them), and compare with ``cache.read_mask_volume(mask_path, lesion_labels)``, which
returns the truth in the same order with its ``display_spacing``::

    truth, spacing = read_mask_volume(sample.mask, lesion_labels)
    row = case_metrics(np.stack(pred_slices), truth, spacing, tolerance_mm=1.0)
"""

from __future__ import annotations

import math
import warnings

import numpy as np

METRIC_KEYS = ("dice", "truth_ml", "pred_ml", "diff_ml", "hd95_mm", "nsd")


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float = 1.0) -> dict:
    """Scores one case.

    Args:
        pred, truth: binary masks (bool or {0, 1}), same shape ``[X, Y, Z]``.
        spacing: voxel size in mm along each axis of the arrays (``header.get_zooms()[:3]``).
        tolerance_mm: surface distance that counts as agreement for ``nsd``.

    Returns:
        ``{"dice", "truth_ml", "pred_ml", "diff_ml", "hd95_mm", "nsd", "tolerance_mm"}`` as
        Python floats (see the module docstring for the definitions and empty cases).

    Raises:
        ValueError: shapes differ, masks are not 3D, or ``spacing`` is not three positive numbers.
    """
    pred, truth = np.asarray(pred) != 0, np.asarray(truth) != 0
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be 3D arrays of one shape")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing {tuple(spacing)} must be three positive voxel sizes in mm")
    spacing = tuple(float(s) for s in spacing)
    n_pred, n_truth = int(pred.sum()), int(truth.sum())
    ml = math.prod(spacing) / 1000.0
    out = {"truth_ml": n_truth * ml, "pred_ml": n_pred * ml, "diff_ml": (n_pred - n_truth) * ml, "tolerance_mm": float(tolerance_mm)}
    if n_pred == 0 and n_truth == 0:
        return {"dice": 1.0, **out, "hd95_mm": 0.0, "nsd": 1.0}
    if n_pred == 0 or n_truth == 0:
        return {"dice": 0.0, **out, "hd95_mm": float("nan"), "nsd": 0.0}
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    dice = 2.0 * int((pred & truth).sum()) / (n_pred + n_truth)
    # MONAI takes one-hot [B, C, X, Y, Z]; the lesion channel alone, counted as foreground.
    p, t = (torch.from_numpy(m[None, None].astype(np.float32)) for m in (pred, truth))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI 1.5+ warns about its own internal argument
        hd95 = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)[0, 0])
        nsd = float(compute_surface_dice(p, t, [float(tolerance_mm)], include_background=True, spacing=spacing)[0, 0])
    return {"dice": dice, **out, "hd95_mm": hd95, "nsd": nsd}
