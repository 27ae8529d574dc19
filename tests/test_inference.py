"""Predictor device handling: ONNX execution providers follow the requested device."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from covidseg.errors import CovidSegError
from covidseg.model.predictor import Predictor, onnx_providers

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CUDA = ("CUDAExecutionProvider", {"device_id": 0})


def test_onnx_providers_follow_the_device(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: GPU_BUILD)
    assert onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]  # never the GPU under --device cpu
    assert onnx_providers(torch.device("cuda")) == [CUDA, "CPUExecutionProvider"]  # never TensorRT first
    assert onnx_providers(torch.device("cuda:1"))[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert onnx_providers(None) == [CUDA, "CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_providers(None) == ["CPUExecutionProvider"]
    with pytest.raises(CovidSegError, match="CUDAExecutionProvider"):
        onnx_providers(torch.device("cuda"))


def test_predictor_passes_its_device_to_onnxruntime(monkeypatch, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read")
    seen = []

    def session(path, providers):
        seen.append(providers)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ort, "get_available_providers", lambda: GPU_BUILD)
    monkeypatch.setattr(ort, "InferenceSession", session)
    for device in ("cpu", "cuda", None):
        with pytest.raises(CovidSegError, match="not a loadable ONNX model"):
            Predictor(model, device=device)
    assert seen == [["CPUExecutionProvider"], [CUDA, "CPUExecutionProvider"], [CUDA, "CPUExecutionProvider"]]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(CovidSegError, match="--device cuda: onnxruntime has no CUDAExecutionProvider"):
        Predictor(model, device="cuda")
