"""scripts/experiments/tta_variants.py: the TTA experiment's flip4 variant is covidseg's --tta, zoom views
map back to the input frame, and every variant is scored on each run's validation split."""

import importlib.util
from pathlib import Path

import numpy as np

from covidseg.model.predictor import Predictor

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "experiments"
spec = importlib.util.spec_from_file_location("tta_variants", SCRIPTS / "tta_variants.py")
tta_variants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tta_variants)


def test_flip4_is_covidseg_tta_and_none_is_plain(tiny_ckpt):
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 32, 32), dtype=np.float32)
    probs = tta_variants.variant_probs(Predictor(tiny_ckpt, device="cpu", tta=False), x)
    assert np.allclose(probs["flip4"], Predictor(tiny_ckpt, device="cpu", tta=True).predict_batch(x), atol=1e-5)
    assert np.allclose(probs["none"], Predictor(tiny_ckpt, device="cpu", tta=False).predict_batch(x), atol=1e-5)
    assert not np.allclose(probs["hflip+zoom"], probs["none"], atol=1e-4)


def test_zoom_maps_back_to_the_input_frame():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    smooth = np.sin(xx / 9) * np.cos(yy / 7)
    for factor in (0.9, 1.1):
        back = tta_variants.zoom(tta_variants.zoom(smooth[None, None], factor), 1 / factor)[0, 0]
        centre = slice(10, 54)
        assert np.abs(back[centre, centre] - smooth[centre, centre]).max() < 0.05
        assert np.abs(tta_variants.zoom(smooth[None, None], factor)[0, 0] - smooth).max() > 0.1


def test_table_has_every_variant_and_threshold(tiny_run, capsys):
    tta_variants.main([str(tiny_run), str(tiny_run)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert len(rows) == len(tta_variants.VARIANTS) * len(tta_variants.THRESHOLDS)
    assert {r.split(" | ")[0].lstrip("| ") for r in rows} == set(tta_variants.VARIANTS)
