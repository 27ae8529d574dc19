"""python -m covidseg.export: the ONNX contract, and ONNX/checkpoint parity through predict."""

from __future__ import annotations

import cv2
import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from covidseg.data.io import read_image, write_image
from covidseg.errors import CovidSegError
from covidseg.export import main
from covidseg.model.card import card_from_onnx, read_card
from covidseg.model.checkpoint import model_from_checkpoint, read_checkpoint
from covidseg.model.onnx import ProbabilityModel, export_onnx
from covidseg.model.predictor import Predictor
from covidseg.prediction import predict_paths


@pytest.fixture(scope="module")
def onnx_path(tiny_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["--ckpt", str(tiny_ckpt), "--output", str(path)]) == 0
    return path


def test_onnx_contract(onnx_path, tiny_ckpt):
    ckpt = read_checkpoint(tiny_ckpt)
    size = ckpt["hyper_parameters"]["image_size"]
    proto = onnx.load(str(onnx_path))
    assert not list(onnx_path.parent.glob("*.data")) and not list(onnx_path.parent.glob("*.tmp"))  # one self-contained file
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and dims[1] == 1 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # dynamic batch, H, W
    meta = {p.key: p.value for p in proto.metadata_props}
    assert card_from_onnx(meta, "x") == read_card(ckpt)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model_from_checkpoint(ckpt)
    for batch in (1, 3):
        x = np.random.default_rng(batch).random((batch, 1, size, size), dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).sigmoid().numpy()  # probabilities, not logits
        assert np.abs(session.run(None, {"image": x})[0] - expected).max() < 1e-4


def test_onnx_and_checkpoint_predict_the_same(onnx_path, tiny_ckpt, tiny_data, tmp_path):
    images = sorted((tiny_data / "images").glob("*.png"))
    write_image(tmp_path / "in" / "a.png", read_image(images[0]))
    write_image(tmp_path / "in" / "b.png", cv2.resize(read_image(images[5]), (90, 70)).astype(np.uint16) * 257)
    hu = np.stack([read_image(p) for p in images[:3]], -1).astype(np.float32) * (1500 / 255) - 1350
    nib.save(nib.Nifti1Image(hu.astype(np.int16), np.diag([0.7, 0.7, 2.5, 1])), tmp_path / "in" / "ct.nii.gz")
    for model in (tiny_ckpt, onnx_path):
        predict_paths(Predictor(model, device="cpu", tta=True), [tmp_path / "in"], tmp_path / model.suffix, probabilities=True)
    ckpt_dir, onnx_dir = tmp_path / ".ckpt", tmp_path / ".onnx"
    pairs = [(np.load(ckpt_dir / f"{n}.npy"), np.load(onnx_dir / f"{n}.npy")) for n in ("a", "b")]
    pairs.append(tuple(nib.load(d / "ct_prob.nii.gz").get_fdata() for d in (ckpt_dir, onnx_dir)))
    for p_ckpt, p_onnx in pairs:
        assert np.abs(p_ckpt - p_onnx).max() < 1e-3
    for name in ("a.png", "b.png"):
        m_ckpt, m_onnx = (cv2.imread(str(d / name), cv2.IMREAD_UNCHANGED) for d in (ckpt_dir, onnx_dir))
        assert np.array_equal(m_ckpt, m_onnx)
    assert np.array_equal(*(np.asanyarray(nib.load(d / "ct_mask.nii.gz").dataobj) for d in (ckpt_dir, onnx_dir)))


def test_export_fails_loudly_and_writes_nothing(tiny_ckpt, tmp_path):
    with pytest.raises(CovidSegError, match="differ from PyTorch"):
        export_onnx(tiny_ckpt, tmp_path / "m.onnx", tolerance=-1.0)  # any difference is too much
    assert list(tmp_path.iterdir()) == []


def test_export_needs_onnx_suffix_and_a_checkpoint(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(tiny_ckpt), "--output", str(tmp_path / "model.bin")])
    assert exc.value.code == 2 and ".onnx" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(tmp_path / "other.ckpt"), "--output", str(tmp_path / "m.onnx")])
    assert exc.value.code == 2 and "not a covidseg checkpoint" in capsys.readouterr().err


def test_probability_model_shape():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    out = ProbabilityModel(net)(torch.rand(2, 1, 8, 8))
    assert out.shape == (2, 1, 8, 8) and 0 <= out.min() and out.max() <= 1
