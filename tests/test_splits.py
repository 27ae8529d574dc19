from collections import defaultdict

import pytest

from covidseg.data.samples import Sample
from covidseg.data.splits import assign_splits, read_splits, write_splits
from covidseg.errors import DataError


def _samples(sizes, root="/d"):
    return [Sample(f"{root}/c{c}_{k}.png", f"{root}/m{c}_{k}.png", f"c{c}", "d", f"c{c}_{k}.png") for c, n in enumerate(sizes) for k in range(n)]


def _cases_by_split(samples, split):
    out = defaultdict(set)
    for s in samples:
        out[split[s.image]].add(s.case_id)
    return out


def test_patient_level_and_seeded():
    samples = _samples([5, 3, 8, 2, 6, 4, 7, 1, 9, 3])
    a = assign_splits(samples, 0.2, 0.2, seed=1)
    assert a == assign_splits(samples, 0.2, 0.2, seed=1)
    assert a != assign_splits(samples, 0.2, 0.2, seed=2)
    by = _cases_by_split(samples, a)
    assert not (by["train"] & by["val"]) and not (by["train"] & by["test"]) and not (by["val"] & by["test"])
    n = len(samples)
    counts = {k: sum(v == k for v in a.values()) for k in ("train", "val", "test")}
    assert counts["test"] >= 0.2 * n and counts["val"] >= 0.2 * n and counts["train"] > 0


def test_kfold_validates_each_case_once():
    samples = _samples([5, 3, 8, 2, 6, 4, 7, 1, 9, 3])
    seen = []
    test_cases = None
    for k in range(5):
        split = assign_splits(samples, test_fraction=0.1, seed=0, num_folds=5, fold=k)
        by = _cases_by_split(samples, split)
        seen += sorted(by["val"])
        assert not by["val"] & by["train"]
        test_cases = test_cases or by["test"]
        assert by["test"] == test_cases  # the test split is the same in every fold
    assert len(seen) == len(set(seen)) == 10 - len(test_cases)
    with pytest.raises(DataError, match="fold=5"):
        assign_splits(samples, num_folds=5, fold=5)


def test_roundtrip_and_leak_detection(tmp_path):
    samples = _samples([3, 3, 3, 3])
    split = assign_splits(samples, 0.25, 0.25, seed=0)
    write_splits(tmp_path / "splits.csv", samples, split)
    assert read_splits(tmp_path / "splits.csv", samples) == split
    lines = (tmp_path / "splits.csv").read_text().splitlines()
    assert lines[0] == "key,case_id,split"
    row = lines[1].split(",")
    other = {"train": "val", "val": "train", "test": "train"}[row[2]]
    lines[1] = ",".join([row[0], row[1], other])
    (tmp_path / "splits.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="more than one split"):
        read_splits(tmp_path / "splits.csv", samples)
    with pytest.raises(DataError, match="only 1 case"):
        assign_splits(_samples([4]))


def test_every_source_is_in_every_fold_and_split():
    big = [Sample(f"/a/c{c}_{k}.png", f"/a/m{c}_{k}.png", f"a/c{c}", "a") for c in range(6) for k in range(40)]
    small = [Sample(f"/b/{i}.png", f"/b/m{i}.png", f"b/{i}", "b") for i in range(10)]
    samples = big + small
    for k in range(3):
        split = assign_splits(samples, test_fraction=0.0, num_folds=3, fold=k)
        val_sources = {s.source for s in samples if split[s.image] == "val"}
        assert val_sources == {"a", "b"}
        assert sum(split[s.image] == "val" for s in small) in (3, 4)
    split = assign_splits(samples, 0.2, 0.2)
    for part in ("train", "val", "test"):
        assert {s.source for s in samples if split[s.image] == part} == {"a", "b"}


def test_splits_follow_the_data_when_it_moves(tmp_path):
    samples = _samples([3, 3, 3, 3])
    split = assign_splits(samples, 0.25, 0.25, seed=0)
    write_splits(tmp_path / "splits.csv", samples, split)
    assert "/d/" not in (tmp_path / "splits.csv").read_text()  # keys, not paths as typed
    moved = _samples([3, 3, 3, 3], root="/elsewhere/d")
    assert read_splits(tmp_path / "splits.csv", moved) == {m.image: split[s.image] for s, m in zip(samples, moved)}
    with pytest.raises(DataError, match="not in the split"):
        read_splits(tmp_path / "splits.csv", _samples([3, 3, 3, 3, 1]))


def test_old_split_files_keyed_by_absolute_path_still_read(tmp_path):
    samples = [Sample(str(tmp_path / f"c{c}.png"), "m", f"c{c}", "d", f"c{c}.png") for c in range(4)]
    (tmp_path / "splits.csv").write_text("image,case_id,split\n" + "".join(f"{s.image},{s.case_id},{'train' if i else 'val'}\n" for i, s in enumerate(samples)))
    assert list(read_splits(tmp_path / "splits.csv", samples).values()) == ["val", "train", "train", "train"]
