"""Patch training and whole-slice inference: sampling, fit, old checkpoints, predict, ONNX."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import FAST_TRAINER, TINY_MODEL

from covidseg.data.datamodule import CTDataModule, SliceDataset
from covidseg.data.io import read_image, read_mask, write_image
from covidseg.data.patches import random_patch
from covidseg.data.samples import Sample
from covidseg.errors import CovidSegError, DataError
from covidseg.export import main as export_main
from covidseg.fit import main as fit_main
from covidseg.model.card import ModelCard, card_from_onnx, read_card
from covidseg.model.checkpoint import model_from_checkpoint, read_checkpoint
from covidseg.model.predictor import Predictor
from covidseg.model.unet import LitUNet
from covidseg.prediction import predict_paths

IMAGE, PATCH = 96, 48  # whole slices at 96 px (tiny_data is 80 px), patches of 48 px


def _lesion_share(image_size: int, lesion: slice, patch: int, fraction: float, draws: int = 2000) -> float:
    mask = np.zeros((image_size, image_size), np.uint8)
    mask[lesion, lesion] = 1
    image = np.zeros_like(mask, dtype=np.float32)
    torch.manual_seed(0)
    return float(np.mean([random_patch(image, mask, patch, fraction)[1].any() for _ in range(draws)]))


def test_patch_is_the_same_window_of_image_and_mask():
    image = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    mask = (np.arange(64 * 48).reshape(64, 48) % 7 == 0).astype(np.float32)
    torch.manual_seed(1)
    origins = set()
    for _ in range(50):
        img, msk = random_patch(image, mask, 16, 0.5)
        assert img.shape == msk.shape == (16, 16) and img.dtype == np.float32
        y, x = divmod(int(img[0, 0]), 48)
        assert np.array_equal(img, image[y : y + 16, x : x + 16]) and np.array_equal(msk, mask[y : y + 16, x : x + 16])
        assert 0 <= y <= 48 and 0 <= x <= 32
        origins.add((y, x))
    assert len(origins) > 20  # random, not one fixed window
    assert random_patch(image, mask, 48, 0.0)[0].shape == (48, 48)  # the full width is allowed
    with pytest.raises(ValueError, match="exceeds"):
        random_patch(image, mask, 49)


def test_foreground_fraction_is_honoured():
    corner = slice(120, 123)  # a 3x3 lesion that a uniform 32 px patch of 128 px hits < 1 % of the time
    uniform = _lesion_share(128, corner, 32, 0.0)
    assert uniform < 0.02
    for fraction in (1 / 3, 0.5):
        expected = fraction + (1 - fraction) * uniform
        assert _lesion_share(128, corner, 32, fraction) == pytest.approx(expected, abs=0.035)
    assert _lesion_share(128, corner, 32, 1.0, draws=200) == 1.0
    torch.manual_seed(0)  # no lesion: forced patches fall back to uniform ones
    assert random_patch(np.zeros((64, 64)), np.zeros((64, 64)), 32, 1.0)[0].shape == (32, 32)


def test_datamodule_trains_on_patches_and_validates_on_whole_slices(tiny_data):
    dm = CTDataModule(str(tiny_data), image_size=IMAGE, patch_size=PATCH, foreground_fraction=1.0, batch_size=4, num_workers=0)
    dm.setup("fit")
    torch.manual_seed(0)
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == train["mask"].shape == (4, 1, PATCH, PATCH)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == val["mask"].shape == (4, 1, IMAGE, IMAGE)
    ds = dm.datasets["train"]
    with_lesion = [i for i, s in enumerate(ds.samples) if read_mask(s.mask).any()]
    assert with_lesion and all(ds[i]["mask"].sum() > 0 for i in with_lesion)  # foreground_fraction 1: always on lesion


def test_one_window_for_the_image_and_every_target(tmp_path):
    # image bright on the lungs, lesion a stripe of them: every patch must crop all three alike
    img = np.zeros((64, 64), np.uint8)
    img[8:56, 6:30] = img[8:56, 34:58] = 255
    lesion = np.zeros_like(img)
    lesion[20:24, :] = img[20:24, :]
    write_image(tmp_path / "i.png", img)
    write_image(tmp_path / "m.png", lesion)
    write_image(tmp_path / "l.png", img)
    sample = Sample(str(tmp_path / "i.png"), str(tmp_path / "m.png"), "c", "s", lung_mask=str(tmp_path / "l.png"))
    ds = SliceDataset([sample], 64, lung_masks=True, patch_size=32, foreground_fraction=0.5)
    torch.manual_seed(0)
    for _ in range(10):
        item = ds[0]
        assert item["image"].shape == item["mask"].shape == item["lung_mask"].shape == (1, 32, 32)
        assert torch.equal(item["lung_mask"], (item["image"] > 0.5).float())
        assert torch.equal(item["mask"], item["mask"] * item["lung_mask"])  # lesion stays inside the lungs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch_size": 160}, "data.patch_size 160: must be between 1 and data.image_size"),
        ({"foreground_fraction": 0.3}, "needs data.patch_size"),
        ({"patch_size": 64, "foreground_fraction": 1.5}, "expected a share in"),
    ],
)
def test_bad_resolution_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(DataError, match=message):
        CTDataModule(None, image_size=128, **kwargs)


def test_sizes_must_fit_the_unet():
    with pytest.raises(CovidSegError, match="data.patch_size 36: must be a multiple of 8"):
        LitUNet(encoder_depth=3, decoder_channels=[32, 16, 8], image_size=64, patch_size=36)
    with pytest.raises(CovidSegError, match="data.image_size 100: must be a multiple of 32"):
        LitUNet(image_size=100)


@pytest.fixture(scope="module")
def patch_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch_run")
    fit_main(
        ["--data.root", str(tiny_data), "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(out)]
        + TINY_MODEL
        + ["--data.image_size", str(IMAGE), "--data.patch_size", str(PATCH), "--data.foreground_fraction", "0.33"]
        + FAST_TRAINER
    )
    (run,) = (out / "covidseg").glob("version_*")
    return run


def test_fit_with_patches_end_to_end(patch_run):
    ckpt = patch_run / "checkpoints" / "best.ckpt"
    hp = read_checkpoint(ckpt)["hyper_parameters"]
    assert (hp["image_size"], hp["patch_size"], hp["foreground_fraction"]) == (IMAGE, PATCH, 0.33)
    assert read_card(read_checkpoint(ckpt)) == ModelCard(IMAGE, patch_size=PATCH, foreground_fraction=0.33)
    config = (patch_run / "config.yaml").read_text()
    assert f"patch_size: {PATCH}" in config and "foreground_fraction: 0.33" in config
    assert (patch_run / "report" / "metrics.json").is_file() and (patch_run / "report" / "dice_by_lesion_size.png").is_file()


def test_predict_returns_masks_at_the_input_size(patch_run, tiny_data, tmp_path):
    src = read_image(sorted((tiny_data / "images").glob("*.png"))[0])
    sizes = {"a": (80, 80), "b": (70, 90), "c": (130, 100)}  # (rows, cols): smaller and larger than 96
    for name, (h, w) in sizes.items():
        write_image(tmp_path / "in" / f"{name}.png", cv2.resize(src, (w, h)))
    predictor = Predictor(patch_run / "checkpoints" / "best.ckpt", device="cpu")
    assert predictor.card.image_size == IMAGE and predictor.card.patch_size == PATCH
    rows = predict_paths(predictor, [tmp_path / "in"], tmp_path / "out", probabilities=True)
    assert [r["status"] for r in rows] == ["ok"] * 3
    for name, shape in sizes.items():
        assert cv2.imread(str(tmp_path / "out" / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == shape
        assert np.load(tmp_path / "out" / f"{name}.npy").shape == shape


def test_old_checkpoint_without_the_new_keys_still_predicts(tiny_ckpt, tiny_data, tmp_path):
    ckpt = read_checkpoint(tiny_ckpt)
    old = {**ckpt, "hyper_parameters": {k: v for k, v in ckpt["hyper_parameters"].items() if k not in ("patch_size", "foreground_fraction")}}
    torch.save(old, tmp_path / "old.ckpt")
    raws = [read_image(p) for p in sorted((tiny_data / "images").glob("*.png"))[:3]]
    new_pred, old_pred = Predictor(tiny_ckpt, device="cpu"), Predictor(tmp_path / "old.ckpt", device="cpu")
    assert old_pred.card.patch_size is None and old_pred.card.image_size == 64
    for a, b in zip(new_pred.predict(raws), old_pred.predict(raws)):
        assert a.shape == (80, 80) and np.array_equal(a, b)
    assert export_main(["--ckpt", str(tmp_path / "old.ckpt"), "--output", str(tmp_path / "old.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "old.onnx")).metadata_props}
    assert meta["covidseg.patch_size"] == "None" and card_from_onnx(meta, "x").patch_size is None
    del meta["covidseg.patch_size"]  # ONNX files exported before patches existed
    assert card_from_onnx(meta, "x") == ModelCard(64)


def test_onnx_export_at_the_new_size_agrees_with_the_checkpoint(patch_run, tiny_data, tmp_path):
    ckpt = patch_run / "checkpoints" / "best.ckpt"
    path = tmp_path / "m.onnx"
    assert export_main(["--ckpt", str(ckpt), "--output", str(path)]) == 0
    proto = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 1 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # dynamic batch, height, width
    meta = {p.key: p.value for p in proto.metadata_props}
    assert card_from_onnx(meta, "x") == read_card(read_checkpoint(ckpt))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model_from_checkpoint(read_checkpoint(ckpt))
    for shape in ((2, 1, IMAGE, IMAGE), (1, 1, PATCH, 3 * PATCH)):
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).sigmoid().numpy()
        assert np.abs(session.run(None, {"image": x})[0] - expected).max() < 1e-4
    raws = [read_image(p) for p in sorted((tiny_data / "images").glob("*.png"))[:4]]
    by_ckpt = list(Predictor(ckpt, device="cpu", tta=True).predict(raws))
    by_onnx = list(Predictor(path, device="cpu", tta=True).predict(raws))
    for a, b in zip(by_ckpt, by_onnx):
        assert a.shape == b.shape == (80, 80) and np.abs(a - b).max() < 1e-3
