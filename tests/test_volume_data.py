"""Training data from NIfTI volumes: layouts, label maps, the slice cache, bad volumes, and
fit end to end. Every volume is generated here (``synthetic.generate_volumes``)."""

from __future__ import annotations

import csv
import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from conftest import FAST_TRAINER, TINY_MODEL

from covidseg.data.cache import cache_dir
from covidseg.data.datamodule import CTDataModule, SliceDataset
from covidseg.data.samples import image_of, mask_of
from covidseg.data.synthetic import generate_volumes, volume_affine
from covidseg.data.validate import validate_data
from covidseg.data.volumes import read_volume, to_display
from covidseg.errors import DataError


@pytest.fixture(scope="module")
def volume_sets(tmp_path_factory) -> dict:
    """The same 4 cases (6 slices of 48 px, label maps {0,1,2,3}, 0.7x0.7x2.5 mm) in each
    layout, each with another stored orientation (LPS, slices-first SLP, RAS)."""
    root = tmp_path_factory.mktemp("volumes")
    orientations = {"images-masks": "LPS", "nnunet": "SLP", "manifest": "RAS"}
    return {layout: generate_volumes(root / layout, cases=4, slices=6, size=48, layout=layout, orientation=o) for layout, o in orientations.items()}


@pytest.mark.parametrize("layout", ["images-masks", "nnunet", "manifest"])
def test_layouts_give_one_case_per_volume_and_its_slices(volume_sets, layout):
    report = validate_data([volume_sets[layout]], lesion_labels=[1, 2])
    assert report.layouts == {str(volume_sets[layout]): layout}
    assert report.volumes == 4 and len(report.samples) == 24
    assert sorted({s.case_id for s in report.samples}) == ["case000", "case001", "case002", "case003"]
    assert [s.slice for s in report.samples[:6]] == list(range(6))
    assert report.mask_values == [0, 1, 2, 3] and report.lesion_labels == [1, 2]


def test_orientation_does_not_change_the_slices(volume_sets):
    """The same anatomy stored LPS, slices-first and RAS reads back as the same display
    slices and masks, and a training slice is exactly predict's windowed slice."""
    reports = {k: validate_data([v], lesion_labels=[1, 2]) for k, v in volume_sets.items()}
    for k in (0, 3, 5):
        images = [image_of(r.samples[k]) for r in reports.values()]
        masks = [mask_of(r.samples[k], [1, 2]) for r in reports.values()]
        assert images[0].dtype == np.uint8 and images[0].shape == (48, 48)
        assert all(np.array_equal(images[0], x) for x in images) and all(np.array_equal(masks[0], m) for m in masks)
    s = reports["nnunet"].samples[4]
    _, slices = read_volume(s.image)
    assert np.array_equal(image_of(s), slices[4])


def test_label_map_without_mapping_is_refused_naming_files_values_and_names(volume_sets):
    with pytest.raises(DataError) as err:
        validate_data([volume_sets["nnunet"]])
    message = str(err.value)
    assert message.startswith("4 mask(s) have label values {0, 1, 2, 3}")
    assert "dataset.json: 1 ground-glass, 2 consolidation, 3 effusion" in message and "case000.nii.gz" in message
    assert '--data.lesion_labels to say which labels are lesion, e.g. "[1, 2, 3]"' in message
    with pytest.raises(DataError, match=r"lesion_labels \[7\] match no mask value; the masks hold \{0, 1, 2, 3\}"):
        validate_data([volume_sets["nnunet"]], lesion_labels=[7])


def test_mapping_is_the_same_for_every_reader(volume_sets):
    report = validate_data([volume_sets["images-masks"]], lesion_labels=[2])
    s = next(s for s in report.samples if mask_of(s, [2]).any())
    labels = to_display(np.asanyarray(nib.load(s.mask).dataobj), nib.load(s.mask).affine)[s.slice]
    assert np.array_equal(mask_of(s, [2]), (labels == 2).astype(np.uint8))
    ds = SliceDataset([s], 48, lesion_labels=[2])
    assert np.array_equal(ds[0]["mask"][0].numpy(), (labels == 2).astype(np.float32))
    with pytest.raises(ValueError, match="mask has label values"):
        mask_of(s)  # judged on the whole volume, even where this slice looks binary


def test_bad_volumes_are_named_in_one_error(tmp_path):
    root = generate_volumes(tmp_path / "d", cases=6, slices=4, size=16, layout="images-masks")
    image, mask = root / "images", root / "masks"
    data = (image / "case000.nii.gz").read_bytes()
    (image / "case000.nii.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), image / "case001.nii.gz")  # 2D
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4, 2), np.int16), np.eye(4)), image / "case002.nii.gz")  # 4D
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 5), np.uint8), volume_affine("LPS", (0.7, 0.7, 2.5))), mask / "case003.nii.gz")  # shape
    other = volume_affine("LPS", (0.7, 0.7, 2.5))
    other[2, 3] += 5.0
    labels = nib.load(mask / "case004.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(labels.dataobj), other), mask / "case004.nii.gz")  # affine
    with pytest.raises(DataError) as err:
        validate_data([root], lesion_labels=[1, 2])
    lines = str(err.value).splitlines()
    assert lines[0] == "5 problem(s) in the input data:"
    assert "case000.nii.gz: unreadable or corrupt NIfTI" in lines[1]
    assert "case001.nii.gz: expected a 3D volume, got shape (16, 16)" in lines[2]
    assert "case002.nii.gz: expected a 3D volume, got shape (16, 16, 4, 2)" in lines[3]
    assert "masks/case003.nii.gz: does not match its image" in lines[4] and "shape 5x16x16 vs image 4x16x16" in lines[4]
    assert "masks/case004.nii.gz: does not match its image" in lines[5] and "affine differs by up to 5 mm" in lines[5]


def test_slice_cache_is_keyed_by_file_and_refreshed_on_change(tmp_path):
    root = generate_volumes(tmp_path / "d", cases=2, slices=3, size=16, layout="images-masks")
    report = validate_data([root], lesion_labels=[1, 2])
    s = report.samples[1]
    before = image_of(s)
    assert len(list(cache_dir().glob("*.npy"))) >= 4
    img = nib.load(s.image)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj) + 100, img.affine, img.header), s.image)
    os.utime(s.image, ns=(1, 1))  # a new mtime even on coarse file systems
    assert not np.array_equal(image_of(s), before)


def test_intensity_protocol_is_resolved_and_checked(volume_sets, tiny_data):
    dm = CTDataModule(str(volume_sets["manifest"]), image_size=32, lesion_labels=[1, 2], num_workers=0)
    assert dm.intensity == "hu_window" and dm.hparams.intensity == "hu_window"
    assert CTDataModule(str(tiny_data)).hparams.intensity == "image"
    with pytest.raises(DataError, match="data.intensity=image but the data are volumes"):
        CTDataModule(str(volume_sets["manifest"]), intensity="image")
    with pytest.raises(DataError, match="both 2D slices and volumes"):
        CTDataModule([str(volume_sets["manifest"]), str(tiny_data)]).validated()
    narrow = CTDataModule(str(volume_sets["manifest"]), image_size=32, lesion_labels=[1, 2], window=(-600, 100), num_workers=0)
    for module in (dm, narrow):
        module.validated()
        module.split = module.make_split()
    wide = SliceDataset(dm.samples("train"), 32, lesion_labels=[1, 2], window=dm.hparams.window)[0]["image"]
    tight = SliceDataset(narrow.samples("train"), 32, lesion_labels=[1, 2], window=narrow.hparams.window)[0]["image"]
    assert wide.shape == (1, 32, 32) and not np.allclose(wide, tight)


def _fit(root, tmp_path, *extra):
    from covidseg.fit import main

    return main(["--data.root", str(root), "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(tmp_path)] + TINY_MODEL + FAST_TRAINER + list(extra))


@pytest.mark.parametrize("layout", ["images-masks", "nnunet", "manifest"])
def test_fit_trains_on_volumes(volume_sets, tmp_path, layout):
    results = _fit(volume_sets[layout], tmp_path, "--data.lesion_labels", "[1, 2]")
    (run,) = (tmp_path / "covidseg").glob("version_*")
    ckpt = __import__("torch").load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["datamodule_hyper_parameters"]
    assert hp["lesion_labels"] == [1, 2] and hp["intensity"] == "hu_window" and tuple(hp["window"]) == (-600.0, 1500.0)
    assert ckpt["hyper_parameters"]["intensity"] == "hu_window"  # the model carries its protocol
    # the report scores the test volume per slice and per case (3D Dice, mL, HD95, NSD)
    per_case = results["per_case"]
    assert per_case["cases"] == results["counts"]["cases"] >= 1
    row = per_case["cases_table"][0]
    assert {"dice", "truth_ml", "pred_ml", "diff_ml", "hd95_mm", "nsd"} <= row.keys() and row["tolerance_mm"] == 1.0
    assert (run / "report" / "per_case.csv").is_file() and "## Per case (3D" in (run / "report" / "metrics.md").read_text()
    with open(run / "splits.csv", newline="") as f:
        by_case = {}
        for row in csv.DictReader(f):
            by_case.setdefault(row["case_id"], set()).add(row["split"])
    assert len(by_case) == 4 and all(len(v) == 1 for v in by_case.values())  # split by volume


def test_fit_refuses_a_label_map_without_mapping(volume_sets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _fit(volume_sets["images-masks"], tmp_path)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 4 mask(s) have label values {0, 1, 2, 3}") and "Traceback" not in err


def test_truncated_gzip_is_not_a_cache_hit(tmp_path):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), path)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[:-20])
    from covidseg.data.cache import cache_volume
    from covidseg.errors import VolumeReadError

    with pytest.raises(VolumeReadError, match="x.nii.gz: unreadable or corrupt NIfTI"):
        cache_volume(path)


def test_volume_memory_script_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "volume_memory.py"
    spec = importlib.util.spec_from_file_location("volume_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--volumes", "3", "--slices", "4", "--size", "32", "--workers", "0", "--fit-batches", "0", "--json", str(tmp_path / "m.json")])
    assert out["loader_samples"] > 0 and out["loader_peak_rss_mib"] > 0 and out["scan_peak_rss_mib"] > 0
    assert (tmp_path / "m.json").is_file()


def test_read_voxels_keeps_integer_hu_and_scales_to_float32(tmp_path):
    from covidseg.data.volumes import read_voxels

    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(raw, np.eye(4)), tmp_path / "plain.nii")
    scaled = nib.Nifti1Image(raw, np.eye(4))
    scaled.header.set_slope_inter(2.0, -1024.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    assert read_voxels(tmp_path / "plain.nii")[1].dtype == np.int16
    data = read_voxels(tmp_path / "scaled.nii.gz")[1]
    assert data.dtype == np.float32 and np.array_equal(data, raw * 2.0 - 1024)


def test_split_sizes_count_slices_not_volumes(volume_sets):
    dm = CTDataModule(str(volume_sets["nnunet"]), lesion_labels=[1, 2], num_workers=0)
    dm.split = dm.make_split()
    dm.check_world_size(6)  # 6 slices of one validation volume: enough for 6 processes
    with pytest.raises(DataError, match=r"has 6 slice\(s\), fewer than the 7 processes"):
        dm.check_world_size(7)


def test_whole_mask_volume_and_display_spacing_for_case_metrics(volume_sets):
    """Per-case scoring reads the truth in display order with its spacing, whatever the
    stored orientation: the SLP volume (slices along the first axis) gives (2.5, 0.7, 0.7)."""
    from covidseg.data.cache import read_mask_volume
    from covidseg.metrics.volume import case_metrics

    masks = {}
    for layout, root in volume_sets.items():
        report = validate_data([root], lesion_labels=[1, 2])
        s = report.samples[0]
        truth, spacing = read_mask_volume(s.mask, [1, 2])
        assert truth.shape == (6, 48, 48) and spacing == pytest.approx((2.5, 0.7, 0.7))
        assert all(np.array_equal(truth[k], mask_of(r, [1, 2])) for k, r in enumerate(report.samples[:6]))
        masks[layout] = truth
    assert all(np.array_equal(masks["nnunet"], m) for m in masks.values())
    row = case_metrics(masks["nnunet"], masks["manifest"], spacing)
    assert row["dice"] == 1.0 and row["truth_ml"] == pytest.approx(masks["nnunet"].sum() * 0.7 * 0.7 * 2.5 / 1000)
    with pytest.raises(ValueError, match="mask has label values"):
        read_mask_volume(s.mask)


def test_binary_mask_volumes_need_no_mapping(tmp_path):
    from covidseg.data.cache import read_mask_volume

    root = generate_volumes(tmp_path / "d", cases=2, slices=4, size=16)
    for path in (root / "masks").iterdir():
        img = nib.load(path)
        nib.save(nib.Nifti1Image((np.asanyarray(img.dataobj) > 0).astype(np.uint8) * 255, img.affine), path)
    report = validate_data([root])
    assert report.mask_values == [0, 255] and report.lesion_labels is None and "binary masks" in report.summary()
    truth, _ = read_mask_volume(report.samples[0].mask)
    assert set(np.unique(truth)) <= {0, 1} and truth.any()
    assert np.array_equal(truth[2], mask_of(report.samples[2]))


def _add_lung_volumes(root, layout: str) -> None:
    """Lung masks beside the masks, as lung tools write them: a label map (here the lesion
    label map itself, values {0, 1, 2, 3}: every non-zero value is lung)."""
    import shutil

    mask_dir = {"images-masks": "masks", "nnunet": "labelsTr", "manifest": "labels"}[layout]
    (root / "lungs").mkdir()
    for mask in sorted((root / mask_dir).glob("*.nii.gz")):
        shutil.copy(mask, root / "lungs" / mask.name)
    if layout == "manifest":
        with open(root / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        with open(root / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "mask", "case_id", "lung_mask"])
            w.writerows([(r["image"], r["mask"], r["case_id"], "lungs/" + r["mask"].split("/")[-1]) for r in rows])


@pytest.mark.parametrize("layout", ["images-masks", "nnunet", "manifest"])
def test_lung_masks_stored_with_volumes_are_kept(tmp_path, layout):
    from covidseg.data.cache import read_slice
    from covidseg.data.samples import lung_mask_of

    root = generate_volumes(tmp_path / layout, cases=2, slices=3, size=16, layout=layout)
    _add_lung_volumes(root, layout)
    report = validate_data([root], lesion_labels=[1, 2])
    assert len(report.samples) == 6 and all(s.lung_mask is not None and s.lung_mask.endswith(".nii.gz") for s in report.samples)
    assert "6 with lung masks" in report.summary()
    for s in report.samples:
        np.testing.assert_array_equal(lung_mask_of(s), (read_slice(s.mask, s.slice) != 0).astype(np.uint8))
    dm = CTDataModule(str(root), image_size=16, lesion_labels=[1, 2], lung_masks=True, num_workers=0, val_fraction=0, test_fraction=0)
    dm.setup("fit")
    item = dm.datasets["train"][0]
    assert item["has_lung_mask"] and item["lung_mask"].shape == (1, 16, 16)


def test_bad_lung_volumes_are_named_before_training(tmp_path):
    root = generate_volumes(tmp_path / "d", cases=2, slices=3, size=16, layout="images-masks")
    _add_lung_volumes(root, "images-masks")
    ref = nib.load(root / "masks" / "case000.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.uint8), ref.affine), root / "lungs" / "case000.nii.gz")  # 2 slices, not 3
    grey = np.random.default_rng(0).uniform(0, 1, ref.shape).astype(np.float32)  # interpolated probabilities
    nib.save(nib.Nifti1Image(grey, ref.affine), root / "lungs" / "case001.nii.gz")
    with pytest.raises(DataError) as err:
        validate_data([root], lesion_labels=[1, 2])
    message = str(err.value)
    assert message.startswith("2 problem(s)") and "case000.nii.gz: the lung mask does not match its image" in message
    assert "case001.nii.gz: lung mask holds" in message and "grey levels" in message


def test_fit_trains_the_lung_output_on_volumes_with_left_right_lung_maps(tmp_path):
    root = generate_volumes(tmp_path / "d", cases=5, slices=3, size=32, layout="nnunet", lungs=True)
    report = validate_data([root], lesion_labels=[1, 2])
    assert report.volumes == 5 and all(s.lung_mask for s in report.samples)
    from covidseg.data.cache import read_slice
    from covidseg.data.samples import lung_mask_of

    assert set(np.unique(read_slice(report.samples[1].lung_mask, 1)).tolist()) == {0, 1, 2}  # left/right lung labels
    results = _fit(root, tmp_path / "runs", "--data.lesion_labels", "[1, 2]", "--data.lung_masks", "true", "--data.image_size", "32")
    assert results["lungs"]["slices"] > 0  # its value has a known-answer test: test_volume_scoring.py::test_lung_dice_on_left_right_lung_maps_has_its_known_answer
    assert lung_mask_of(report.samples[1]).max() == 1


def test_slice_cache_stores_exact_hu_as_int16_and_says_where_and_how_big(tmp_path):
    """Scaled HU (rescale intercept: float32 when loaded) is cached as int16 when exact, with the
    same values; non-integer values stay float32; validation notes the cache folder and its size."""
    from covidseg.data.cache import cache_volume
    from covidseg.data.volumes import read_voxels

    raw = np.arange(-300, 300, dtype=np.int16).reshape(6, 10, 10)
    scaled = nib.Nifti1Image(raw, np.eye(4))
    scaled.header.set_slope_inter(1.0, -1024.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    info = cache_volume(tmp_path / "scaled.nii.gz")
    cached = np.load(info.cache)
    assert info.dtype == "int16" and cached.dtype == np.int16
    assert np.array_equal(cached, to_display(read_voxels(tmp_path / "scaled.nii.gz")[1], np.eye(4)))
    half = nib.Nifti1Image(raw, np.eye(4))
    half.header.set_slope_inter(0.5, -1024.0)
    nib.save(half, tmp_path / "half.nii.gz")
    assert cache_volume(tmp_path / "half.nii.gz").dtype == "float32"
    root = generate_volumes(tmp_path / "v", cases=2, slices=3, size=16)
    note = [n for n in validate_data([root], lesion_labels=[1, 2], progress=False).notes if n.startswith("slice cache")]
    assert len(note) == 1 and str(cache_dir()) in note[0] and "delete the folder to clear it" in note[0]
    assert not [n for n in validate_data([root], lesion_labels=[1, 2], progress=False).notes if n.startswith("slice cache")]  # nothing new: no note


def test_volume_run_without_lesion_in_validation_trains_to_the_end(tmp_path, caplog):
    """Issue 31, item 5: with no lesion slice in validation, val/dice_lesion_image was NaN and
    EarlyStopping's check_finite ended the run after one epoch, before a best checkpoint."""
    import logging

    import nibabel as nib
    import torch

    root = generate_volumes(tmp_path / "d", cases=4, slices=4, size=32)
    for mask in (root / "masks").glob("*.nii.gz"):  # lesion-free studies
        img = nib.load(mask)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), mask)
    with caplog.at_level(logging.INFO):
        _fit(root, tmp_path / "runs", "--data.lesion_labels", "[1, 2]", "--trainer.max_epochs", "3", "--test", "false")
    assert "no validation slice holds lesion" in caplog.text
    (run,) = (tmp_path / "runs" / "covidseg").glob("version_*")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2 and (run / "checkpoints" / "best.ckpt").is_file()
