import math

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from covidseg.errors import CovidSegError
from covidseg.model.unet import LitUNet

SMALL = dict(encoder_depth=3, decoder_channels=[32, 16, 8])


def test_forward_shape_and_loss_known_answer():
    model = LitUNet(**SMALL, dice_weight=0.3, bce_weight=2.0)
    x = torch.rand(2, 1, 64, 64)
    assert model(x).shape == (2, 1, 64, 64)
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    p = logits.sigmoid()
    dice = 1 - (2 * (p * target).sum() + 0.0) / (p.sum() + target.sum()).clamp_min(1e-7)
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert float(model.loss(logits, target)) == pytest.approx(float(0.3 * dice + 2.0 * bce), rel=1e-5)


def test_unused_encoder_stages_are_frozen():
    model = LitUNet(**SMALL)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".layer3." in n or ".layer4." in n for n in frozen)
    model.loss(model(torch.rand(2, 1, 32, 32)), torch.zeros(2, 1, 32, 32)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_imagenet_weights_load_through_the_real_code_path(tmp_path, monkeypatch):
    """smp fetches weights with hf_hub_download; a local fake serves a known state dict."""
    fake = smp.encoders.get_encoder("resnet18", in_channels=3, depth=5)
    with torch.no_grad():
        for p in fake.parameters():
            p.fill_(0.125)
    save_file({k: v.contiguous() for k, v in fake.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    calls = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(smp.encoders, "hf_hub_download", fake_download)
    model = LitUNet(encoder_weights="imagenet")
    assert ("model.safetensors" in {f for _, f in calls}) and "resnet18" in calls[0][0]
    weight = model.net.encoder.layer1[0].conv1.weight
    assert torch.all(weight == 0.125)


def test_imagenet_weights_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("offline mode is enabled")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    with pytest.raises(CovidSegError, match="could not fetch 'imagenet' weights for 'resnet18'"):
        LitUNet(encoder_weights="imagenet")
    with pytest.raises(CovidSegError, match="cannot build U-Net with encoder 'nope'"):
        LitUNet(encoder_name="nope")


def test_per_image_dice_loss_weighs_each_slice_equally():
    from covidseg.model.unet import soft_dice_per_image

    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, :4, :4] = 1  # large lesion, predicted exactly
    target[1, 0, 0, 0] = 1  # one-pixel lesion, missed
    logits = torch.where(target[:1] > 0, 30.0, -30.0)
    logits = torch.cat([logits, torch.full((1, 1, 8, 8), -30.0)])
    per_image = soft_dice_per_image(logits, target, smooth=0.0)
    assert per_image.item() == pytest.approx(0.5, abs=1e-4)  # mean of 1 and 0
    pooled = LitUNet(**SMALL).dice_loss(logits, target)
    assert pooled.item() == pytest.approx(1 - 32 / 33, abs=1e-3)  # the pooled loss hardly sees the miss
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_dice_per_image(torch.full_like(empty, -30.0), empty).item() == pytest.approx(0.0, abs=1e-4)
    model = LitUNet(**SMALL, dice_per_image=True, dice_weight=1.0, bce_weight=0.0)
    assert model.loss(logits, target).item() == pytest.approx(soft_dice_per_image(logits, target).item())


def test_overfits_one_batch():
    """The model drives a fixed batch's loss down and its Dice up (optimizer, loss and gradients connected)."""
    torch.manual_seed(0)
    model = LitUNet(**SMALL, lr=3e-3)
    x = torch.rand(4, 1, 32, 32)
    y = torch.zeros(4, 1, 32, 32)
    y[:, :, 8:20, 10:24] = 1.0
    x = x * 0.5 + 0.5 * y  # a learnable signal
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def dice() -> float:
        model.eval()
        with torch.no_grad():
            p = model.probabilities(x) >= 0.5
        model.train()
        return float(2 * (p * y).sum() / (p.sum() + y.sum()))

    with torch.no_grad():
        start_loss, start_dice = float(model.loss(model(x), y)), dice()
    for _ in range(40):
        loss = model.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(model.loss(model(x), y)) < 0.5 * start_loss
    assert dice() > max(0.9, start_dice + 0.3)


def test_validation_scores_at_the_stored_operating_point():
    """Validation uses the model's threshold and flip TTA: what evaluate and predict deliver."""
    model = LitUNet(**SMALL, threshold=0.3, tta=True).eval()
    assert model.val_scores.threshold == 0.3
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        views = [model(x).sigmoid(), model(x.flip(-1)).sigmoid().flip(-1), model(x.flip(-2)).sigmoid().flip(-2), model(x.flip(-2, -1)).sigmoid().flip(-2, -1)]
        assert torch.allclose(model.probabilities(x), torch.stack(views).mean(0), atol=1e-6)
    with pytest.raises(CovidSegError, match="model.threshold 1.0"):
        LitUNet(**SMALL, threshold=1.0)


def test_partial_label_lung_loss_ignores_slices_without_lung_masks():
    from covidseg.model.unet import partial_label_loss

    logits = torch.zeros(2, 1, 2, 2, requires_grad=True)  # p = 0.5 everywhere
    lungs = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    labelled = torch.tensor([True, False])
    loss = partial_label_loss(logits, lungs, labelled)
    # slice 0 only: BCE ln 2, soft Dice (2*1 + 1) / (2 + 2 + 1) = 0.6
    assert float(loss) == pytest.approx(math.log(2) + 1 - 0.6, rel=1e-5)
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    assert float(partial_label_loss(logits, lungs, torch.tensor([False, False]))) == 0.0


def test_lung_output_is_a_second_channel_trained_where_labelled():
    model = LitUNet(**SMALL, lung_output=True)
    x = torch.rand(3, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 2, 32, 32)
    batch = {"mask": torch.zeros(3, 1, 32, 32), "lung_mask": torch.ones(3, 1, 32, 32), "has_lung_mask": torch.tensor([True, False, True])}
    lesion_only = model.loss(logits, batch["mask"])
    with_lungs = model.loss(logits, batch["mask"], batch)
    assert float(with_lungs) > float(lesion_only)
    model.loss(logits, batch["mask"], {**batch, "has_lung_mask": torch.zeros(3, dtype=torch.bool)}).backward()
    assert float(model.loss(logits, batch["mask"], {**batch, "has_lung_mask": torch.zeros(3, dtype=torch.bool)})) == pytest.approx(float(lesion_only))
    assert model.probabilities(x).shape == (3, 2, 32, 32)


def test_lung_scores_skip_unlabelled_slices():
    from covidseg.metrics.epoch import SegmentationScores

    m = SegmentationScores(0.5, auroc=True)
    probs = torch.tensor([[[[0.9, 0.1]]], [[[0.9, 0.9]]]])
    target = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])  # slice 1 has no mask: its zeros are not truth
    m.update(probs, target, torch.tensor([True, False]))
    out = m.compute()
    assert float(out["dice_image"]) == 1.0 and float(out["dice"]) == 1.0 and float(out["auroc"]) == 1.0
