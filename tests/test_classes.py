"""Lesion classes (issue 33): per-source class labels, a class target per sample, and the
hierarchical loss that supervises the GGO/consolidation split only where classes exist."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidseg.data.classes import class_targets, resolve_lesion_classes
from covidseg.data.synthetic import generate
from covidseg.errors import DataError

CLASSES = {"two": {1: "ggo", 2: "consolidation"}}


@pytest.fixture(scope="module")
def mixed_roots(tmp_path_factory):
    """Two sources: ``two`` with class label maps (masks_multiclass/), ``one`` binary only."""
    base = tmp_path_factory.mktemp("mixed")
    return [str(generate(base / "two", cases=3, slices=3, size=64, seed=1, classes=True)), str(generate(base / "one", cases=3, slices=3, size=64, seed=2))]


def test_class_targets_known_answer():
    raw = np.array([[0, 1, 2], [2, 0, 1]])
    out = class_targets(raw, ((1, 0), (2, 1)))
    assert out.shape == (2, 2, 3)
    assert out[0].tolist() == [[0, 1, 0], [0, 0, 1]] and out[1].tolist() == [[0, 0, 1], [1, 0, 0]]


@pytest.mark.parametrize(
    "spec, message",
    [({"nope": {1: "ggo"}}, "'nope' names no data source"), ({"two": {1: "fibrosis"}}, "unknown class 'fibrosis'"), ({"two": {0: "ggo"}}, "not a positive integer")],
)
def test_lesion_classes_refused_in_one_line(spec, message):
    with pytest.raises(DataError, match=message):
        resolve_lesion_classes(spec, ["/x/two", "/x/one"], ["two", "one"])


def test_lesion_classes_by_root_path():
    assert resolve_lesion_classes({"/x/two": {2: "consolidation", 1: "ggo"}}, ["/x/two"], ["two"]) == {"two": ((1, 0), (2, 1))}


def test_datamodule_serves_classes_only_for_the_class_source(mixed_roots):
    from covidseg.data.datamodule import CTDataModule

    dm = CTDataModule(mixed_roots, image_size=64, val_fraction=0.0, test_fraction=0.0, num_workers=0, lesion_classes=CLASSES, rotate=0, zoom=0, shift=0, hflip=0)
    dm.setup("fit")
    seen = {"one": 0, "two": 0}
    consolidation = 0.0
    for i, s in enumerate(dm.datasets["train"].samples):
        item = dm.datasets["train"][i]
        assert item["classes"].shape == (2, 64, 64)
        if s.source == "one":  # binary: "infection" only, never read as ground-glass
            assert item["has_classes"] is False and item["classes"].sum() == 0
        else:
            assert item["has_classes"] is True
            assert torch.equal(item["classes"].amax(0), item["mask"][0])  # the union is the mask
            consolidation += float(item["classes"][1].sum())
        seen[s.source] += float(item["mask"].sum()) > 0
    assert seen["one"] and seen["two"] and consolidation > 0


def test_class_map_that_disagrees_with_its_mask_is_refused(tmp_path):
    from PIL import Image

    from covidseg.data.validate import validate_data

    root = generate(tmp_path / "two", cases=1, slices=2, size=64, classes=True)
    bad = root / "masks_multiclass" / "case000_00.png"
    arr = np.array(Image.open(bad))
    arr[:4, :4] = 1  # ground-glass outside the mask's lesion
    img = Image.fromarray(arr, mode="P")
    img.save(bad)
    with pytest.raises(DataError, match="union differs from the lesion"):
        validate_data([root], lesion_classes={"two": {1: "ggo", 2: "consolidation"}}, progress=False)


def test_nifti_label_map_volumes_carry_classes(tmp_path):
    """A volume source whose mask is the label map (1, 2; 3 is effusion, not lesion)."""
    from covidseg.data.classes import class_targets
    from covidseg.data.samples import classes_of, mask_of, read_slice
    from covidseg.data.synthetic import generate_volumes
    from covidseg.data.validate import validate_data

    root = generate_volumes(tmp_path / "vol", cases=1, slices=3, size=32)
    report = validate_data([root], lesion_classes={"vol": {1: "ggo", 2: "consolidation"}}, progress=False)
    s = next(s for s in report.samples if (read_slice(s.mask, s.slice) == 3).any())
    raw = read_slice(s.mask, s.slice)
    assert np.array_equal(classes_of(s), class_targets(raw, ((1, 0), (2, 1))))
    assert np.array_equal(mask_of(s), np.isin(raw, [1, 2]))  # the union, without effusion
