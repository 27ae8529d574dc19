"""The anatomy stage (issue 30) on CT phantoms built from HU physics (``covidseg.data.phantom``):
nothing outside the body is lung or lesion, gas and airways are not lung, the lungs are split
right/left, lesions stay inside the lungs, and a scan is graded only when its checks pass.

The end-to-end tests run the shipped built-in model, which on these phantoms calls the air
around the patient and the bowel gas "lung" (``--anatomy false``: lungs 2-6x too large, a
third to a half of them outside the body, the abdomen-only scan graded CT-0, the lung bases
CT-1); the tests assert what a user must get instead."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covidseg.anatomy import clean_slice, clean_volume
from covidseg.anatomy.body import body_mask
from covidseg.anatomy.checks import hu_protocol
from covidseg.data.phantom import affine_of, phantom, write_dicom_series, write_nifti
from covidseg.data.volumes import read_scan, to_display
from covidseg.errors import VolumeReadError


def _naive(p):
    """What a slice model trained on 8-bit exports does on HU: every air-filled voxel is lung,
    and dark specks outside the body are lesion."""
    return (p.hu < -400), p.lesion.astype(bool) | ((p.hu < -990) & ~p.body)


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_body_excludes_air_and_table():
    p = phantom("chest", slices=12)
    body = body_mask(p.hu, p.spacing[1])
    assert _dice(body, p.body) > 0.98
    table_rows = slice(int(0.83 * 128) + 1, int(0.86 * 128))
    assert not body[:, table_rows].any()  # the table under the patient is not body
    assert body[:, 64, 64].all()  # lungs, gas and all inside it are


@pytest.mark.parametrize("kind", ["chest", "bases"])
def test_lungs_are_the_two_lungs_not_air_gas_or_airways(kind):
    p = phantom(kind)
    lungs, lesion = _naive(p)
    a = clean_volume(lesion, lungs, p.hu, p.spacing)
    truth = p.lungs > 0
    assert _dice(a.lungs > 0, truth) > 0.98
    assert not (a.lungs[~p.body] > 0).any()  # nothing outside the body
    assert np.mean(a.lungs[truth] == p.lungs[truth]) > 0.99  # right 1, left 2, as lungmask
    assert not (a.lesion & ~(a.lungs > 0)).any() and not (a.lesion & ~p.body).any()
    assert a.removed["lung_outside_body"] > 100 and a.removed["lung_gas"] > 5  # and it says so, in mL
    assert a.removed["lesion_outside_lungs"] > 0
    # vessels inside a lung are lung: the denominator keeps them
    import cv2

    interior = np.stack([cv2.erode(s.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for s in truth])
    vessels = (p.hu > 0) & interior
    assert vessels.sum() > 50 and not lungs[vessels].any() and (a.lungs[vessels] > 0).all()


def test_trachea_inside_the_lung_mask_is_not_lung():
    p = phantom("chest")
    trachea = (p.hu < -990) & p.body & (p.lungs == 0)
    trachea[: int(0.8 * len(trachea))] = False  # only the upper airway, not the bowel gas
    assert trachea.any()
    a = clean_volume(np.zeros_like(trachea), (p.lungs > 0) | trachea, p.hu, p.spacing)
    assert not (a.lungs[trachea] > 0).any() and a.removed["lung_gas"] > 0  # on its own: an all-air 3D component
    # joined to the right lung by a main bronchus in one slice: one 3D component, so the
    # per-slice rule (small all-air 2D components) takes the trachea out of the other slices
    k, y = next((k, int(np.nonzero(trachea[k])[0].mean())) for k in np.nonzero(trachea.any(axis=(1, 2)))[0] if (p.lungs[k, int(np.nonzero(trachea[k])[0].mean())] == 1).any())
    edge = int(np.nonzero(p.lungs[k, y] == 1)[0].max())  # the right lung's medial edge on the trachea's row
    bridge = np.zeros_like(trachea)
    bridge[k, y, edge + 1 : int(np.nonzero(trachea[k])[1].mean())] = True
    joined = (p.lungs > 0) | trachea | bridge
    p.hu[bridge] = -1000
    a = clean_volume(np.zeros_like(trachea), joined, p.hu, p.spacing)
    others = trachea.copy()
    others[k] = False
    assert a.removed["lung_airways"] > 0 and not (a.lungs[others] > 0).any()
    assert _dice(a.lungs > 0, p.lungs > 0) > 0.99


def test_grade_checks_name_why():
    chest, bases, abdomen = phantom("chest"), phantom("bases"), phantom("abdomen")
    assert clean_volume(*_naive(chest)[::-1], chest.hu, chest.spacing).qc == []
    qc = clean_volume(*_naive(bases)[::-1], bases.hu, bases.spacing).qc
    assert any("partial coverage" in r and "top" in r for r in qc)
    assert clean_volume(*_naive(abdomen)[::-1], abdomen.hu, abdomen.spacing).qc == ["no lungs found (0 mL)"]
    cut = phantom("chest", top=40)  # cut through the upper lungs
    assert any("partial coverage" in r for r in clean_volume(*_naive(cut)[::-1], cut.hu, cut.spacing).qc)
    thick = phantom("chest")
    assert any("slice spacing" in r for r in clean_volume(*_naive(thick)[::-1], thick.hu, (12.0, 2.6, 2.6)).qc)


def test_hu_protocol_corrects_a_missing_offset_and_refuses_non_hu():
    p = phantom("chest", slices=6)
    raw = np.clip(p.hu + 1024, 0, None).astype(np.uint16)  # stored without its rescale intercept
    hu, note = hu_protocol(raw, "scan.nii.gz")
    assert "HU" in note and "offset" in note and note.count("\n") == 0
    assert np.allclose(hu, np.clip(p.hu, -1024, None), atol=1)
    assert hu_protocol(p.hu, "x")[1] is None  # true HU passes untouched
    with pytest.raises(VolumeReadError, match="not CT in HU"):
        hu_protocol((p.hu + 1024) / 4096, "norm.nii.gz")  # a normalised 0..1 export
    with pytest.raises(VolumeReadError, match="8-bit"):
        hu_protocol(np.zeros((4, 4, 4), np.uint8), "win.nii.gz")


def test_2d_exports_keep_lesions_inside_the_lungs():
    lungs = np.zeros((64, 64), bool)
    lungs[10:50, 8:28] = lungs[10:50, 36:56] = True
    lesion = np.zeros_like(lungs)
    lesion[20:26, 10:16] = True  # inside the right lung
    lesion[55:60, 30:34] = True  # below the lungs: dropped
    lesion[30:34, 28:30] = True  # at the pleura, within the margin: kept, and lung
    a = clean_slice(lesion, lungs)
    assert a.lesion[20:26, 10:16].all() and not a.lesion[55:60].any() and a.lesion[30:34, 28:30].all()
    assert not (a.lesion & (a.lungs == 0)).any()
    assert set(np.unique(a.lungs)) == {0, 1, 2} and (a.lungs[:, :30] != 2).all()
    assert a.removed["lesion_outside_lungs"] == 20


# --- end to end: the shipped built-in model on phantoms, as a user runs it -----------------


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as f:
        return {Path(r["input"]).name: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scans")
    chest, bases, abdomen = phantom("chest", size=160), phantom("bases", size=160), phantom("abdomen", slices=20, size=160, seed=1)
    two = phantom("chest", size=160, slices=48, seed=2)
    two = type(two)(two.hu[28:30], two.lungs[28:30], two.lesion[28:30], two.body[28:30], two.spacing)
    files = {
        "chest": write_nifti(root / "chest.nii.gz", chest.hu, chest),
        "bases": write_nifti(root / "bases.nii.gz", bases.hu, bases),
        "offset": write_nifti(root / "offset.nii.gz", np.clip(chest.hu + 1024, 0, None), chest, dtype=np.uint16),
        "abdomen_dicom": write_dicom_series(nib.load(write_nifti(root / "abd.nii", abdomen.hu, abdomen)), root / "abdomen_dicom"),
        "two_slices": write_dicom_series(nib.load(write_nifti(root / "two.nii", two.hu, two)), root / "two_slices"),
    }
    return {"files": files, "truth": {"chest": chest, "bases": bases, "offset": chest, "abdomen_dicom": abdomen, "two_slices": two}}


@pytest.fixture(scope="module")
def predicted(scans, tmp_path_factory, monkeypatch_module=None):
    from covidseg.model import pretrained
    from covidseg.model.predictor import Predictor
    from covidseg.prediction import predict_paths

    out = tmp_path_factory.mktemp("pred")
    predict_paths(Predictor(pretrained.resolve(), device="cpu"), list(scans["files"].values()), out, lungs=True, batch_size=8)
    return out


def _outputs(predicted, scans, name):
    p = scans["truth"][name]
    stem = name if name.endswith(("dicom", "slices")) else name
    read = lambda suffix: to_display(np.asanyarray(nib.load(predicted / f"{stem}_{suffix}.nii.gz").dataobj), nib.load(predicted / f"{stem}_{suffix}.nii.gz").affine)  # noqa: E731
    return p, read("lungs"), read("mask") > 0


@pytest.mark.parametrize("name", ["chest", "bases", "offset", "abdomen_dicom", "two_slices"])
def test_no_lung_outside_the_body_and_no_lesion_outside_the_lungs(predicted, scans, name):
    p, lungs, lesion = _outputs(predicted, scans, name)
    assert np.count_nonzero((lungs > 0) & ~p.body) <= 0.02 * max(np.count_nonzero(lungs), 1)
    assert not (lesion & (lungs == 0)).any() and not (lesion & ~p.body).any()
    if p.lungs.any():
        assert _dice(lungs > 0, p.lungs > 0) > 0.9
        assert {1, 2} <= set(np.unique(lungs)) and np.mean(lungs[p.lungs > 0] == p.lungs[p.lungs > 0]) > 0.95  # both sides, each on its side


def test_grades_only_where_the_scan_allows_one(predicted, scans):
    rows = _summary(predicted)
    chest = rows["chest.nii.gz"]
    assert chest["qc"] == "ok" and chest["severity"].startswith("CT-")
    assert float(chest["lung_ml"]) == pytest.approx(float(chest["lung_right_ml"]) + float(chest["lung_left_ml"]))
    assert abs(float(chest["lung_ml"]) - scans["truth"]["chest"].lungs.astype(bool).sum() * scans["truth"]["chest"].voxel_ml) < 0.1 * float(chest["lung_ml"])
    assert chest["involvement_right_percent"] != "" and chest["involvement_left_percent"] != ""
    for name, why in (("bases.nii.gz", "partial coverage"), ("abdomen_dicom", "no lungs found"), ("two_slices", "partial coverage")):
        assert rows[name]["status"] == "ok" and rows[name]["severity"] == "" and rows[name]["involvement_percent"] == "", name
        assert why in rows[name]["qc"], (name, rows[name]["qc"])
    assert float(rows["bases.nii.gz"]["lung_removed_ml"]) > 100  # the outside air and gas it dropped, in mL


def test_a_volume_without_its_hu_offset_is_named_and_corrected(predicted, scans, tmp_path, capsys):
    from covidseg.model import pretrained
    from covidseg.model.predictor import Predictor
    from covidseg.prediction import predict_paths

    rows = _summary(predicted)
    assert rows["offset.nii.gz"]["qc"] == "ok" and rows["offset.nii.gz"]["severity"] == rows["chest.nii.gz"]["severity"]
    _, lungs_offset, _ = _outputs(predicted, scans, "offset")
    _, lungs_hu, _ = _outputs(predicted, scans, "chest")
    assert _dice(lungs_offset > 0, lungs_hu > 0) > 0.99
    predict_paths(Predictor(pretrained.resolve(), device="cpu"), [scans["files"]["offset"]], tmp_path, lungs=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if "offset" in line and "HU" in line]
    assert len(lines) == 1 and "value - 1024" in lines[0]


def test_read_scan_refuses_a_normalised_volume(tmp_path):
    p = phantom("chest", slices=4)
    path = write_nifti(tmp_path / "norm.nii.gz", (p.hu + 1024) / 4096, p, dtype=np.float32)
    with pytest.raises(VolumeReadError, match="norm.nii.gz: values span only .* not CT in HU"):
        read_scan(path)
    assert affine_of(p).shape == (4, 4)
