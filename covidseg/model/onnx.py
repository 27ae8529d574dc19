"""ONNX export of a checkpoint, checked against PyTorch (``covidseg export``).

The ONNX model maps input ``image`` (float32 ``[batch, 1, H, W]``, preprocessed by
``io.preprocess_image``: ``H = W = S``, the model's ``image_size``) to output ``probability``
(sigmoid included, same shape). Batch, height and width are dynamic (height and width
multiples of ``2 ** encoder_depth``): the model is fully convolutional, so one file serves any
target size. It carries the model card as metadata (``covidseg.*`` keys of
``card.card_to_onnx``), so ``covidseg predict --ckpt model.onnx`` and ``predictor.Predictor``
treat it exactly like the checkpoint. The export uses the
``torch.export``-based (dynamo) exporter. Before the file is put in place, onnxruntime runs it
on random inputs of several batch sizes at ``S`` (and one at another size); if any output differs from PyTorch by more than
``1e-3`` nothing is written and the command exits with status 2.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from covidseg.errors import CovidSegError
from covidseg.model.card import card_to_onnx, read_card
from covidseg.model.checkpoint import model_from_checkpoint, read_checkpoint

DEFAULT_OPSET = 18
MAX_ABS_DIFF = 1e-3
CHECK_BATCH_SIZES = (1, 3)


class ProbabilityModel(nn.Module):
    """A covidseg network with the sigmoid included.

    Shape:
        image: ``float32 [B, 1, H, W]`` in [0, 1] -> probabilities ``float32 [B, 1, H, W]``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).sigmoid()


def max_abs_diff(model: nn.Module, onnx_path: str | Path, image_size: int, batch_sizes: tuple[int, ...] = CHECK_BATCH_SIZES, other_size: int | None = None) -> float:
    """Largest ``|onnxruntime - PyTorch|`` over random inputs ``[B, 1, S, S]`` for each batch
    size, and ``[1, 1, S, other_size]`` when given (the dynamic height and width)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    shapes = [(b, 1, image_size, image_size) for b in batch_sizes] + ([(1, 1, image_size, other_size)] if other_size else [])
    for shape in shapes:
        b = shape[0]
        x = rng.random(shape, dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {"image": x})[0]
        if got.shape != expected.shape:
            raise CovidSegError(f"{onnx_path}: ONNX output shape {got.shape} for batch {b}, PyTorch gives {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_onnx(ckpt: str | Path, output: str | Path, opset: int = DEFAULT_OPSET, tolerance: float = MAX_ABS_DIFF) -> float:
    """Exports ``ckpt`` to ``output`` (an ``.onnx`` path) and returns the measured max difference.

    The model is written to ``output.tmp`` first and moved into place only after the check.

    Raises:
        CovidSegError: not a covidseg checkpoint, a bad output name, or an ONNX model whose
            probabilities differ from PyTorch by more than ``tolerance`` (nothing is written).
    """
    import onnx

    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise CovidSegError(f"--output {output}: must end in .onnx (predict picks the backend by suffix)")
    loaded = read_checkpoint(ckpt)
    card = read_card(loaded)
    model = ProbabilityModel(model_from_checkpoint(loaded)).eval()
    size = card.image_size
    stride = 2 ** int(loaded["hyper_parameters"].get("encoder_depth", 5))
    example = max(size, 2 * stride)  # a side of one stride would be specialised to a constant
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.rand(2, 1, example, example),),
                str(tmp),
                input_names=["image"],
                output_names=["probability"],
                dynamic_shapes={"image": {0: torch.export.Dim("batch"), 2: stride * torch.export.Dim("h"), 3: stride * torch.export.Dim("w")}},
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        proto = onnx.load(str(tmp))
        for key, value in {**card_to_onnx(card), "covidseg.source": Path(ckpt).name}.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff = max_abs_diff(model, tmp, size, other_size=size + stride)
        if not diff <= tolerance:  # also catches NaN
            raise CovidSegError(f"{output}: ONNX probabilities differ from PyTorch by {diff:.3g} (> {tolerance:g}); nothing written")
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return diff
