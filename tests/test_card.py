"""The model card: one record, written into and read from checkpoints and ONNX metadata; models
saved by earlier covidseg versions (3744f44) still load, carry the same card and predict the same masks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from covidseg.data.synthetic import make_slice
from covidseg.errors import CovidSegError
from covidseg.model.card import FIT_LINKS, ModelCard, card_from_hparams, card_from_onnx, card_to_onnx, check_threshold, read_card, write_card
from covidseg.model.onnx import export_onnx
from covidseg.model.predictor import Predictor
from covidseg.model.unet import LitUNet

# The hyper-parameters of a checkpoint written by ``covidseg fit`` at 3744f44 (a tiny network), as
# stored: no label mapping yet, the window as a list, Lightning's instantiator key.
HPARAMS_3744F44 = {
    "encoder_name": "tu-test_resnet", "encoder_weights": None, "encoder_depth": 3, "decoder_channels": [4, 4, 4], "in_channels": 1,
    "dice_weight": 1.0, "bce_weight": 1.0, "dice_per_image": False, "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0001,
    "scheduler": "cosine", "threshold": 0.4, "tta": True, "lung_weight": 1.0, "channels_last": True, "num_val_samples": 4,
    "image_size": 32, "normalization": "auto", "lung_output": True, "window": [-600.0, 1500.0], "patch_size": None,
    "foreground_fraction": 0.0, "intensity": "image", "_instantiator": "pytorch_lightning.cli.instantiate_module",
}  # fmt: skip
# The metadata ``covidseg export`` wrote into an ONNX file of that checkpoint at 3744f44.
ONNX_META_3744F44 = {
    "covidseg.image_size": "32", "covidseg.normalization": "auto", "covidseg.threshold": "0.4", "covidseg.tta": "True",
    "covidseg.lung_output": "True", "covidseg.intensity": "image", "covidseg.window": "-600,1500", "covidseg.patch_size": "None",
    "covidseg.source": "last.ckpt",
}  # fmt: skip
CARD_3744F44 = ModelCard(image_size=32, threshold=0.4, tta=True, lung_output=True)


@pytest.fixture(scope="module")
def old_ckpt(tmp_path_factory):
    """A checkpoint in the 3744f44 layout (its keys and hyper-parameters), with a network's weights."""
    torch.manual_seed(0)
    hp = {k: v for k, v in HPARAMS_3744F44.items() if not k.startswith("_")}
    state = LitUNet(**hp).state_dict()
    path = tmp_path_factory.mktemp("old") / "last.ckpt"
    torch.save({"epoch": 1, "global_step": 1, "pytorch-lightning_version": "2.6.0", "state_dict": state, "hparams_name": "kwargs",
                "hyper_parameters": dict(HPARAMS_3744F44), "datamodule_hparams_name": "kwargs",
                "datamodule_hyper_parameters": {"root": None, "image_size": 32, "lung_masks": True}}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def raws():
    rng = np.random.default_rng(0)
    return [make_slice(rng, size=48)[0] for _ in range(4)]


def test_card_round_trips_through_checkpoints_and_onnx_metadata():
    card = ModelCard(96, "minmax", "hu_window", (-500.0, 1200.5), (1, 2), 0.35, True, 64, 0.33, True)
    assert read_card(write_card({"hyper_parameters": {"encoder_name": "resnet18"}}, card)) == card
    meta = card_to_onnx(card)
    assert all(isinstance(v, str) for v in meta.values()) and meta["covidseg.window"] == "-500,1200.5"
    assert card_from_onnx(meta, "x") == card
    assert card_from_onnx(card_to_onnx(ModelCard(64)), "x") == ModelCard(64)  # None and defaults survive text


def test_card_of_old_models_takes_defaults():
    assert card_from_hparams(HPARAMS_3744F44) == CARD_3744F44
    assert card_from_onnx(ONNX_META_3744F44, "x") == CARD_3744F44
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


def test_checkpoint_of_3744f44_loads_and_predicts_as_its_rewritten_card(old_ckpt, raws, tmp_path):
    old = Predictor(old_ckpt, device="cpu")
    assert old.card == CARD_3744F44
    # the same weights with the card written by this version
    loaded = torch.load(old_ckpt, map_location="cpu", weights_only=True)
    torch.save(write_card(loaded, read_card(loaded)), tmp_path / "new.ckpt")
    new = Predictor(tmp_path / "new.ckpt", device="cpu")
    assert new.card == old.card
    for a, b in zip(old.predict_maps(raws), new.predict_maps(raws)):
        assert a.shape == (2, 48, 48) and np.array_equal(a, b)


def test_onnx_of_3744f44_loads_and_predicts_as_the_checkpoint(old_ckpt, raws, tmp_path):
    path = tmp_path / "old.onnx"
    export_onnx(old_ckpt, path)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in ONNX_META_3744F44.items():  # the metadata as 3744f44 wrote it
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    from_onnx, from_ckpt = Predictor(path, device="cpu"), Predictor(old_ckpt, device="cpu")
    assert from_onnx.card == from_ckpt.card == CARD_3744F44
    t = from_ckpt.card.threshold
    for a, b in zip(from_onnx.predict_maps(raws), from_ckpt.predict_maps(raws)):
        assert np.abs(a - b).max() < 1e-3
        assert np.mean((a[0] >= t) == (b[0] >= t)) > 0.999
