"""DICOM series: reading (order, rescale, geometry), refusals, and predict on the NIfTI and the
DICOM form of the same volume. Series are written here with pydicom from generated volumes."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from covidseg.data.dicom import is_dicom_file, is_series, list_series, read_series
from covidseg.data.phantom import write_dicom_series as write_series  # one DICOM writer: the phantoms'
from covidseg.data.synthetic import generate_volumes
from covidseg.data.volumes import read_volume
from covidseg.errors import VolumeReadError
from covidseg.model.predictor import Predictor
from covidseg.predict import main
from covidseg.prediction import predict_paths
from covidseg.prediction import list_inputs


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    """One generated volume, 0.7x0.7x2.5 mm, stored LPS."""
    root = generate_volumes(tmp_path_factory.mktemp("ct"), cases=1, slices=7, size=40, orientation="LPS")
    return root / "images" / "case000.nii.gz"


def _rotated(img: nib.Nifti1Image, angle: float = 0.2) -> nib.Nifti1Image:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return nib.Nifti1Image(np.asanyarray(img.dataobj), rot @ img.affine)


@pytest.mark.parametrize("rotate", [False, True])
def test_series_reads_back_as_the_volume(ct, tmp_path, rotate):
    img = nib.load(ct)
    img = _rotated(img) if rotate else img
    folder = write_series(img, tmp_path / "series")
    assert is_series(folder) and not is_series(tmp_path)
    ref, hu = read_series(folder)
    assert hu.dtype == np.float32 and hu.shape == img.shape == (40, 40, 7)
    assert np.array_equal(hu, np.asanyarray(img.dataobj).astype(np.float32))  # order and rescale
    assert np.allclose(ref.affine, img.affine, atol=1e-4)
    assert np.allclose(ref.header.get_zooms(), (0.7, 0.7, 2.5))
    assert np.array_equal(read_volume(folder)[1], read_volume(ct if not rotate else _save(img, tmp_path))[1])


def _save(img, tmp_path) -> Path:
    nib.save(img, tmp_path / "rot.nii.gz")
    return tmp_path / "rot.nii.gz"


def test_bad_series_are_refused_naming_the_folder(ct, tmp_path):
    img = nib.load(ct)
    mixed = write_series(img, tmp_path / "mixed", series_uid="1.2.3")
    write_series(img, tmp_path / "other", series_uid="1.2.4")
    for f in (tmp_path / "other").iterdir():
        f.rename(mixed / ("b" + f.name))
    with pytest.raises(VolumeReadError, match=r"mixed: 2 DICOM series in one folder \(SeriesInstanceUID 1.2.3, 1.2.4\)"):
        read_series(mixed)
    gap = write_series(img, tmp_path / "gap", skip=(3,))
    with pytest.raises(VolumeReadError, match=r"gap: uneven slice spacing \(2.5 to 5 mm, median 2.5.*missing slices\?"):
        read_series(gap)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match="empty: no DICOM files"):
        read_series(tmp_path / "empty")
    broken = write_series(img, tmp_path / "broken")
    (broken / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(VolumeReadError, match="broken: junk.dcm is not readable DICOM"):
        read_series(broken)


def test_a_folder_of_several_series_is_split_by_series_and_each_predicted(tiny_ckpt, ct, tmp_path, capsys):
    """As scanners write them: two series in one flat folder. Each is predicted, named by its place."""
    img = nib.load(ct)
    flat = write_series(img, tmp_path / "scanner", series_uid="1.2.3")
    write_series(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, :5], img.affine), tmp_path / "other", series_uid="1.2.4")
    for f in (tmp_path / "other").iterdir():
        f.rename(flat / ("b" + f.name))
    assert [(uid, label, n) for uid, label, n in list_series(flat)] == [("1.2.3", "series-1", 7), ("1.2.4", "series-2", 5)]
    assert read_series(flat, "1.2.4")[1].shape[2] == 5
    out = tmp_path / "preds"
    assert main(["--ckpt", str(tiny_ckpt), "--input", str(flat), "--output", str(out), "--device", "cpu", "--anatomy", "false"]) == 0
    printed = capsys.readouterr().out
    for name, n in (("scanner_series-1", 7), ("scanner_series-2", 5)):
        assert nib.load(out / f"{name}_mask.nii.gz").shape[2] == n
        assert f"({n} files) -> {name}" in printed
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["series"] for r in rows) == ["1.2.3", "1.2.4"] and [r["shape"].split("x")[2] for r in sorted(rows, key=lambda r: r["series"])] == ["7", "5"]


def test_files_without_the_preamble_are_read(ct, tmp_path):
    img = nib.load(ct)
    series = write_series(img, tmp_path / "raw")
    for f in list(series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.file_meta, ds.preamble = FileMetaDataset(), None
        f.unlink()
        pydicom.dcmwrite(series / f.stem, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)  # no preamble, no DICM, no suffix
    assert all(f.read_bytes()[:2] == b"\x08\x00" for f in series.iterdir())  # the data set from byte 0
    assert is_series(series) and all(is_dicom_file(f) for f in series.iterdir())
    assert np.array_equal(read_series(series)[1], read_series(write_series(img, tmp_path / "ref"))[1])
    (series / "notes.txt").write_bytes(b"\x08\x00" + b"looks like a start, holds no image" * 4)
    assert not is_dicom_file(series / "notes.txt")


def test_predict_same_mask_from_nifti_and_dicom(tiny_ckpt, ct, tmp_path):
    """The same volume as .nii.gz and as a DICOM series (alone and in a folder of series):
    same mask, written with the series' geometry; a broken series is reported, exit 1."""
    img = nib.load(ct)
    series = write_series(img, tmp_path / "all" / "case000_dicom")
    write_series(img, tmp_path / "all" / "gap", skip=(2,))
    from covidseg.data.volumes import read_volume

    # the tiny model's own probabilities set the threshold (its 90th percentile on this volume),
    # so the masks compared are never empty, however its short training went; anatomy off: this
    # test is about geometry, and the stage may remove all of a tiny model's lesion
    probe = Predictor(tiny_ckpt, device="cpu")
    maps = np.stack(list(probe.predict_maps(list(read_volume(ct, *probe.card.window)[1]))))
    predictor = Predictor(tiny_ckpt, device="cpu", threshold=float(np.quantile(maps[:, 0], 0.9)))
    predict_paths(predictor, [ct], tmp_path / "nifti", anatomy=False)
    predict_paths(predictor, [series], tmp_path / "dicom", anatomy=False)
    from_nifti = nib.load(tmp_path / "nifti" / "case000_mask.nii.gz")
    from_dicom = nib.load(tmp_path / "dicom" / "case000_dicom_mask.nii.gz")
    assert np.array_equal(np.asanyarray(from_dicom.dataobj), np.asanyarray(from_nifti.dataobj))
    assert np.allclose(from_dicom.affine, img.affine, atol=1e-4) and np.allclose(from_dicom.header.get_zooms(), (0.7, 0.7, 2.5))
    assert np.asanyarray(from_nifti.dataobj).any()  # a real comparison, not two empty masks

    assert list_inputs([tmp_path / "all"]) == [tmp_path / "all" / "case000_dicom", tmp_path / "all" / "gap"]
    assert main(["--ckpt", str(tiny_ckpt), "--input", str(tmp_path / "all"), "--output", str(tmp_path / "cli"), "--device", "cpu",
                 "--threshold", str(predictor.card.threshold), "--anatomy", "false"]) == 1  # fmt: skip
    with open(tmp_path / "cli" / "summary.csv", newline="") as f:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(f)}
    assert rows["case000_dicom"]["status"] == "ok" and rows["case000_dicom"]["type"] == "volume"
    expected_ml = np.asanyarray(from_nifti.dataobj).sum() * 0.7 * 0.7 * 2.5 / 1000
    assert float(rows["case000_dicom"]["lesion_ml"]) == pytest.approx(expected_ml)
    assert rows["gap"]["status"] == "failed" and "missing slices" in rows["gap"]["reason"]
    assert pydicom.__version__  # the reader the project depends on


def test_manifest_trains_from_dicom_series_with_nifti_masks(ct, tmp_path):
    """A manifest row may name a DICOM series folder: same slices as the NIfTI form."""
    from covidseg.data.samples import image_of, mask_of
    from covidseg.data.validate import validate_data

    root = tmp_path / "d"
    write_series(nib.load(ct), root / "series" / "case000")
    mask = ct.parents[1] / "masks" / "case000.nii.gz"
    with (root / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("image", "mask"), ("series/case000", str(mask))])
    from_dicom = validate_data([root], lesion_labels=[1, 2])
    from_nifti = validate_data([ct.parents[1]], lesion_labels=[1, 2])
    assert [s.case_id for s in from_dicom.samples[:1]] == ["case000"] and len(from_dicom.samples) == len(from_nifti.samples) == 7
    for a, b in zip(from_dicom.samples, from_nifti.samples):
        assert np.array_equal(image_of(a), image_of(b)) and np.array_equal(mask_of(a, [1, 2]), mask_of(b, [1, 2]))


def test_nested_study_export_predicts_every_series(tiny_ckpt, ct, tmp_path, capsys):
    """A PACS/CD export: STUDY/DICOMDIR beside ST000/SE0001/*.dcm and ST000/SE0002/*.dcm,
    and a second study whose series is also called SE0001. Given the study folder, predict
    finds every series, reports each one and names outputs by their path in the study."""
    img = nib.load(ct)
    study = tmp_path / "STUDY"
    write_series(img, study / "ST000" / "SE0001")
    write_series(img, study / "ST000" / "SE0002")
    write_series(img, study / "ST001" / "SE0001")
    (study / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # an index, not an image
    assert not is_series(study)
    assert list_inputs([study]) == [study / "ST000" / "SE0001", study / "ST000" / "SE0002", study / "ST001" / "SE0001"]
    out = tmp_path / "preds"
    assert main(["--ckpt", str(tiny_ckpt), "--input", str(study), "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in ("ST000_SE0001", "ST000_SE0002", "ST001_SE0001"):
        assert (out / f"{name}_mask.nii.gz").is_file(), name
        assert f"({img.shape[2]} files) -> {name}" in printed
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["status"] == "ok" and r["type"] == "volume" for r in rows)


def test_a_real_dicom_file_reads_with_its_pixels_rescale_and_position(tmp_path):
    """pydicom's bundled CT_small.dcm (written by a scanner, not by this project): HU is the
    stored value + RescaleIntercept (-1024) at [column, row], and voxel (column 10, row 20) lies
    at ImagePositionPatient + 10 steps along the row direction + 20 along the column direction."""
    import shutil

    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")  # ships in pydicom's wheel, no network
    ref = pydicom.dcmread(src)
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(src, folder / "CT_small.dcm")
    img, hu = read_series(folder)
    pixels = ref.pixel_array.astype(np.float32)
    assert hu.shape == (128, 128, 1) and not np.array_equal(pixels, pixels.T)  # transposing would show
    assert hu[10, 20, 0] == pixels[20, 10] - 1024 and np.array_equal(hu[:, :, 0], pixels.T - 1024)
    x, y, z = -158.135803, -179.035797, -75.699997  # ImagePositionPatient (LPS), 0.661468 mm pixels
    world = nib.affines.apply_affine(img.affine, [10, 20, 0])
    assert world == pytest.approx([-(x + 10 * 0.661468), -(y + 20 * 0.661468), z], abs=1e-4)  # RAS


def test_rows_columns_and_pixel_spacing_are_not_swapped(tmp_path):
    """A series written by hand, 3 rows x 5 columns, 0.5 mm between rows and 0.8 mm between
    columns (DICOM PixelSpacing = [row spacing, column spacing]), slices 2.5 mm apart in shuffled
    files: every voxel's value and world position is checked against numbers computed here."""
    rows, cols, origin = 3, 5, np.array([10.0, 20.0, 30.0])  # LPS, axial: rows run posterior (+y)
    folder = tmp_path / "series"
    folder.mkdir()
    series = generate_uid()
    for k in (2, 0, 1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = CTImageStorage, generate_uid(), ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, series, "CT"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [10.0, 20.0, 30.0 + 2.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.8], 2.5
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        r, c = np.mgrid[:rows, :cols]
        ds.PixelData = (100 * r + c + 1000 * k).astype(np.int16).tobytes()  # row-major: rows x columns
        ds.save_as(folder / f"IM{(7 * k) % 3}.dcm", enforce_file_format=True)
    img, hu = read_series(folder)
    assert hu.shape == (cols, rows, 3)
    for c, r, k in [(0, 0, 0), (4, 0, 0), (0, 2, 1), (4, 2, 2), (3, 1, 2)]:
        assert hu[c, r, k] == 100 * r + c + 1000 * k - 1024, (c, r, k)
        lps = origin + [0.8 * c, 0.5 * r, 2.5 * k]
        assert nib.affines.apply_affine(img.affine, [c, r, k]) == pytest.approx([-lps[0], -lps[1], lps[2]]), (c, r, k)
    assert img.header.get_zooms()[:3] == pytest.approx((0.8, 0.5, 2.5))
