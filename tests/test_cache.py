"""The slice cache's hot path (issue 31, item 10): a sample read finds its volume's entry in memory,
not by a stat of every file of a DICOM folder and a JSON parse (twice for masks)."""

import os

import nibabel as nib
import numpy as np

from covidseg.data import cache
from covidseg.data.phantom import write_dicom_series


def test_sample_reads_stat_once_and_parse_no_json(tmp_path, monkeypatch):
    hu = np.full((16, 16, 4), -800.0)
    hu[2:14, 2:14] = 40.0
    series = write_dicom_series(nib.Nifti1Image(hu, np.diag([0.7, 0.7, 2.5, 1.0])), tmp_path / "series")
    mask = tmp_path / "mask.nii.gz"
    truth = np.zeros((16, 16, 4), np.uint8)
    truth[4:8, 4:8] = 1
    nib.save(nib.Nifti1Image(truth, np.diag([0.7, 0.7, 2.5, 1.0])), mask)
    cache.read_hu_slice(series, 0), cache.read_mask_slice(mask, 0)  # decoded once (validation does this)

    keys, parses = [], []
    monkeypatch.setattr(cache, "_cache_key", lambda p, key=cache._cache_key: keys.append(p) or key(p))
    monkeypatch.setattr(cache.VolumeInfo, "from_json", classmethod(lambda cls, text, f=cache.VolumeInfo.from_json: parses.append(1) or f(text)))
    for k in range(4):
        cache.read_hu_slice(series, k), cache.read_mask_slice(mask, k)
    assert keys == [] and parses == []  # old code: a stat of every DICOM file and a JSON parse per read, masks twice

    # still correct after a change: a new mask file is noticed (one stat of it tells)
    nib.save(nib.Nifti1Image(1 - truth, np.diag([0.7, 0.7, 2.5, 1.0])), mask)
    os.utime(mask, ns=(1, 1))
    assert cache.read_mask_slice(mask, 0).sum() == 16 * 16 - 16
    assert len(keys) == 1
