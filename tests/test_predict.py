"""covidseg predict: images of any size/format, NIfTI volumes, TTA, failures, safety."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
import torch

from covidseg.data.io import preprocess_image, read_image, resize, write_image
from covidseg.data.volumes import to_display
from covidseg.errors import CovidSegError
from covidseg.model.checkpoint import model_from_checkpoint, read_checkpoint
from covidseg.model.predictor import Predictor
from covidseg.predict import main
from covidseg.prediction import predict_paths

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(tiny_ckpt) -> Predictor:
    return Predictor(tiny_ckpt, device="cpu")


def _slice(tiny_data: Path, i: int = 0) -> np.ndarray:
    return read_image(sorted((tiny_data / "images").glob("*.png"))[i])  # uint8 [80, 80]


@pytest.fixture(scope="module")
def mixed_folder(tiny_data, tmp_path_factory) -> Path:
    """8-bit PNG 80x80, 16-bit PNG 70x90, 16-bit TIFF 70x90 (same pixels), RGB JPEG 72x96."""
    folder = tmp_path_factory.mktemp("mixed")
    img = _slice(tiny_data)
    write_image(folder / "a8.png", img)
    wide16 = cv2.resize(img, (90, 70)).astype(np.uint16) * 257
    write_image(folder / "b16.png", wide16)
    write_image(folder / "c16.tif", wide16)
    write_image(folder / "d_rgb.jpg", cv2.cvtColor(cv2.resize(_slice(tiny_data, 1), (96, 72)), cv2.COLOR_GRAY2BGR))
    (folder / "notes.txt").write_text("ignored: not an image")
    return folder


def _rows(path: Path) -> dict[str, dict]:
    with open(path / "summary.csv", newline="") as f:
        return {Path(r["input"]).name: r for r in csv.DictReader(f)}


def test_folder_of_mixed_images(predictor, mixed_folder, tmp_path):
    rows = predict_paths(predictor, [mixed_folder], tmp_path, probabilities=True, overlay=True)
    assert [Path(r["input"]).name for r in rows] == ["a8.png", "b16.png", "c16.tif", "d_rgb.jpg"]
    summary = _rows(tmp_path)
    for name, shape in [("a8", (80, 80)), ("b16", (70, 90)), ("c16", (70, 90)), ("d_rgb", (72, 96))]:
        mask = cv2.imread(str(tmp_path / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        prob = np.load(tmp_path / f"{name}.npy")
        assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert prob.shape == shape and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
        assert np.array_equal(mask > 0, prob >= predictor.card.threshold)
        assert cv2.imread(str(tmp_path / f"{name}_overlay.png")).shape == (*shape, 3)
        row = summary[next(n for n in summary if n.startswith(name))]
        assert row["status"] == "ok" and row["shape"] == f"{shape[0]}x{shape[1]}"
        assert int(row["lesion_pixels"]) == (mask > 0).sum()
        assert float(row["lesion_fraction"]) == pytest.approx((mask > 0).mean())
    # 16-bit PNG and TIFF with the same pixels give the same prediction
    assert np.array_equal(np.load(tmp_path / "b16.npy"), np.load(tmp_path / "c16.npy"))


def test_nifti_volume_round_trip(predictor, tiny_data, tmp_path):
    # Three display slices [Z=3, H=90, W=70] stored RAS (with a small rotation) as int16 HU that
    # the default lung window maps back to the exact 8-bit pixels.
    display = np.stack([cv2.resize(_slice(tiny_data, i), (70, 90)) for i in range(3)])
    hu = np.rint(-1350 + display * (1500 / 255)).astype(np.int16)
    data = np.stack([s.T[::-1, ::-1] for s in hu], axis=-1)  # [X=70, Y=90, Z=3]
    c, s = np.cos(0.15), np.sin(0.15)
    affine = np.array([[0.7 * c, -0.7 * s, 0, -20.0], [0.7 * s, 0.7 * c, 0, 35.0], [0, 0, 2.5, -110.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "ct.nii.gz")

    rows = predict_paths(predictor, [tmp_path / "ct.nii.gz"], tmp_path / "out", probabilities=True, batch_size=2, anatomy=False)  # the network as is
    mask_img = nib.load(tmp_path / "out" / "ct_mask.nii.gz")
    prob_img = nib.load(tmp_path / "out" / "ct_prob.nii.gz")
    mask = np.asanyarray(mask_img.dataobj)
    prob = np.asanyarray(prob_img.dataobj)
    assert mask.shape == prob.shape == (70, 90, 3) and mask.dtype == np.uint8 and prob.dtype == np.float32
    assert set(np.unique(mask)) <= {0, 1} and 0 <= prob.min() and prob.max() <= 1
    for img in (mask_img, prob_img):
        assert np.allclose(img.affine, affine, atol=1e-5)
        assert np.allclose(img.header.get_zooms(), (0.7, 0.7, 2.5))
    # the same slices predicted as 8-bit images: same orientation, same preprocessing
    expected = np.stack(list(predictor.predict(display)))
    assert np.allclose(to_display(prob, affine), expected, atol=1e-6)
    # the mask is the volume's own probabilities thresholded; a pixel within 1e-5 of the threshold
    # may fall either side between batch sizes (the model is trained in the suite: CI once met one)
    sure = np.abs(expected - predictor.card.threshold) > 1e-5
    assert np.array_equal(to_display(mask, affine)[sure], (expected >= predictor.card.threshold)[sure])
    assert np.array_equal(mask, (prob >= predictor.card.threshold).astype(np.uint8))
    (row,) = rows
    assert row["status"] == "ok" and row["shape"] == "70x90x3" and row["lesion_pixels"] == mask.sum()
    assert float(_rows(tmp_path / "out")["ct.nii.gz"]["lesion_ml"]) == pytest.approx(mask.sum() * 0.7 * 0.7 * 2.5 / 1000)


def test_tta_is_the_mean_over_flips(tiny_ckpt, tiny_data, tmp_path):
    raw = _slice(tiny_data, 2)
    write_image(tmp_path / "in" / "x.png", raw)
    for flag in ("true", "false"):
        args = ["--ckpt", str(tiny_ckpt), "--input", str(tmp_path / "in"), "--output", str(tmp_path / flag), "--probabilities", "true", "--device", "cpu", "--tta", flag]
        assert main(args) == 0
    tta, plain = np.load(tmp_path / "true" / "x.npy"), np.load(tmp_path / "false" / "x.npy")
    # by hand: the shared preprocessing, the model on the 4 flips, un-flip, mean, resize back
    ckpt = read_checkpoint(tiny_ckpt)
    model = model_from_checkpoint(ckpt)
    x = torch.from_numpy(preprocess_image(raw, ckpt["hyper_parameters"]["image_size"], ckpt["hyper_parameters"]["normalization"]))[None, None]
    with torch.inference_mode():
        flips = [[], [3], [2], [2, 3]]
        mean = torch.stack([model(x.flip(d)).sigmoid().flip(d) if d else model(x).sigmoid() for d in flips]).mean(0)[0, 0].numpy()
        single = model(x).sigmoid()[0, 0].numpy()
    assert np.allclose(tta, np.clip(resize(mean, raw.shape), 0, 1), atol=1e-5)
    assert np.allclose(plain, np.clip(resize(single, raw.shape), 0, 1), atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-4


def test_bad_inputs_are_reported_and_skipped(tiny_ckpt, tiny_data, tmp_path):
    good = tmp_path / "in"
    write_image(good / "ok1.png", _slice(tiny_data, 0))
    write_image(good / "ok2.png", _slice(tiny_data, 1))
    (good / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (good / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "covidseg.predict", "--ckpt", str(tiny_ckpt), "--input", f"[{good}, {tmp_path / 'missing.png'}]", "--output", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    for name in ("corrupt.png", "broken.nii.gz", "missing.png"):
        assert name in proc.stderr
    assert (out / "ok1.png").is_file() and (out / "ok2.png").is_file()
    assert not (out / "corrupt.png").exists() and not (out / "broken_mask.nii.gz").exists()
    rows = _rows(out)
    assert [(n, r["status"]) for n, r in rows.items()] == [  # input order
        ("broken.nii.gz", "failed"),
        ("corrupt.png", "failed"),
        ("ok1.png", "ok"),
        ("ok2.png", "ok"),
        ("missing.png", "failed"),
    ]
    assert rows["ok2.png"]["mask"] == str(out / "ok2.png") and rows["broken.nii.gz"]["type"] == "volume"
    assert "corrupt" in rows["corrupt.png"]["reason"] and "not found" in rows["missing.png"]["reason"]


def test_refuses_to_overwrite(predictor, tiny_ckpt, tiny_data, tmp_path, capsys):
    src = tmp_path / "in"
    write_image(src / "x.png", _slice(tiny_data))
    out = tmp_path / "out"
    predict_paths(predictor, [src], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(CovidSegError, match="--overwrite"):
        predict_paths(predictor, [src], out, probabilities=True)
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(tiny_ckpt), "--input", str(src), "--output", str(out)])
    assert exc.value.code == 2 and "already exist" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    predict_paths(predictor, [src], out, probabilities=True, overwrite=True)
    assert (out / "x.npy").is_file()
    with pytest.raises(CovidSegError, match="replace an input"):  # never, even with --overwrite
        predict_paths(predictor, [src], src, overwrite=True)


class Payload:
    """Something that is not a checkpoint; unpickling it would run ``Path.touch``."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("kind", ["torch_save", "raw_pickle", "plain_dict"])
def test_refuses_foreign_files(kind, tiny_data, tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    bad = tmp_path / "model.ckpt"
    if kind == "torch_save":
        torch.save({"state_dict": {}, "hyper_parameters": Payload(sentinel)}, bad)
    elif kind == "raw_pickle":
        bad.write_bytes(pickle.dumps(Payload(sentinel)))
    else:
        torch.save({"weights": torch.zeros(2)}, bad)
    write_image(tmp_path / "in" / "x.png", _slice(tiny_data))
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(bad), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "model.ckpt" in err
    assert not sentinel.exists()


def test_volume_into_an_image_trained_model_warns_once(predictor, tmp_path, capsys):
    data = np.full((40, 40, 3), -800, np.int16)
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / f"{name}.nii.gz")
    predict_paths(predictor, [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], tmp_path / "out")
    err = capsys.readouterr().err
    assert err.count("warning: the model was trained on 2D image exports") == 1 and "--data.window" in err
    predict_paths(predictor, [tmp_path / "a.nii.gz"], tmp_path / "out2", window=(-600.0, 1500.0))
    assert "warning" not in capsys.readouterr().err  # an explicit window is the user's choice


def test_lungs_write_masks_burden_and_cases(lung_ckpt, tiny_data, tmp_path, capsys):
    from covidseg.metrics.severity import GRADES

    images = sorted((tiny_data / "images").glob("*.png"))[:8]  # cases 000 and 001, 4 slices each
    assert main(["--ckpt", str(lung_ckpt), "--input", "[" + ", ".join(map(str, images)) + "]", "--output", str(tmp_path / "out"),
                 "--lungs", "true", "--case_regex", r"^(case\d+)_"]) == 0  # fmt: skip
    rows = _rows(tmp_path / "out")
    first = rows[images[0].name]
    lungs = read_image(tmp_path / "out" / f"{images[0].stem}_lungs.png")
    assert lungs.shape == (80, 80) and set(np.unique(lungs)) <= {0, 255}
    assert int(first["lung_pixels"]) == int((lungs > 0).sum()) and first["severity"] in GRADES
    with open(tmp_path / "out" / "cases.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    assert [c["case_id"] for c in cases] == ["case000", "case001"] and all(c["slices"] == "4" for c in cases)
    lung_sum = sum(int(rows[p.name]["lung_pixels"]) for p in images[:4])
    assert int(cases[0]["lung_pixels"]) == lung_sum
    assert "cases: " in capsys.readouterr().out


def test_lungs_need_a_model_with_a_lung_output(tiny_ckpt, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--ckpt", str(tiny_ckpt), "--input", str(_slice_path(tiny_data)), "--output", str(tmp_path / "o"), "--lungs", "true"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no lung output" in err[0] and "--data.lung_masks true" in err[0]


def _slice_path(tiny_data: Path) -> Path:
    return sorted((tiny_data / "images").glob("*.png"))[0]


def test_bare_boolean_flags_mean_true_and_data_flags_share_fit_names(tiny_ckpt, tiny_data, tmp_path):
    """``--probabilities`` alone (as users type it) failed with "expected one argument"."""
    from covidseg.evaluate import build_parser as evaluate_parser
    from covidseg.predict import build_parser

    src = tmp_path / "in"
    write_image(src / "x.png", _slice(tiny_data))
    out = tmp_path / "out"
    assert main(["--ckpt", str(tiny_ckpt), "--input", str(src), "--output", str(out), "--device", "cpu"]) == 0
    assert not (out / "x.npy").exists()
    assert main(["--ckpt", str(tiny_ckpt), "--input", str(src), "--output", str(out), "--probabilities", "--overwrite", "--tta", "--device", "cpu"]) == 0
    assert (out / "x.npy").is_file()
    p = build_parser()
    base = ["--input", "x", "--output", "y"]
    assert p.parse_args(base + ["--probabilities", "false", "--overwrite", "true"]).probabilities is False
    assert p.parse_args(base + ["--tta"]).tta is True and p.parse_args(base + ["--tta", "false"]).tta is False and p.parse_args(base).tta is None
    # one name per concept: --data.window / --data.case_regex as in fit (the old spellings still parse)
    for window, regex in (("--data.window", "--data.case_regex"), ("--window", "--case_regex")):
        args = p.parse_args(base + [window, "[-500, 1400]", regex, r"^(case\d+)_"])
        assert args.data.window == (-500.0, 1400.0) and args.data.case_regex == r"^(case\d+)_"
    e = evaluate_parser().parse_args(["--ckpt", "m.ckpt", "--output", "r", "--tta"])
    assert e.tta is True


def test_case_regex_that_matches_no_stem_stops(tiny_ckpt, tiny_data, tmp_path, capsys):
    """Kaggle-named frames with a pattern that includes the extension: it is matched against the
    stem, so it matched nothing and every file silently became its own case."""
    src = tmp_path / "frames"
    for k in (100, 101, 102):
        write_image(src / f"Jun_coronacases_case10_{k}.png", _slice(tiny_data))
    args = ["--ckpt", str(tiny_ckpt), "--input", str(src), "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        main(args + ["--output", str(tmp_path / "bad"), "--data.case_regex", r"^(.*)_\d+\.png$"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("error:") == 1
    assert "matches none of the 3 file name(s)" in err and "file stem" in err and "'Jun_coronacases_case10_100'" in err
    assert not (tmp_path / "bad" / "cases.csv").exists()
    assert main(args + ["--output", str(tmp_path / "ok"), "--case_regex", r"^(.*)_\d+$"]) == 0
    assert "3 of 3 file stems matched (1 cases" in capsys.readouterr().out
    with open(tmp_path / "ok" / "cases.csv", newline="") as f:
        assert [r["case_id"] for r in csv.DictReader(f)] == ["Jun_coronacases_case10"]


def test_summary_stats_count_the_mask_and_measure_the_burden():
    """``summary.prediction_stats`` by hand: pixel counts describe the cleaned mask, mL and
    involvement the burden at the volume operating point (``over`` inside the lesion region),
    per study and per side of a right/left lung map."""
    from covidseg.anatomy import Anatomy
    from covidseg.prediction.jobs import Job
    from covidseg.prediction.summary import prediction_stats

    lesion = np.zeros((2, 4, 4), bool)
    lesion[0, 0, :2] = True  # 2 pixels, right lung
    over = lesion.copy()
    over[1, 0, 2:] = True  # 2 more at the volume threshold, left lung
    over[1, 3, 3] = True  # outside the region: not burden
    region = np.ones_like(lesion)
    region[1, 3, 3] = False
    lungs = np.zeros((2, 4, 4), np.uint8)
    lungs[:, :2, :2], lungs[:, :2, 2:] = 1, 2  # 8 + 8 pixels
    job = Job(Path("a.nii.gz"), "volume", (Path("a_mask.nii.gz"), Path("a_lungs.nii.gz")))
    got = prediction_stats(job, Anatomy(lesion, lungs, sided=True, region=region), 0.5, lungs=True, over=over)
    assert got["lesion_pixels"] == 2 and got["lesion_fraction"] == pytest.approx(2 / 32)
    assert got["lesion_ml"] == pytest.approx(4 * 0.5) and got["lung_ml"] == pytest.approx(16 * 0.5)
    assert got["lung_pixels"] == 16 and got["lesion_in_lung_pixels"] == 4 and got["qc"] == "ok"
    assert got["involvement_percent"] == pytest.approx(25.0)
    assert got["lung_right_ml"] == got["lung_left_ml"] == pytest.approx(8 * 0.5)
    assert got["involvement_right_percent"] == got["involvement_left_percent"] == pytest.approx(25.0)
    assert got["lungs"] == "a_lungs.nii.gz" and got["mask"] == "a_mask.nii.gz"
