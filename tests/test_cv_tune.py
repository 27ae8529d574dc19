"""scripts/experiments/cv_tune.py: settings scored on each run's own validation split, best one reported."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "experiments" / "cv_tune.py"
spec = importlib.util.spec_from_file_location("cv_tune", SCRIPT)
cv_tune = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cv_tune)


def test_drop_small_keeps_large_components_only():
    mask = np.zeros((100, 100), bool)
    mask[10:12, 10:12] = True  # 4 px = 0.04% of the slice
    mask[50:70, 50:70] = True  # 400 px
    kept = cv_tune.drop_small(mask, 0.0005)
    assert not kept[10:12, 10:12].any() and kept[50:70, 50:70].all() and kept.sum() == 400
    assert cv_tune.drop_small(mask, 0) is mask


def test_dice_edge_cases():
    from covidseg.metrics.scores import image_dice

    a = np.array([[1, 1, 0, 0]], bool)
    assert image_dice(a, a) == 1.0
    assert image_dice(a, ~a) == 0.0
    assert image_dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert abs(image_dice(a, np.array([[1, 0, 0, 0]], bool)) - 2 / 3) < 1e-9


def test_table_has_every_setting_and_a_best_line(tiny_run, capsys):
    cv_tune.main([str(tiny_run), str(tiny_run)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| True") or line.startswith("| False")]
    assert len(rows) == 2 * len(cv_tune.THRESHOLDS) * len(cv_tune.MIN_AREAS)
    best = [line for line in out.splitlines() if line.startswith("best: ")]
    assert len(best) == 1
    # the best line's score is the maximum of the table's last column
    top = max(float(r.rstrip(" |").rsplit("|", 1)[1]) for r in rows)
    assert f"{top:.4f}" in best[0]
