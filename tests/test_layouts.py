"""Layouts (issue 31): single-slice "cases" are said to be slices, two roots of one name stay two
sources, MSD-style nnU-Net names are read."""

import logging

import cv2
import numpy as np

from covidseg.data.datamodule import CTDataModule
from covidseg.data.layouts.find import find_pairs, source_names
from covidseg.data.splits import assign_splits, case_note, split_summary
from covidseg.data.synthetic import generate_volumes


def _slices(folder, names):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)
    for name in names:
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 4:8] = 255
        cv2.imwrite(str(folder / "images" / f"{name}.png"), np.full((16, 16), 80, np.uint8))
        cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
    return folder


def test_single_slice_cases_are_named_and_not_called_cases(tmp_path, caplog):
    root = _slices(tmp_path / "medseg", [f"p{p}_{k}" for p in range(4) for k in range(2)])
    with caplog.at_level(logging.INFO):
        CTDataModule(str(root), num_workers=0).validated()
    (line,) = [r.message for r in caplog.records if r.message.startswith("warning:")]
    assert "8 cases, 1 slice each" in line and "--data.case_regex" in line and "case_id" in line
    samples, _, _ = find_pairs([root])
    summary = split_summary(samples, assign_splits(samples, 0.25, 0.25))
    assert "cases" not in summary.replace("multi-slice cases", "") and "no patient ids" in summary
    # with patient ids from the regex: no warning, and the split counts cases
    grouped, _, _ = find_pairs([root], case_regex=r"(p\d+)_")
    assert case_note(grouped) is None
    assert "slices / 2 cases" in split_summary(grouped, assign_splits(grouped, 0.25, 0.25))


def test_mostly_single_slices_are_named_too(tmp_path):
    root = _slices(tmp_path / "d", ["a_1", "a_2", "a_3", "b", "c", "d"])
    samples, _, _ = find_pairs([root], case_regex=r"(a)_")
    assert "4 cases, 3 of them 1 slice each, the other 1 3-3 slices" in case_note(samples)


def test_two_roots_of_one_name_stay_two_sources(tmp_path):
    a, b = _slices(tmp_path / "a" / "covid", ["1", "2"]), _slices(tmp_path / "b" / "covid", ["1", "2"])
    other = _slices(tmp_path / "zenodo", ["1"])
    samples, _, _ = find_pairs([a, b, other])
    assert {s.source for s in samples} == {"a-covid", "b-covid", "zenodo"}  # a name that does not collide stays
    assert len({s.key for s in samples}) == len({s.case_id for s in samples}) == len(samples) == 5
    assert source_names([a]) == ["covid"]  # one root: today's name, so old splits.csv keys still match
    deeper = [_slices(tmp_path / x / "data" / "covid", ["1"]) for x in ("p", "q")]
    assert source_names(deeper) == ["p-data-covid", "q-data-covid"]


def test_msd_names_without_the_channel_suffix_are_read(tmp_path):
    root = generate_volumes(tmp_path / "Task_covid", cases=2, slices=3, size=16, layout="nnunet")
    for image in (root / "imagesTr").iterdir():
        image.rename(image.with_name(image.name.replace("_0000", "")))
    (root / "imagesTr" / "._case000.nii.gz").write_bytes(b"macOS metadata, not a volume")
    samples, layouts, problems = find_pairs([root])
    assert layouts[str(root)] == "nnunet" and not problems
    assert sorted(s.case_id for s in samples) == ["case000", "case001"]
    # mixed names: the odd one is named with what to rename it to
    (root / "imagesTr" / "case001.nii.gz").rename(root / "imagesTr" / "case001_0000.nii.gz")
    _, _, problems = find_pairs([root])
    assert len(problems) == 2 and "case000.nii.gz: not named CASE_0000.nii.gz" in problems[0] and "rename it case000_0000.nii.gz" in problems[0]
