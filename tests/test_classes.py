"""Lesion classes (issue 33): per-source class labels, a class target per sample, and the
hierarchical loss that supervises the GGO/consolidation split only where classes exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from covidseg.data.classes import class_targets, resolve_lesion_classes
from covidseg.data.synthetic import generate
from covidseg.errors import DataError
from conftest import FAST_TRAINER, TINY_MODEL

CLASSES = {"two": {1: "ggo", 2: "consolidation"}}


@pytest.fixture(scope="module")
def class_run(mixed_roots, tmp_path_factory):
    """A 1-epoch fit on the mixed sources with the class mapping and lung masks: its run folder."""
    from covidseg.fit import main

    out = tmp_path_factory.mktemp("classrun")
    metrics = main(["--data.root", f"[{', '.join(mixed_roots)}]", "--data.lesion_classes", "{two: {1: ggo, 2: consolidation}}", "--data.lung_masks", "true",
                    "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(out)] + TINY_MODEL + FAST_TRAINER)  # fmt: skip
    (run,) = (out / "covidseg").glob("version_*")
    return run, metrics


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


def test_split_loss_known_answer_ignores_binary_slices():
    """Slice 0 (class source): a GGO pixel (split logit a) and a consolidation pixel (b);
    slice 1 (binary source) whose mask, if it were read as GGO, would add its pixels."""
    from covidseg.model.losses import class_split_loss

    a, b = 0.7, -1.2
    logits = torch.zeros(2, 1, 2, 2)
    logits[0, 0, 0, 0], logits[0, 0, 0, 1] = a, b
    logits[1] = 5.0  # confident consolidation on the binary slice: would cost a lot as GGO
    classes = torch.zeros(2, 2, 2, 2)
    classes[0, 0, 0, 0] = 1  # GGO
    classes[0, 1, 0, 1] = 1  # consolidation
    classes[1, 0] = 1  # the binary slice's "infection" put in the GGO channel
    softplus = torch.nn.functional.softplus
    expected = (softplus(torch.tensor(a)) + softplus(torch.tensor(-b))) / 2  # BCE to 0 and to 1
    assert class_split_loss(logits, classes, torch.tensor([True, False])).item() == pytest.approx(expected.item(), rel=1e-6)
    # read as GGO, the binary slice would add 4 pixels of BCE(5, 0) = softplus(5)
    wrong = (softplus(torch.tensor(a)) + softplus(torch.tensor(-b)) + 4 * softplus(torch.tensor(5.0))) / 6
    assert class_split_loss(logits, classes, torch.tensor([True, True])).item() == pytest.approx(wrong.item(), rel=1e-6)
    assert class_split_loss(logits, classes, torch.tensor([False, False])).item() == 0.0


def _tiny(**kw):
    from covidseg.model.unet import LitUNet

    return LitUNet(encoder_depth=3, decoder_channels=[16, 8, 8], image_size=32, channels_last=False, **kw)


def test_binary_slices_train_only_the_union():
    """On a batch of binary-source slices the class model's loss is the binary model's loss on
    the same lesion logits, and the split channel gets no gradient."""
    torch.manual_seed(0)
    model, plain = _tiny(classes=["ggo", "consolidation"], lung_output=True), _tiny(lung_output=True)
    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    mask = (torch.rand(2, 1, 32, 32) > 0.7).float()
    batch = {"mask": mask, "lung_mask": torch.ones_like(mask), "has_lung_mask": torch.tensor([True, True]),
             "classes": torch.cat([mask, torch.zeros_like(mask)], 1), "has_classes": torch.tensor([False, False])}  # fmt: skip
    loss = model.loss(logits, mask, batch)
    assert loss.item() == pytest.approx(plain.loss(logits[:, :2], mask, batch).item(), rel=1e-6)
    loss.backward()
    assert logits.grad[:, 2].abs().sum() == 0 and logits.grad[:, 0].abs().sum() > 0
    logits.grad = None
    batch["has_classes"] = torch.tensor([True, False])  # a class slice: now the split learns
    model.loss(logits, mask, batch).backward()
    assert logits.grad[0, 2].abs().sum() > 0 and logits.grad[1, 2].abs().sum() == 0


@pytest.mark.parametrize("detach", [False, True])
def test_detached_split_leaves_the_shared_network_to_the_other_losses(detach):
    """``--model.class_detach``: the same outputs and state-dict keys as the plain head, but the
    split loss reaches only the split channel's own head weights, never the encoder or decoder
    (with the shared head it moves them)."""
    from covidseg.model.losses import class_split_loss

    torch.manual_seed(0)
    plain = _tiny(classes=["ggo", "consolidation"], lung_output=True)
    model = _tiny(classes=["ggo", "consolidation"], lung_output=True, class_detach=detach)
    model.load_state_dict(plain.state_dict())
    assert list(model.state_dict()) == list(plain.state_dict())
    x = torch.rand(2, 1, 32, 32)
    logits = model(x)
    assert torch.allclose(logits, plain(x))
    classes = torch.zeros(2, 2, 32, 32)
    classes[:, 0, :16], classes[:, 1, 16:] = 1, 1
    class_split_loss(logits[:, 2:3], classes, torch.tensor([True, True])).backward()
    head = model.net.segmentation_head[0]
    assert head.weight.grad[2].abs().sum() > 0 and head.weight.grad[:2].abs().sum() == 0
    shared = sum(p.grad.abs().sum().item() for n, p in model.net.named_parameters() if not n.startswith("segmentation_head") and p.grad is not None)
    assert (shared == 0) if detach else (shared > 0)


def test_class_probabilities_sum_to_the_lesion():
    from covidseg.model.split import class_label_map, class_probabilities

    lesion, split = torch.tensor([[[[0.8, 0.2]]]]), torch.tensor([[[[0.25, 0.9]]]])
    out = class_probabilities(lesion, split)
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.6, 0.2]) and torch.allclose(out.sum(1, keepdim=True), lesion)
    assert class_label_map(np.array([[1, 1, 0]]), np.array([[0.2, 0.7, 0.9]])).tolist() == [[1, 2, 0]]


def test_fit_with_classes_puts_them_on_the_card(class_run):
    from covidseg.model.checkpoint import read_checkpoint
    from covidseg.model.card import read_card

    run, _ = class_run
    card = read_card(read_checkpoint(run / "checkpoints" / "best.ckpt"))
    assert card.classes == ("ggo", "consolidation") and card.lung_output and card.channels == 3


def test_card_carries_classes_through_onnx_metadata():
    from covidseg.model.card import ModelCard, card_from_hparams, card_from_onnx, card_to_onnx

    card = ModelCard(image_size=64, lung_output=True, classes=["ggo", "consolidation"])
    assert card_from_onnx(card_to_onnx(card), "m.onnx") == card and card_from_hparams(card.as_dict()) == card
    assert card_from_onnx(card_to_onnx(ModelCard(image_size=64)), "old.onnx").classes is None  # binary models as before


def _read_summary(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_writes_the_label_map_and_class_columns(class_run, mixed_roots, tmp_path):
    from covidseg.data.io import read_label_map
    from covidseg.predict import main

    run, _ = class_run
    images = sorted((Path(mixed_roots[0]) / "images").glob("*.png"))[:3]
    out = tmp_path / "out"
    assert main(["--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", "[" + ", ".join(map(str, images)) + "]", "--output", str(out), "--lungs", "true"]) == 0
    for row in _read_summary(out / "summary.csv"):
        name = Path(row["input"]).stem
        labels, mask = read_label_map(out / f"{name}_classes.png"), read_label_map(out / f"{name}.png")
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert np.array_equal(labels > 0, mask > 0)  # inside the cleaned lesion mask, all of it
        assert int(row["ggo_pixels"]) + int(row["consolidation_pixels"]) == int(row["lesion_pixels"]) == int((mask > 0).sum())
        if row["qc"] == "ok" and row["involvement_percent"]:
            assert float(row["ggo_percent"]) + float(row["consolidation_percent"]) == pytest.approx(float(row["involvement_percent"]), abs=1e-6)


def test_cases_csv_sums_the_classes_of_a_case(class_run, mixed_roots, tmp_path):
    """cases.csv gives GGO and consolidation as a share of the case's summed lungs (summed
    pixels, never a mean of slice percentages), beside the lesion's."""
    import csv

    from covidseg.metrics.severity import aggregate_cases
    from covidseg.predict import main

    rows = [{"case_id": "a", "lesion_pixels": 30, "lung_pixels": 100, "lesion_in_lung_pixels": 30, "ggo_pixels": 20, "ggo_in_lung_pixels": 20,
             "consolidation_pixels": 10, "consolidation_in_lung_pixels": 10},
            {"case_id": "a", "lesion_pixels": 10, "lung_pixels": 900, "lesion_in_lung_pixels": 10, "ggo_pixels": 0, "ggo_in_lung_pixels": 0,
             "consolidation_pixels": 10, "consolidation_in_lung_pixels": 10}]  # fmt: skip
    (case,) = aggregate_cases(rows)
    assert case["ggo_percent"] == pytest.approx(2.0) and case["consolidation_percent"] == pytest.approx(2.0) and case["involvement_percent"] == pytest.approx(4.0)
    (ungraded,) = aggregate_cases([{**rows[0], "consolidation_in_lung_pixels": ""}, rows[1]])
    assert ungraded["consolidation_percent"] is None and ungraded["ggo_percent"] == pytest.approx(2.0)

    run, _ = class_run
    out = tmp_path / "out"
    assert main(["--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(Path(mixed_roots[0]) / "images"), "--output", str(out),
                 "--lungs", "true", "--anatomy", "false", "--case_regex", r"^(case\d+)_"]) == 0  # fmt: skip
    summary = _read_summary(out / "summary.csv")
    with (out / "cases.csv").open() as f:
        cases = list(csv.DictReader(f))
    assert len(cases) == 3
    for c in cases:
        mine = [r for r in summary if Path(r["input"]).stem.startswith(c["case_id"] + "_")]
        lung = sum(int(r["lung_pixels"]) for r in mine)
        for name in ("ggo", "consolidation"):
            assert int(c[f"{name}_pixels"]) == sum(int(r[f"{name}_pixels"]) for r in mine)
            assert float(c[f"{name}_percent"]) == pytest.approx(100 * sum(int(r[f"{name}_in_lung_pixels"]) for r in mine) / lung, abs=1e-3)


def test_predict_volume_writes_a_nifti_label_map(class_run, tmp_path):
    import nibabel as nib

    from covidseg.data.synthetic import generate_volumes
    from covidseg.predict import main

    run, _ = class_run
    vol = generate_volumes(tmp_path / "vol", cases=1, slices=4, size=64, lungs=False)
    out = tmp_path / "out"
    assert main(["--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(vol / "images" / "case000.nii.gz"), "--output", str(out)]) == 0
    labels = np.asarray(nib.load(out / "case000_classes.nii.gz").dataobj)
    mask = np.asarray(nib.load(out / "case000_mask.nii.gz").dataobj)
    assert np.array_equal(labels > 0, mask > 0) and set(np.unique(labels)) <= {0, 1, 2}
    (row,) = _read_summary(out / "summary.csv")
    assert float(row["ggo_ml"]) + float(row["consolidation_ml"]) == pytest.approx(float(row["lesion_ml"]))


def test_class_summary_known_answer():
    from covidseg.evaluation.classes import class_summary, confusion

    truth = np.array([[0, 1, 1, 2]])
    pred = np.array([[1, 1, 2, 2]])  # one background read as GGO, one GGO read as consolidation
    cm = confusion(truth, pred)
    assert cm.tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = class_summary([cm])
    # GGO: tp 1, fp 1, fn 1, tn 1 -> Dice 0.5, sensitivity 0.5, specificity 0.5
    assert (s["ggo"]["dice"], s["ggo"]["sensitivity"], s["ggo"]["specificity"]) == pytest.approx((0.5, 0.5, 0.5))
    # consolidation: tp 1, fp 1, fn 0, tn 2 -> Dice 2/3, sensitivity 1, specificity 2/3
    assert (s["consolidation"]["dice"], s["consolidation"]["sensitivity"], s["consolidation"]["specificity"]) == pytest.approx((2 / 3, 1.0, 2 / 3))


def test_evaluate_reports_per_class_scores(class_run, mixed_roots, tmp_path):
    from covidseg.evaluate import main

    run, _ = class_run
    out = tmp_path / "report"
    metrics = main(["--ckpt", str(run / "checkpoints" / "best.ckpt"), "--data.root", mixed_roots[0], "--output", str(out),
                    "--data.lesion_classes", "{two: {1: ggo, 2: consolidation}}"])  # fmt: skip
    c = metrics["classes"]
    assert c["slices"] == 9 and np.sum(c["confusion"]) == 9 * 64 * 64
    assert all(0 <= c[name][k] <= 1 for name in ("ggo", "consolidation") for k in ("dice", "specificity") if c[name][k] is not None)
    assert (out / "class_confusion_matrix.png").is_file() and "per-class scores" in (out / "metrics.md").read_text()
    binary = main(["--ckpt", str(run / "checkpoints" / "best.ckpt"), "--data.root", mixed_roots[1], "--output", str(tmp_path / "binary")])
    assert "classes" not in binary and "dice" in binary["per_image_mean"]  # binary truth: the union's scores only


def test_predict_viewer_of_a_class_model_colours_the_classes(class_run, mixed_roots, tmp_path):
    import json
    import re

    import cv2

    from covidseg.data.io import read_label_map
    from covidseg.data.overlay import CLASS_RGB
    from covidseg.predict import main

    run, _ = class_run
    image = sorted((Path(mixed_roots[0]) / "images").glob("*.png"))[0]
    out = tmp_path / "out"
    assert main(["--ckpt", str(run / "checkpoints" / "best.ckpt"), "--input", str(image), "--output", str(out), "--viewer", "true", "--threshold", "0.05"]) == 0
    page = (out / "index.html").read_text()
    data = json.loads(re.search(r'<script id="covidseg-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["classes"] is True
    labels = read_label_map(out / f"{image.stem}_classes.png")
    ov = cv2.imread(str(next((out / "viewer").glob("*/ov_0000.png"))), cv2.IMREAD_UNCHANGED)
    colours = {tuple(int(v) for v in c) for c in cv2.cvtColor(ov, cv2.COLOR_BGRA2RGBA).reshape(-1, 4) if c[3]}
    allowed = {(*np.rint(CLASS_RGB[k] * 255).astype(int), 255) for k in (1, 2)}
    assert colours <= allowed and (colours or not labels.any())
    case = next((out / "viewer").glob("*.html")).read_text()
    (row,) = json.loads(re.search(r'<script id="covidseg-data" type="application/json">(.*?)</script>', case, re.S).group(1))["case"]["slices"]
    assert (row["ggo_pixels"], row["consolidation_pixels"]) == (int((labels == 1).sum()), int((labels == 2).sum()))  # the slice's info line
    assert row["ggo_pixels"] + row["consolidation_pixels"] == row["lesion_pixels"]


def test_onnx_export_of_a_class_model_carries_the_split_channel_and_predicts_the_same_labels(class_run, mixed_roots, tmp_path):
    """Issue 33: ONNX carries the extra channel; predict from the .onnx writes the checkpoint's label map."""
    from covidseg.data.io import read_label_map
    from covidseg.model.onnx import export_onnx
    from covidseg.model.predictor import Predictor
    from covidseg.predict import main

    run, _ = class_run
    ckpt = run / "checkpoints" / "best.ckpt"
    onnx = tmp_path / "m.onnx"
    assert export_onnx(ckpt, onnx) <= 1e-3
    p = Predictor(onnx, device="cpu")
    assert p.card.classes == ("ggo", "consolidation") and p.card.channels == 3
    image = sorted((Path(mixed_roots[0]) / "images").glob("*.png"))[0]
    for name, model in (("ckpt", ckpt), ("onnx", onnx)):
        assert main(["--ckpt", str(model), "--input", str(image), "--output", str(tmp_path / name), "--threshold", "0.05", "--device", "cpu"]) == 0
    a, b = (read_label_map(tmp_path / d / f"{image.stem}_classes.png") for d in ("ckpt", "onnx"))
    assert np.mean(a == b) > 0.999


def test_fold_record_of_a_class_model_scores_the_classes_on_its_held_out_slices(class_run, tmp_path):
    """A cross-validation fold of a class model records per-class scores (``cv_summary`` prints
    them), counted over the held-out slices of the class-labelled source only."""
    import json
    import subprocess
    import sys

    from covidseg.evaluation.crossval import fold_record, fold_validation

    run, _ = class_run
    _, held_out = fold_validation(run)
    labelled = [s for s in held_out if s.classes is not None]
    assert labelled and len(labelled) < len(held_out)  # both sources are held out; only "two" has classes
    record = fold_record(run, "c", 0, 5, "cmd", "abc", 1.0)
    for mode in ("plain", "tta"):
        c = record["scores"][mode]["classes"]
        assert c["slices"] == len(labelled)
        assert np.asarray(c["confusion"]).sum() == sum(int(np.prod(_class_shape(s))) for s in labelled)  # every pixel of those slices
        for name in ("ggo", "consolidation"):
            assert set(c[name]) == {"dice", "sensitivity", "specificity", "dice_global"}
        by = record["scores"][mode]["classes_by_threshold"]
        assert list(by) == ["0.3", "0.4", "0.5", "0.6", "0.7"]
        assert by["0.5"] == c  # the scoring path at its own threshold
        for low, high in zip(list(by.values()), list(by.values())[1:]):  # a lower lesion threshold only adds class pixels
            for k in (1, 2):
                assert np.asarray(low["confusion"])[:, k].sum() >= np.asarray(high["confusion"])[:, k].sum()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "fold-0.json").write_text(json.dumps(record))
    out = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "scripts" / "cv_summary.py"), "c", "--results", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "per class" in out.stdout and f"| 0 | {len(labelled)} |" in out.stdout
    assert "per class at the best setting" in out.stdout  # read at the operating point the folds choose


def test_rescore_adds_the_class_thresholds_to_an_older_fold_file_and_refuses_a_changed_one(class_run, tmp_path):
    """``cv_fold.py --rescore``: a fold file written before ``classes_by_threshold`` gains it from
    the same checkpoint; a file whose existing scores the checkpoint does not reproduce is left alone."""
    import copy
    import json
    import subprocess
    import sys

    from covidseg.evaluation.crossval import fold_record

    run, _ = class_run
    record = fold_record(run, "c", 0, 5, "cmd", "abc", 1.0)
    old = copy.deepcopy(record)
    for mode in ("plain", "tta"):
        del old["scores"][mode]["classes_by_threshold"]
    path = tmp_path / "fold-0.json"
    path.write_text(json.dumps(old))
    script = str(Path(__file__).parents[1] / "scripts" / "cv_fold.py")
    done = subprocess.run([sys.executable, script, str(run), "--rescore", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    new = json.loads(path.read_text())
    assert new["scores"] == json.loads(json.dumps(record["scores"])) and "classes_by_threshold added" in new["rescored"]
    tampered = copy.deepcopy(old)
    tampered["scores"]["tta"]["by_threshold"]["0.5"] = {k: v + 0.01 for k, v in tampered["scores"]["tta"]["by_threshold"]["0.5"].items()}
    path.write_text(json.dumps(tampered))
    done = subprocess.run([sys.executable, script, str(run), "--rescore", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "differ" in done.stderr and json.loads(path.read_text()) == tampered


def _class_shape(sample):
    """The original size of a sample's slice (its truth is scored at that size)."""
    import cv2

    return cv2.imread(str(sample.image), cv2.IMREAD_UNCHANGED).shape[:2]


def test_class_split_ceiling_script_scores_the_split_on_the_true_lesion(class_run, capsys):
    """``scripts/experiments/class_split_ceiling.py``: per-class Dice with the predicted and with
    the true lesion, in one table."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts" / "experiments"))
    import class_split_ceiling

    run, _ = class_run
    assert class_split_ceiling.main([str(run), "--threshold", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "| mean of 1 |" in out and "true lesion: GGO / consolidation Dice" in out
