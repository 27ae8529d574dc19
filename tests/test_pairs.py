"""Finding image/mask pairs in every layout (layouts.find.find_pairs) and validating them
(validate.validate_data): case ids, mask policies, every problem named at once. (Was
test_sources.py, after a module that no longer exists: issue 31, item 18.)"""

import csv

import cv2
import numpy as np
import pytest

from covidseg.data.layouts.find import find_pairs
from covidseg.data.samples import case_id_from_name
from covidseg.data.validate import validate_data
from covidseg.errors import DataError


def _pair(folder_img, folder_mask, name, mask_name=None, size=(16, 16), lesion=True):
    folder_img.mkdir(parents=True, exist_ok=True)
    folder_mask.mkdir(parents=True, exist_ok=True)
    img = np.full(size, 80, np.uint8)
    mask = np.zeros(size, np.uint8)
    if lesion:
        mask[4:8, 4:8] = 255
    cv2.imwrite(str(folder_img / name), img)
    cv2.imwrite(str(folder_mask / (mask_name or name)), mask)


def test_kaggle_layout_case_ids(tmp_path):
    names = ["Jun_coronacases_case10_100.png", "Jun_coronacases_case10_101.png", "Morozov_study_0255_12.png", "bjorke_17.png", "bjorke_18.png"]
    for n in names:
        _pair(tmp_path / "frames", tmp_path / "masks", n)
    samples, layouts, problems = find_pairs([tmp_path])
    assert layouts == {str(tmp_path): "kaggle"} and not problems
    cases = {s.image.rsplit("/", 1)[1]: s.case_id for s in samples}
    assert cases == {
        "Jun_coronacases_case10_100.png": "Jun_coronacases_case10",
        "Jun_coronacases_case10_101.png": "Jun_coronacases_case10",
        "Morozov_study_0255_12.png": "Morozov_study_0255",
        "bjorke_17.png": "bjorke_17",
        "bjorke_18.png": "bjorke_18",
    }


def test_images_masks_matched_by_stem_and_regex(tmp_path):
    _pair(tmp_path / "images", tmp_path / "masks", "p1_12.jpg", "p1_12.png")
    _pair(tmp_path / "images", tmp_path / "masks", "p1_13.jpg", "p1_13.png")
    _pair(tmp_path / "images", tmp_path / "masks", "p2_1.tif", "p2_1.png")
    samples, layouts, _ = find_pairs([tmp_path])
    assert layouts[str(tmp_path)] == "images-masks" and len(samples) == 3
    assert {s.case_id for s in samples} == {"p1_12", "p1_13", "p2_1"}
    samples, _, _ = find_pairs([tmp_path], case_regex=r"(p\d+)_")
    assert sorted(s.case_id for s in samples) == ["p1", "p1", "p2"]
    assert case_id_from_name("bjorke_3", r"^(Jun_.+)_\d+$") == "bjorke_3"


def test_manifest_and_multi_root_prefixes(tmp_path, tiny_data):
    other = tmp_path / "other"
    _pair(other / "images", other / "masks", "a.png")
    _pair(other / "images", other / "masks", "b.png")
    report = validate_data([tiny_data, other])
    assert report.layouts == {str(tiny_data): "manifest", str(other): "images-masks"}
    assert len(report.samples) == 8 * 4 + 2
    assert {s.case_id for s in report.samples if s.source == "other"} == {"other/a", "other/b"}
    assert all(s.case_id.startswith("data/case") for s in report.samples if s.source == "data")
    assert "34 pairs, 10 cases" in report.summary()


def test_every_problem_is_named_at_once(tmp_path):
    root = tmp_path / "d"
    _pair(root / "images", root / "masks", "ok.png")
    _pair(root / "images", root / "masks", "small.png", size=(16, 16))
    cv2.imwrite(str(root / "masks" / "small.png"), np.zeros((8, 8), np.uint8))
    _pair(root / "images", root / "masks", "orphan.png")
    (root / "masks" / "orphan.png").unlink()
    _pair(root / "images", root / "masks", "lonely.png")
    (root / "images" / "lonely.png").unlink()
    _pair(root / "images", root / "masks", "corrupt.png")
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError) as err:
        validate_data([root])
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "orphan.png: image without mask" in msg
    assert "lonely.png: mask without image" in msg
    assert "corrupt.png: unreadable or corrupt image" in msg
    assert "small.png: image 16x16 but mask" in msg and "is 8x8" in msg


def test_mask_policies(tmp_path):
    root = tmp_path / "d"
    _pair(root / "images", root / "masks", "a.png")
    _pair(root / "images", root / "masks", "empty.png", lesion=False)
    gray = np.zeros((16, 16), np.uint8)
    gray[2:5, 2:5] = 200
    gray[8:10, 8:10] = 60
    _pair(root / "images", root / "masks", "gray.png")
    cv2.imwrite(str(root / "masks" / "gray.png"), gray)
    # grey levels are never cut at a guessed threshold: refused, naming the file and values
    with pytest.raises(DataError, match=r"1 mask\(s\) have label values \{0, 60, 200\} \(.*gray.png\)"):
        validate_data([root])
    report = validate_data([root], lesion_labels=[200])
    assert len(report.samples) == 3 and report.empty == 2  # 255 is not in the list
    assert report.lesion_fraction == pytest.approx(9 / (3 * 256))
    cv2.imwrite(str(root / "masks" / "gray.png"), (gray > 0).astype(np.uint8) * 255)
    dropped = validate_data([root], empty_masks="drop")
    assert len(dropped.samples) == 2 and dropped.dropped == 1 and "dropped 1" in dropped.summary()
    with pytest.raises(DataError, match="empty.png: mask has no lesion"):
        validate_data([root], empty_masks="error")


def test_bad_roots(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        validate_data([tmp_path / "missing"])
    with pytest.raises(DataError, match="no data layout found"):
        validate_data([tmp_path])
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs found"):
        validate_data([tmp_path])
    bad = tmp_path / "m"
    bad.mkdir()
    with (bad / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "mask"], ["images/x.png", "masks/x.png"]])
    with pytest.raises(DataError, match="x.png: image listed on line 2 does not exist"):
        validate_data([bad])


def test_palette_label_maps_scan_by_label_and_grey_level_masks_are_named(tmp_path):
    """VOC-style palette PNGs hold labels {0, 1, 2}; a grayscale read reported {0, 38, 75}."""
    from test_io import write_palette_png

    root = tmp_path / "p"
    for name in ("a.png", "b.png"):
        _pair(root / "images", root / "masks", name)
        labels = np.zeros((16, 16), np.uint8)
        labels[2:6, 2:6], labels[8:10, 8:12] = 1, 2
        write_palette_png(root / "masks" / name, labels)
    with pytest.raises(DataError) as err:
        validate_data([root])
    assert str(err.value).count("\n") == 0  # one line
    assert 'label values {0, 1, 2} (' in str(err.value) and '"[1, 2]"' in str(err.value) and "a.png" in str(err.value)
    report = validate_data([root], lesion_labels=[1, 2])
    assert report.mask_values == [0, 1, 2] and report.lesion_fraction == pytest.approx(24 / 256)

    # lossy masks: many grey levels, their own message, also when lesion_labels are given
    lossy = tmp_path / "j"
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (32, 32), 20, 255, -1, lineType=cv2.LINE_AA)
    for name in ("a", "b"):
        _pair(lossy / "images", lossy / "masks", f"{name}.png", f"{name}.jpg", size=(64, 64))
        cv2.imwrite(str(lossy / "masks" / f"{name}.jpg"), cv2.GaussianBlur(mask, (9, 9), 3), [cv2.IMWRITE_JPEG_QUALITY, 70])
    for labels in (None, [255]):
        with pytest.raises(DataError) as err:
            validate_data([lossy], lesion_labels=labels)
        message = str(err.value)
        assert message.startswith("2 mask(s) hold") and "grey levels" in message and "a.jpg" in message, message
        assert "every non-zero value" not in message and "\n" not in message


def test_case_regex_reports_its_matches_and_stops_when_none(tmp_path):
    for name in ("p1_12.png", "p1_13.png", "p2_1.png"):
        _pair(tmp_path / "images", tmp_path / "masks", name)
    report = validate_data([tmp_path], case_regex=r"^(p\d+)_")
    assert "--data.case_regex: 3 of 3 file stems matched (2 cases" in report.summary()
    with pytest.raises(DataError, match=r"matches none of the 3 file name\(s\): it is applied to the file stem"):
        validate_data([tmp_path], case_regex=r"^(p\d+)_\d+\.png$")
    with pytest.raises(DataError, match="not a valid regular expression"):
        validate_data([tmp_path], case_regex=r"^(p\d+")
