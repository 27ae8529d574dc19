"""Checks on the real datasets in ../shared/data; skipped where that folder is absent."""

import pytest
from conftest import SHARED_DATA

from covidseg.data.splits import assign_splits
from covidseg.data.validate import validate_data

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "zenodo20" / "manifest.csv").is_file(), reason="../shared/data not present")


def test_real_sources_scan_and_split_by_patient():
    report = validate_data([SHARED_DATA / "medseg50", SHARED_DATA / "zenodo20"], progress=False)
    assert len(report.samples) == 50 + 1319
    assert report.layouts[str(SHARED_DATA / "zenodo20")] == "manifest"
    for fold in range(5):
        split = assign_splits(report.samples, test_fraction=0.0, num_folds=5, fold=fold)
        cases = {}
        for s in report.samples:
            cases.setdefault(s.case_id, set()).add(split[s.image])
        assert all(len(v) == 1 for v in cases.values())
        zenodo_val = {s.case_id for s in report.samples if s.source == "zenodo20" and split[s.image] == "val"}
        assert 1 <= len(zenodo_val) <= 4  # whole patients, a few per fold
