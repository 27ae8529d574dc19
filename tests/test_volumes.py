"""NIfTI reading/writing, HU windowing and display orientation (no model needed)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from covidseg.data.volumes import apply_window, from_display, is_volume, read_volume, to_display, volume_stem, voxel_ml, write_like
from covidseg.errors import VolumeReadError


def test_window_maps_lung_window_to_8bit():
    hu = np.array([-3000, -1350, -600, 150, 2000], np.float32)
    assert apply_window(hu).tolist() == [0, 0, 128, 255, 255]  # center -600, width 1500
    assert apply_window(hu, center=0, width=100).tolist() == [0, 0, 0, 255, 255]
    assert apply_window(hu).dtype == np.uint8
    with pytest.raises(ValueError):
        apply_window(hu, width=0)


def test_window_inverts_an_8bit_encoding_stored_as_int16():
    u8 = np.arange(256, dtype=np.uint8)
    hu = np.rint(-1350 + u8 * (1500 / 255)).astype(np.int16)  # what a CT exporter might store
    assert np.array_equal(apply_window(hu), u8)


def test_display_orientation_anterior_up_patient_right_on_left():
    data = np.arange(4 * 5 * 3).reshape(4, 5, 3)  # RAS: i -> right, j -> anterior
    slices = to_display(data, np.eye(4))
    assert slices.shape == (3, 5, 4)
    for k in range(3):
        assert np.array_equal(slices[k], data[::-1, ::-1, k].T)
    # the same anatomy stored LPS (i -> left, j -> posterior) gives the same display
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.array_equal(to_display(data[::-1, ::-1], lps), slices)


@pytest.mark.parametrize(
    "affine",
    [np.eye(4), np.diag([-0.7, 0.7, 2.5, 1]), np.array([[0, 0, 2.5, 0], [0.7, 0, 0, 0], [0, -0.7, 0, 0], [0, 0, 0, 1.0]]), np.zeros((4, 4))],
)
def test_display_round_trip(affine):
    data = np.random.default_rng(0).random((4, 5, 6))
    assert np.array_equal(from_display(to_display(data, affine), affine), data)


def test_read_write_keeps_shape_affine_header(tmp_path):
    affine = np.array([[-0.7, 0, 0, 120.0], [0, -0.7, 0, 90.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    hu = np.linspace(-1350, 150, 6 * 5 * 3).reshape(6, 5, 3).astype(np.int16)
    src = nib.Nifti1Image(hu, affine)
    src.header.set_xyzt_units("mm")
    nib.save(src, tmp_path / "ct.nii.gz")
    ref, slices = read_volume(tmp_path / "ct.nii.gz")
    assert slices.dtype == np.uint8 and slices.shape == (3, 5, 6)  # [Z, rows = Y, columns = X]
    mask = (slices > 100).astype(np.uint8)
    write_like(tmp_path / "out.nii.gz", mask, ref)
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.shape == hu.shape and np.allclose(out.affine, affine)
    assert out.get_data_dtype() == np.uint8
    assert np.allclose(out.header.get_zooms(), (0.7, 0.7, 2.5))
    assert np.array_equal(np.asanyarray(out.dataobj), (apply_window(hu) > 100).astype(np.uint8))
    assert voxel_ml(out) == pytest.approx(0.7 * 0.7 * 2.5 / 1000)


def test_voxel_ml_follows_units():
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.diag([0.001, 0.001, 0.002, 1]))
    img.header.set_xyzt_units("meter")
    assert voxel_ml(img) == pytest.approx(2e-9 * 1e6)


def test_unreadable_volumes_are_named(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(VolumeReadError, match="bad.nii.gz"):
        read_volume(tmp_path / "bad.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2, 2), np.int16), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(VolumeReadError, match="3D"):
        read_volume(tmp_path / "4d.nii")
    with pytest.raises(VolumeReadError, match="not found"):
        read_volume(tmp_path / "missing.nii")


def test_names():
    assert is_volume("a/Scan.NII.GZ") and is_volume("x.nii") and not is_volume("x.png")
    assert volume_stem("a/scan.nii.gz") == "scan" and volume_stem("scan.nii") == "scan"
