"""One predictor for covidseg checkpoints and exported ONNX models, used by evaluate, predict,
export and the benchmarks.

``Predictor(paths)`` loads one model or several (a fold ensemble, probabilities averaged),
reads the preprocessing and inference settings stored with them, and maps raw slices of any
size to lesion probability maps at the slice's own size:

    raw [H, W] -> io.preprocess_image -> [B, 1, S, S] -> model(s) (+ flip TTA) -> sigmoid
    -> resize back to [H, W] (bilinear on probabilities; the ground truth is never resized)

``S`` is the model's target size (``image_size``): always the whole slice, also for a model
trained on patches (``patch_size``; the U-Net is fully convolutional).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from covidseg.errors import CovidSegError
from covidseg.io import preprocess_image, resize
from covidseg.volumes import LUNG_WINDOW

# Flip variants for test-time augmentation: (flip rows, flip columns); LitUNet.probabilities
# (validation) and Predictor (evaluate, predict) average the same four views.
TTA_FLIPS = ((False, False), (False, True), (True, False), (True, True))


@dataclass(frozen=True)
class Settings:
    """Everything inference needs besides the weights; travels in checkpoints and ONNX metadata.

    ``patch_size`` records how the model was trained (``None``: whole slices; models saved
    before patches existed have none); inference always runs on the whole ``image_size`` slice.
    """

    image_size: int
    normalization: str = "auto"
    threshold: float = 0.5
    tta: bool = False
    lung_output: bool = False  # a second output channel: lung probabilities
    intensity: str = "image"  # the intensity protocol of training: "image" exports or "hu_window" volumes
    window: tuple[float, float] = LUNG_WINDOW  # (center, width) in HU for volumes
    patch_size: int | None = None  # training patch side, for the record (None: whole slices)

    def to_metadata(self) -> dict[str, str]:
        meta = {f"covidseg.{k}": str(v) for k, v in asdict(self).items()}
        meta["covidseg.window"] = ",".join(f"{v:g}" for v in self.window)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> "Settings":
        try:
            return cls(
                image_size=int(meta["covidseg.image_size"]),
                normalization=meta.get("covidseg.normalization", "auto"),
                threshold=float(meta.get("covidseg.threshold", 0.5)),
                tta=meta.get("covidseg.tta", "False") == "True",
                lung_output=meta.get("covidseg.lung_output", "False") == "True",
                intensity=meta.get("covidseg.intensity", "image"),
                window=tuple(float(v) for v in meta.get("covidseg.window", ",".join(map(str, LUNG_WINDOW))).split(",")),
                patch_size=_optional_int(meta.get("covidseg.patch_size", "None")),
            )
        except KeyError:
            raise CovidSegError(f"{source}: ONNX model has no covidseg metadata; export it with covidseg export") from None


def _optional_int(value) -> int | None:
    return None if value in (None, "None") else int(value)


def load_checkpoint(path: str | Path) -> dict:
    """Loads a covidseg checkpoint with weights-only unpickling (no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CovidSegError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about legacy pickles before refusing
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f"it contains pickled code ({found.group(1)})" if found else "it contains pickled objects"
        raise CovidSegError(f"{path}: refused to load: not a covidseg checkpoint, {what}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError) as err:
        raise CovidSegError(f"{path}: truncated or corrupt checkpoint ({str(err).splitlines()[0][:120]})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt or "image_size" not in hp or "encoder_name" not in hp:
        raise CovidSegError(f"{path}: not a covidseg checkpoint (no covidseg hyper-parameters)")
    return ckpt


def settings_from_checkpoint(ckpt: dict) -> Settings:
    hp = ckpt["hyper_parameters"]
    return Settings(
        image_size=int(hp["image_size"]),
        normalization=str(hp.get("normalization", "auto")),
        threshold=float(hp.get("threshold", 0.5)),
        tta=bool(hp.get("tta", False)),
        lung_output=bool(hp.get("lung_output", False)),
        intensity=str(hp.get("intensity", "image")),
        window=tuple(float(v) for v in hp.get("window", LUNG_WINDOW)),
        patch_size=_optional_int(hp.get("patch_size")),
    )


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """The ``LitUNet`` of a loaded checkpoint, in eval mode, on CPU (never downloads weights)."""
    from covidseg.model import LitUNet

    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    hp["encoder_weights"] = None  # the trained weights follow; do not fetch pretrained ones
    model = LitUNet(**hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


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
        self.settings = Settings.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
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
        threshold, tta: override the settings stored with the model(s).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], device: str | None = None, threshold: float | None = None, tta: bool | None = None):
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        if not paths:
            raise CovidSegError("no model given")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backends, settings = [], []
        for path in paths:
            if path.suffix.lower() == ".onnx":
                if not path.is_file():
                    raise CovidSegError(f"{path}: ONNX model not found")
                backend = _OnnxBackend(path, self.device if device else None)  # None: CUDA if onnxruntime has it
                settings.append(backend.settings)
            else:
                ckpt = load_checkpoint(path)
                settings.append(settings_from_checkpoint(ckpt))
                backend = _TorchBackend(model_from_checkpoint(ckpt), self.device)
            self.backends.append(backend)
        first = settings[0]
        for path, s in zip(paths, settings):
            # the operating point is averaged and the training patch size is only a record
            if replace(s, threshold=first.threshold, tta=first.tta, patch_size=first.patch_size) != first:
                raise CovidSegError(f"{path}: preprocessing or outputs ({s}) differ from {paths[0]}; cannot ensemble")
        self.paths = paths
        self.settings = replace(
            first,
            threshold=float(np.mean([s.threshold for s in settings])) if threshold is None else float(threshold),
            tta=first.tta if tta is None else bool(tta),
        )

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Raw slice ``[H, W]`` -> ``float32 [1, S, S]``: the training preprocessing."""
        return preprocess_image(raw, self.settings.image_size, self.settings.normalization)[None]

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for preprocessed input, averaged over models and TTA flips.

        Shape:
            x: ``float32 [B, 1, S, S]`` -> ``float32 [B, C, S, S]`` in [0, 1] (channel 0 lesion,
            channel 1 lungs for a model with ``lung_output``).
        """
        flips = TTA_FLIPS if self.settings.tta else TTA_FLIPS[:1]
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
