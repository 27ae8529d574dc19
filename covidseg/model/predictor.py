"""One predictor for covidseg checkpoints and exported ONNX models, used by evaluate, predict,
export and the benchmarks.

``Predictor(paths)`` loads one model or several (a fold ensemble, probabilities averaged),
reads the model card stored with them (``covidseg.model.card``), and maps raw slices of any
size to lesion probability maps at the slice's own size:

    raw [H, W] -> io.preprocess_image -> [B, 1, S, S] -> model(s) (+ flip TTA) -> sigmoid
    -> resize back to [H, W] (bilinear on probabilities; the ground truth is never resized)

``S`` is the model's target size (``image_size``): always the whole slice, also for a model
trained on patches (``patch_size``; the U-Net is fully convolutional).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from covidseg.data.io import preprocess_image, resize
from covidseg.errors import CovidSegError
from covidseg.model.card import ModelCard, card_from_onnx, read_card
from covidseg.model.checkpoint import model_from_checkpoint, read_checkpoint
from covidseg.model.unet import TTA_FLIPS


class _TorchBackend:
    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model = model.to(device)
        self.device = device
        if device.type == "cuda":
            # TF32 (on by default for cuDNN convolutions, Ampere and later) keeps 10 mantissa
            # bits: probabilities then differ from CPU and ONNX by ~1e-3, and we promise they
            # agree. Inference is cheap enough in full fp32. (The flags are process-wide.)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        logits = self.model(torch.from_numpy(x).to(self.device))
        return logits.float().sigmoid().cpu().numpy()


def onnx_providers(device: torch.device | None) -> list:
    """onnxruntime execution providers for ``device``: CPU only for ``cpu``, CUDA (then CPU
    for the few operators CUDA lacks) for ``cuda``; ``None`` takes CUDA when it is available.
    Never the full available list: it may put TensorRT first, or the GPU under ``--device cpu``."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device is None:
        device = torch.device("cuda" if has_cuda else "cpu")
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if not has_cuda:
            raise CovidSegError(
                "--device cuda: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu, or use --device cpu)"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise CovidSegError(f"--device {device}: ONNX models run on cpu or cuda")


class _OnnxBackend:
    def __init__(self, path: Path, device: torch.device | None = None):
        import onnxruntime as ort

        providers = onnx_providers(device)
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise CovidSegError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0][:120]})") from None
        self.card = card_from_onnx(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


def flip(x: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    if rows:
        x = x[..., ::-1, :]
    if cols:
        x = x[..., ::-1]
    return np.ascontiguousarray(x)


class Predictor:
    """Lesion probabilities from one or several covidseg checkpoints or ONNX files.

    Args:
        paths: a ``.ckpt`` or ``.onnx`` path, or a list of them (averaged: a fold ensemble).
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available); checkpoints only.
        threshold, tta: override the operating point on the model card(s). Without them an
            ensemble's threshold is the mean of its members' (said in one line when they
            differ), and members whose flip TTA settings differ are refused (one line): there
            is no mean of on and off.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], device: str | None = None, threshold: float | None = None, tta: bool | None = None):
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        if not paths:
            raise CovidSegError("no model given")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backends, cards = [], []
        for path in paths:
            if path.suffix.lower() == ".onnx":
                if not path.is_file():
                    raise CovidSegError(f"{path}: ONNX model not found")
                backend = _OnnxBackend(path, self.device if device else None)  # None: CUDA if onnxruntime has it
                cards.append(backend.card)
            else:
                ckpt = read_checkpoint(path)
                cards.append(read_card(ckpt))
                backend = _TorchBackend(model_from_checkpoint(ckpt), self.device)
            self.backends.append(backend)
        first = cards[0]
        for path, card in zip(paths, cards):
            # the operating point is averaged; how each model was trained is only a record
            if not card.runs_like(first):
                raise CovidSegError(f"{path}: preprocessing or outputs ({card}) differ from {paths[0]}; cannot ensemble")
        self.paths = paths
        if tta is None and len({c.tta for c in cards}) > 1:
            flags = ", ".join(f"{p.name} {'on' if c.tta else 'off'}" for p, c in zip(paths, cards))
            raise CovidSegError(f"ensemble members disagree on flip TTA ({flags}); pass --tta true or --tta false")
        thresholds = [c.threshold for c in cards]
        if threshold is None and len(set(thresholds)) > 1:
            print(f"ensemble: threshold {np.mean(thresholds):g}, the mean of the members' ({', '.join(f'{t:g}' for t in thresholds)}); --threshold overrides it")
        self.card: ModelCard = replace(
            first,
            threshold=float(np.mean(thresholds)) if threshold is None else float(threshold),
            tta=first.tta if tta is None else bool(tta),
            volume_threshold=float(np.mean([c.volume_threshold for c in cards])) if all(c.volume_threshold is not None for c in cards) else None,
        )

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Raw slice ``[H, W]`` -> ``float32 [1, S, S]``: the training preprocessing."""
        return preprocess_image(raw, self.card.image_size, self.card.normalization)[None]

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for preprocessed input, averaged over models and TTA flips.

        Shape:
            x: ``float32 [B, 1, S, S]`` -> ``float32 [B, C, S, S]`` in [0, 1] (channel 0 lesion,
            channel 1 lungs for a model with ``lung_output``).
        """
        flips = TTA_FLIPS if self.card.tta else TTA_FLIPS[:1]
        total = 0.0
        for backend in self.backends:
            for rows, cols in flips:
                total = total + flip(backend(flip(x, rows, cols)), rows, cols)
        return (total / (len(self.backends) * len(flips))).astype(np.float32, copy=False)

    def predict(self, raws: Iterable[np.ndarray], batch_size: int = 16) -> Iterator[np.ndarray]:
        """Lesion probability maps ``float32 [H, W]`` at each raw slice's own size, in order."""
        for maps in self.predict_maps(raws, batch_size):
            yield maps[0]

    def predict_maps(self, raws: Iterable[np.ndarray], batch_size: int = 16) -> Iterator[np.ndarray]:
        """All output maps ``float32 [C, H, W]`` (lesion, then lungs) at each raw slice's own size."""
        batch: list[np.ndarray] = []
        for raw in raws:
            batch.append(raw)
            if len(batch) == batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def _run(self, raws: list[np.ndarray]) -> list[np.ndarray]:
        probs = self.predict_batch(np.stack([self.preprocess(r) for r in raws]))
        return [np.clip(np.stack([resize(c, raw.shape[:2]) for c in p]), 0.0, 1.0) for p, raw in zip(probs, raws)]
