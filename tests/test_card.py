"""The model card: one record, written into and read from checkpoints and ONNX metadata; models
saved by earlier covidseg versions (3744f44) still load, carry the same card and predict the same masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from covidseg.errors import CovidSegError
from covidseg.model.card import FIT_LINKS, ModelCard, card_from_hparams, card_from_onnx, card_to_onnx, check_threshold, read_card, write_card
from covidseg.model.predictor import Predictor
from covidseg.model.unet import LitUNet

# A model written by covidseg at 3744f44 (tests/fixtures/3744f44/README.md): its checkpoint as
# ``covidseg fit`` saved it, its ONNX file as ``covidseg export`` wrote it, and what 3744f44's
# Predictor predicted from each on four slices.
OLD = Path(__file__).parent / "fixtures" / "3744f44"
CARD_3744F44 = ModelCard(image_size=32, threshold=0.5, tta=False, lung_output=True)


@pytest.fixture(scope="module")
def old_ckpt():
    return OLD / "model-3744f44.ckpt"


@pytest.fixture(scope="module")
def old_onnx():
    return OLD / "model-3744f44.onnx"


@pytest.fixture(scope="module")
def old_predictions():
    with np.load(OLD / "predictions-3744f44.npz") as f:
        return {k: f[k] for k in f.files}


def test_card_round_trips_through_checkpoints_and_onnx_metadata():
    card = ModelCard(96, "minmax", "hu_window", (-500.0, 1200.5), (1, 2), 0.35, True, 64, 0.33, True)
    assert read_card(write_card({"hyper_parameters": {"encoder_name": "resnet18"}}, card)) == card
    meta = card_to_onnx(card)
    assert all(isinstance(v, str) for v in meta.values()) and meta["covidseg.window"] == "-500,1200.5"
    assert card_from_onnx(meta, "x") == card
    assert card_from_onnx(card_to_onnx(ModelCard(64)), "x") == ModelCard(64)  # None and defaults survive text


def test_card_of_old_models_takes_defaults(old_ckpt, old_onnx):
    stored = torch.load(old_ckpt, map_location="cpu", weights_only=True)
    assert "covidseg_card" not in stored and "hyper_parameters" in stored  # the old layout, as written
    assert card_from_hparams(stored["hyper_parameters"]) == CARD_3744F44
    assert card_from_onnx({p.key: p.value for p in onnx.load(str(old_onnx)).metadata_props}, "x") == CARD_3744F44
    # before patches, intensity protocols and lung outputs: only the size and operating point
    assert card_from_hparams({"image_size": 64, "threshold": 0.5, "tta": False}) == ModelCard(64)
    with pytest.raises(CovidSegError, match="no covidseg metadata"):
        card_from_onnx({"producer": "x"}, "m.onnx")


def test_every_fit_link_is_a_card_field_and_a_model_argument():
    import inspect

    fields = set(ModelCard.__dataclass_fields__)
    args = set(inspect.signature(LitUNet).parameters)
    assert {field for _, field, _ in FIT_LINKS} <= fields <= args
    model = LitUNet(encoder_name="tu-test_resnet", encoder_depth=3, decoder_channels=[4, 4, 4], image_size=32, threshold=0.3, lesion_labels=[1, 2])
    assert model.card == ModelCard(32, threshold=0.3, lesion_labels=(1, 2))
    with pytest.raises(CovidSegError, match="model.threshold 1.5"):
        check_threshold(1.5, "model.threshold")


def test_checkpoint_of_3744f44_predicts_what_3744f44_predicted(old_ckpt, old_predictions, tmp_path):
    raws = list(old_predictions["raws"])
    old = Predictor(old_ckpt, device="cpu")
    assert old.card == CARD_3744F44
    maps = np.stack(list(old.predict_maps(raws)))
    assert maps.shape == (4, 2, 48, 48)
    np.testing.assert_allclose(maps, old_predictions["maps"], atol=1e-5)
    # the same weights with the card written by this version predict the same
    loaded = torch.load(old_ckpt, map_location="cpu", weights_only=True)
    torch.save(write_card(loaded, read_card(loaded)), tmp_path / "new.ckpt")
    new = Predictor(tmp_path / "new.ckpt", device="cpu")
    assert new.card == old.card
    np.testing.assert_allclose(np.stack(list(new.predict_maps(raws))), old_predictions["maps"], atol=1e-5)


def test_onnx_of_3744f44_predicts_what_3744f44_predicted(old_onnx, old_predictions):
    raws = list(old_predictions["raws"])
    from_onnx = Predictor(old_onnx, device="cpu")
    assert from_onnx.card == CARD_3744F44
    np.testing.assert_allclose(np.stack(list(from_onnx.predict_maps(raws))), old_predictions["onnx_maps"], atol=1e-5)
