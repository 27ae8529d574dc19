"""scripts/cv_summary.py: per-source means over folds and Dice by lesion size pooled over folds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from covidseg import metrics as M

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cv_summary.py"


def test_lesion_size_bins_pool_the_slices_of_all_folds(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("cv_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folds = [np.array([(100, 0, 100, 800), (0, 0, 0, 9)]), np.array([(400, 0, 0, 600)])]  # <500: Dice 2/3 and 1; none: 1
    runs = []
    for k, counts in enumerate(folds):
        run = tmp_path / f"fold{k}"
        (run / "cv_eval").mkdir(parents=True)
        per_source = {"zenodo20": {"dice_image": float(M.rates(*counts.T)["dice"].mean()), "by_lesion_size": M.by_lesion_size(counts)}}
        (run / "cv_eval" / "metrics.json").write_text(json.dumps({"per_source": per_source}))
        runs.append(str(run))
    module.main(runs)
    out = capsys.readouterr().out
    assert "| plain | zenodo20 | 2 | 0.917 |" in out  # fold means 5/6 and 1
    assert "| plain | zenodo20 | <500 | 2 | 0.833 |" in out and "| plain | zenodo20 | none | 1 | 1.000 |" in out
    assert "| plain | zenodo20 | >=2000 | 0 | n/a |" in out
