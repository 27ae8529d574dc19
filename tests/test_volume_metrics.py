"""Known answers for the per-case volume metrics (two cubes offset by k voxels)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidseg.metrics.volume import case_metrics


def _cube(lo: tuple[int, int, int], n: int = 10, shape=(24, 24, 24)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[lo[0] : lo[0] + n, lo[1] : lo[1] + n, lo[2] : lo[2] + n] = 1
    return m


# A 10-voxel cube has 10^3 - 8^3 = 488 surface voxels. Shifted by k along one axis, every
# surface distance is at most k voxels and its leading face (100 voxels, 20% > 5%) is exactly k
# away, so HD95 = k x spacing. Within tolerance: all but the voxels more than it away
# (k=1, tol 0.5: leading face 100 + far face interior 8x8 = 164; k=2, tol 1: 100 + 6x6 = 136).
@pytest.mark.parametrize(
    "k, spacing, axis, tol, hd95, nsd",
    [
        (1, (1.0, 1.0, 1.0), 0, 1.0, 1.0, 1.0),
        (1, (1.0, 1.0, 1.0), 0, 0.5, 1.0, (488 - 164) / 488),
        (2, (1.0, 1.0, 1.0), 0, 1.0, 2.0, (488 - 136) / 488),
        (3, (1.0, 1.0, 1.0), 1, 5.0, 3.0, 1.0),
        (2, (0.7, 0.7, 2.5), 2, 1.0, 5.0, (488 - 172) / 488),  # z steps of 2.5 mm; in-plane 0.7 mm counts
    ],
)
def test_offset_cubes(k, spacing, axis, tol, hd95, nsd):
    shift = [3, 3, 3]
    shift[axis] += k
    out = case_metrics(_cube((3, 3, 3)), _cube(tuple(shift)), spacing, tolerance_mm=tol)
    voxel_ml = math.prod(spacing) / 1000
    assert out["dice"] == pytest.approx(1 - k / 10)  # overlap (10 - k) x 10 x 10 of 1000 each
    assert out["truth_ml"] == out["pred_ml"] == pytest.approx(1000 * voxel_ml) and out["diff_ml"] == 0
    assert out["hd95_mm"] == pytest.approx(hd95)
    assert out["nsd"] == pytest.approx(nsd, abs=1e-6)
    assert out["tolerance_mm"] == tol


def test_volumes_and_identical_masks():
    truth, pred = _cube((3, 3, 3)), _cube((3, 3, 3), n=5)
    out = case_metrics(pred, truth, (0.7, 0.7, 2.5))
    assert out["truth_ml"] == pytest.approx(1000 * 1.225 / 1000) and out["pred_ml"] == pytest.approx(125 * 1.225 / 1000)
    assert out["diff_ml"] == pytest.approx((125 - 1000) * 1.225 / 1000)
    same = case_metrics(truth, truth.astype(bool), (1, 1, 1))
    assert same["dice"] == 1 and same["hd95_mm"] == 0 and same["nsd"] == 1


def test_empty_cases_are_defined():
    empty, cube = np.zeros((8, 8, 8), np.uint8), _cube((1, 1, 1), n=3, shape=(8, 8, 8))
    both = case_metrics(empty, empty, (1, 1, 1))
    assert (both["dice"], both["hd95_mm"], both["nsd"], both["truth_ml"]) == (1.0, 0.0, 1.0, 0.0)
    for pred, truth in ((empty, cube), (cube, empty)):
        one = case_metrics(pred, truth, (1, 1, 2))
        assert one["dice"] == 0.0 and one["nsd"] == 0.0 and math.isnan(one["hd95_mm"])
    assert case_metrics(empty, cube, (1, 1, 2))["diff_ml"] == pytest.approx(-27 * 2 / 1000)


def test_bad_input_is_loud():
    with pytest.raises(ValueError, match="one shape"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 0, 1))
