"""The one metric implementation (covidseg.metrics.scores, covidseg.metrics.epoch) and the report's
writers and figures, on tiny arrays with hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from covidseg.evaluation.report import curves, figures, writers
from covidseg.metrics import scores as M
from covidseg.metrics import summary as S
from covidseg.metrics.epoch import SegmentationScores


def H(prob, gt, bins=M.BINS):
    """(lesion, background) histograms of numpy arrays through metrics.histograms."""
    h = M.histograms(torch.as_tensor(np.asarray(prob, np.float32)), torch.as_tensor(np.asarray(gt, np.float32)), bins).numpy()
    return h[1], h[0]


def C(prob, gt, threshold):
    """(tp, fp, fn, tn) of one slice through metrics.confusion_counts."""
    p, t = torch.as_tensor(np.asarray(prob, np.float32))[None], torch.as_tensor(np.asarray(gt, np.float32))[None]
    return tuple(M.confusion_counts(p, t, threshold)[0].tolist())

# The classic 4-pixel example: exact AUROC 3/4, average precision 5/6.
PROB4 = np.array([0.1, 0.4, 0.35, 0.8])
GT4 = np.array([0, 0, 1, 1])

# Four slices as (tp, fp, fn, tn): lesion found in part, nothing anywhere, false alarm only, lesion missed.
COUNTS = np.array([(2, 0, 1, 1), (0, 0, 0, 4), (0, 2, 0, 2), (0, 0, 3, 1)])


def test_pixel_counts_thresholds_inclusive():
    prob = np.array([[0.9, 0.2], [0.5, 0.49]], np.float32)
    gt = np.array([[1, 0], [1, 1]], np.uint8)
    assert C(prob, gt, 0.5) == (2, 0, 1, 1)
    assert C(prob, gt, 0.1) == (3, 1, 0, 0)
    assert C(prob, np.zeros_like(gt), 0.95) == (0, 0, 0, 4)


def test_rates_per_image_with_empty_masks():
    r = M.rates(*COUNTS.T)
    assert r["dice"] == pytest.approx([0.8, 1.0, 0.0, 0.0])
    assert r["iou"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert r["recall"] == pytest.approx([2 / 3, np.nan, np.nan, 0.0], nan_ok=True)
    assert r["precision"] == pytest.approx([1.0, np.nan, 0.0, np.nan], nan_ok=True)
    assert r["specificity"] == pytest.approx([1.0, 1.0, 0.5, 1.0])
    assert r["accuracy"] == pytest.approx([0.75, 1.0, 0.5, 0.25])


def test_segmentation_scores_match_evaluate_maths():
    # 2 images of 2x2 pixels; at 0.5: TP=2 (0.9, 0.6), FP=1 (0.8), FN=1 (0.2), TN=4
    probs = torch.tensor([[[[0.9, 0.8], [0.2, 0.6]]], [[[0.1, 0.3], [0.4, 0.05]]]])
    target = torch.tensor([[[[1.0, 0], [1, 1]]], [[[0.0, 0], [0, 0]]]])
    m = SegmentationScores(0.5)
    m.update(probs, target)
    out = {k: float(v) for k, v in m.compute().items()}
    tp, fp, fn, tn = 2, 1, 1, 4
    assert out["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["precision"] == pytest.approx(tp / (tp + fp))
    assert out["recall"] == pytest.approx(tp / (tp + fn))
    assert out["specificity"] == pytest.approx(tn / (tn + fp))
    assert out["accuracy"] == pytest.approx((tp + tn) / 8)
    assert out["dice_image"] == pytest.approx((2 / 3 + 1) / 2)  # image 2: empty and empty -> 1
    pos, neg = [0.9, 0.2, 0.6], [0.8, 0.1, 0.3, 0.4, 0.05]
    assert out["auroc"] == pytest.approx(sum(p > n for p in pos for n in neg) / 15, abs=0.01)
    # the same numbers as evaluate's summary of the same counts and histograms
    summary = S.summarize(M.confusion_counts(probs, target, 0.5).numpy(), np.array([np.nan, np.nan]), *H(probs, target), ["a", "b"], ["s", "s"], 0.5)
    assert out["dice_image"] == pytest.approx(summary["per_image_mean"]["dice"])
    for k in ("dice", "iou", "precision", "recall", "specificity", "accuracy", "auroc"):
        assert out[k] == pytest.approx(summary["global"][k]), k


def test_threshold_is_inclusive_everywhere():
    probs = torch.tensor([[[[0.5, 0.49]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert C(probs[0, 0], target[0, 0], 0.5) == (1, 0, 0, 1)  # 0.5 >= 0.5 is lesion
    m = SegmentationScores(0.5)
    m.update(probs, target)
    assert float(m.compute()["dice"]) == 1.0
    assert M.image_dice(np.array([[True, False]]), np.array([[1, 0]])) == 1.0


def test_segmentation_scores_under_bf16_get_fp32_probabilities():
    """Under bf16-mixed the network's logits are bf16; validation scores fp32 probabilities from
    them. A sigmoid in bf16 rounds 0.4992 (logit -0.003) up to 0.5, a false positive at 0.5."""
    from covidseg.model.unet import LitUNet

    model = LitUNet(encoder_depth=3, decoder_channels=[32, 16, 8], image_size=64, num_val_samples=0)
    logits = torch.full((1, 1, 64, 64), 0.003, dtype=torch.bfloat16)
    logits[..., :32] = -0.003
    target = torch.zeros(1, 1, 64, 64)
    target[..., 32:] = 1.0
    assert bool((torch.sigmoid(logits) >= 0.5).all())  # what a bf16 sigmoid would score: this test can fail
    model.forward = lambda x: logits  # the network's bf16 output under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.validation_step({"image": torch.zeros(1, 1, 64, 64), "mask": target}, 0)
    assert float(model.val_scores.compute()["dice"]) == 1.0


def test_no_lesion_anywhere():
    m = SegmentationScores(0.5)
    m.update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    out = m.compute()
    assert float(out["dice_image"]) == 1.0 and float(out["dice"]) == 1.0 and float(out["accuracy"]) == 1.0
    assert math.isnan(float(out["auroc"])) and math.isnan(float(out["precision"]))


def test_histograms_bin_edges():
    pos, neg = H(np.array([0.0, 0.0005, 0.001, 0.5, 1.0]), np.array([1, 0, 1, 0, 1]), bins=1000)
    assert pos.sum() == 3 and neg.sum() == 2
    assert pos[0] == 1 and pos[1] == 1 and pos[999] == 1  # 1.0 falls in the last bin
    assert neg[0] == 1 and neg[500] == 1


def test_roc_and_pr_on_four_pixels():
    pos, neg = H(PROB4, GT4)
    fpr, tpr, auc = M.roc_from_histograms(pos, neg)
    assert auc == pytest.approx(0.75)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    recall, precision, ap = M.pr_from_histograms(pos, neg)
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert recall[-1] == 1 and precision[-1] == pytest.approx(0.5)


def test_auroc_and_ap_match_torchmetrics_exact():
    rng = np.random.default_rng(1)
    gt = rng.random(20000) < 0.1
    prob = np.clip(rng.normal(0.35 + 0.3 * gt, 0.2), 0, 1).astype(np.float32)
    pos, neg = H(prob, gt)
    exact_auc = BinaryAUROC()(torch.from_numpy(prob), torch.from_numpy(gt.astype(np.int64))).item()
    exact_ap = BinaryAveragePrecision()(torch.from_numpy(prob), torch.from_numpy(gt.astype(np.int64))).item()
    assert M.roc_from_histograms(pos, neg)[2] == pytest.approx(exact_auc, abs=1e-3)
    assert M.pr_from_histograms(pos, neg)[2] == pytest.approx(exact_ap, abs=2e-3)


def test_undefined_curves():
    pos, neg = H(np.array([0.2, 0.7]), np.array([0, 0]))
    assert M.roc_from_histograms(pos, neg)[2] is None
    assert M.pr_from_histograms(pos, neg)[2] is None


def test_dice_by_threshold_and_best():
    pos, neg = H(PROB4, GT4)
    # 0.2: {0.35, 0.4, 0.8} -> tp 2, fp 1, fn 0; 0.5: {0.8} -> tp 1, fn 1; 0.9: nothing -> tp 0, fn 2
    assert M.dice_by_threshold(pos, neg, np.array([0.2, 0.5, 0.9])) == pytest.approx([0.8, 2 / 3, 0.0])
    rng = np.random.default_rng(0)
    prob, gt = rng.random(5000), rng.random(5000) < 0.3
    pos, neg = H(prob, gt)
    for t in (0.05, 0.3, 0.55, 0.95):
        tp, fp, fn, tn = C(prob, gt, t)
        assert M.dice_by_threshold(pos, neg, np.array([t]))[0] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_best_threshold_maximises_mean_per_image_dice():
    # slice 1 (large lesion) prefers 0.2, slice 2 (small lesion, three false alarms at 0.3) prefers 0.5
    one = H([0.35, 0.4, 0.8, 0.1], [1, 1, 1, 0])
    two = H([0.3, 0.6, 0.3, 0.3], [0, 1, 0, 0])
    grid = (0.2, 0.5)
    per_image = M.dice_by_threshold(np.stack([one[0], two[0]]), np.stack([one[1], two[1]]), grid)
    assert per_image.ravel() == pytest.approx([1.0, 0.5, 0.4, 1.0])  # [slice, threshold]
    assert M.best_threshold(per_image, grid) == (0.5, pytest.approx(0.75))
    assert M.best_threshold(np.array([[1.0, 1.0]]), grid)[0] == 0.2  # tie: lowest


def test_bootstrap_resamples_cases_not_images():
    assert S.bootstrap_ci([0.3, 0.5, 0.7], ["a", "a", "a"]) == pytest.approx((0.5, 0.5))
    assert S.bootstrap_ci([0.4, 0.6, 0.5, 0.5], ["a", "a", "b", "b"]) == pytest.approx((0.5, 0.5))  # equal case means
    # 99 perfect slices of case a, 1 failed slice of case b: image resampling would give a
    # tight interval near 0.99; drawing {b, b} (p = 1/4) gives 0 and {a, a} gives 1.
    values, groups = [1.0] * 99 + [0.0], ["a"] * 99 + ["b"]
    assert S.bootstrap_ci(values, groups) == pytest.approx((0.0, 1.0))
    assert S.bootstrap_ci(values, groups, seed=3) == S.bootstrap_ci(values, groups, seed=3)


def test_summarize_every_number():
    pos, neg = H(PROB4, GT4)
    m = S.summarize(COUNTS, np.array([0.75, np.nan, np.nan, 0.5]), pos, neg, ["A", "A", "B", "C"], ["s1", "s1", "s2", "s2"], 0.4)
    assert m["threshold"] == 0.4
    assert m["counts"] == {"images": 4, "cases": 3, "images_without_lesion": 2, "pixels": 16, "lesion_pixels": 6, "predicted_pixels": 4}
    assert m["per_image_mean"] == pytest.approx(
        {"dice": 0.45, "iou": (2 / 3 + 1) / 4, "recall": 1 / 3, "specificity": 0.875, "precision": 0.5, "accuracy": 0.625, "auroc": 0.625}
    )
    assert m["per_image_n"] == {"dice": 4, "iou": 4, "recall": 2, "specificity": 4, "precision": 2, "accuracy": 4, "auroc": 2}
    # pooled: tp 2, fp 2, fn 4, tn 8
    assert m["global"] == pytest.approx(
        {"dice": 0.4, "iou": 0.25, "recall": 1 / 3, "specificity": 0.8, "precision": 0.5, "accuracy": 0.625, "auroc": 0.75, "average_precision": 5 / 6}
    )
    ci = m["dice_ci95"]
    assert (ci["low"], ci["high"]) == pytest.approx(S.bootstrap_ci([0.8, 1.0, 0.0, 0.0], ["A", "A", "B", "C"]))
    assert ci["mean"] == pytest.approx(0.45) and ci["low"] <= 0.45 <= ci["high"]
    assert (ci["cases"], ci["resamples"]) == (3, 1000)
    assert m["per_source"].keys() == {"s1", "s2"}
    per_source = {s: {k: v for k, v in m["per_source"][s].items() if k != "by_lesion_size"} for s in ("s1", "s2")}
    assert per_source["s1"] == pytest.approx({"images": 2, "cases": 1, "dice_image": 0.9, "dice_global": 0.8})
    assert per_source["s2"] == pytest.approx({"images": 2, "cases": 2, "dice_image": 0.0, "dice_global": 0.0})
    assert m["per_source"]["s1"]["by_lesion_size"] == S.by_lesion_size(COUNTS[:2])
    assert m["by_lesion_size"] == S.by_lesion_size(COUNTS)
    assert "scores 1" in m["policy"]["dice_iou_empty"]
    json.dumps(m, allow_nan=False)  # undefined values are null, never NaN
    table = writers.metric_table(m)
    assert "| Dice | 0.4500 | 0.4000 |" in table and "| AUROC | 0.6250 | 0.7500 |" in table


def test_dice_by_lesion_size_by_hand():
    counts = np.array(
        [
            (0, 0, 0, 100),  # no lesion, nothing predicted: Dice 1, bin none
            (0, 5, 0, 95),  # no lesion, 5 px predicted: Dice 0, bin none
            (100, 0, 100, 800),  # 200 px lesion: Dice 2/3
            (499, 0, 0, 501),  # 499 px (< 500): Dice 1
            (250, 250, 250, 250),  # 500 px: first pixel of 500-2000, Dice 1/2
            (1000, 0, 999, 1),  # 1999 px: last pixel of 500-2000, Dice 2000/2999
            (2000, 0, 0, 0),  # 2000 px: >= 2000, Dice 1
        ]
    )
    bins = S.by_lesion_size(counts)
    assert list(bins) == ["none", "<500", "500-2000", ">=2000"] == S.lesion_size_labels()
    assert [b["images"] for b in bins.values()] == [2, 2, 2, 1]
    assert bins["none"]["dice_image"] == 0.5 and bins["none"]["dice_global"] == 0.0
    assert bins["<500"]["dice_image"] == pytest.approx((2 / 3 + 1) / 2)
    assert bins["<500"]["dice_global"] == pytest.approx(2 * 599 / (2 * 599 + 100))  # pooled tp 599, fn 100
    assert bins["500-2000"]["dice_image"] == pytest.approx((0.5 + 2000 / 2999) / 2)
    assert bins[">=2000"]["dice_image"] == 1.0
    assert (bins["<500"]["min_px"], bins["<500"]["max_px"], bins[">=2000"]["max_px"]) == (1, 500, None)
    # an empty bin is null, and other edges name the bins after them
    few = S.by_lesion_size(counts[:3], edges=(100, 1000, 5000))
    assert list(few) == ["none", "<100", "100-1000", "1000-5000", ">=5000"]
    assert few["<100"] == {"images": 0, "dice_image": None, "dice_global": None, "min_px": 1, "max_px": 100}
    assert few["100-1000"]["dice_image"] == pytest.approx(2 / 3)
    table = writers.lesion_size_table(bins)
    assert "| none (no lesion) | 2 | 0.5000 | 0.0000 |" in table and "| >=2000 | 1 | 1.0000 | 1.0000 |" in table
    assert "| <100 | 0 | n/a | n/a |" in writers.lesion_size_table(few)


def test_summarize_all_empty():
    pos, neg = H(np.zeros(8), np.zeros(8))
    m = S.summarize(np.array([(0, 0, 0, 4), (0, 0, 0, 4)]), np.array([np.nan, np.nan]), pos, neg, ["a", "b"], ["s", "s"], 0.5)
    assert m["per_image_mean"]["dice"] == 1.0 and m["global"]["dice"] == 1.0
    assert m["per_image_mean"]["recall"] is None and m["global"]["recall"] is None and m["global"]["auroc"] is None
    assert "per_source" not in m
    assert "n/a" in writers.markdown({**m, "checkpoints": ["x.ckpt"], "roots": ["d"]})


def test_figures_render(tmp_path):
    pos, neg = H(PROB4, GT4)
    empty_pos, empty_neg = H(np.zeros(4), np.zeros(4))
    image = np.linspace(0, 1, 64).reshape(8, 8)
    figs = [
        figures.roc_figure(pos, neg, (0.5, 0.5), 0.4),
        figures.roc_figure(empty_pos, empty_neg, None, 0.5),
        figures.pr_figure(pos, neg, (0.5, 1.0), 0.4),
        figures.pr_figure(empty_pos, empty_neg, (None, None), 0.5),
        figures.confusion_figure(2, 2, 4, 8, 0.4),
        figures.lesion_size_figure(S.by_lesion_size(COUNTS)),
        figures.samples_figure([("a", image, image > 0.5, image), ("b", image[:4], image[:4] > 2, image[:4])], 0.5),
        curves.learning_curves_figure({"v0": {"train/loss": {0: 1.0, 1: 0.5}, "val/dice_image": {0: 0.2, 1: 0.4}}}),
    ]
    for i, fig in enumerate(figs):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert fig.axes[0].get_title() or fig.get_suptitle()


def test_no_nan_in_degenerate_rates():
    r = M.rates(0, 0, 0, 0)
    assert r["dice"] == 1.0 and math.isnan(float(r["recall"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (counts device->host syncs)")
def test_training_metric_updates_do_not_sync_on_cuda():
    from covidseg.metrics.epoch import loss_metric

    scores, loss = SegmentationScores(0.5).cuda(), loss_metric().cuda()
    probs = torch.rand(4, 1, 64, 64, device="cuda")
    target = (torch.rand(4, 1, 64, 64, device="cuda") > 0.7).float()
    value = torch.tensor(0.5, device="cuda")
    scores.update(probs, target)  # first call may allocate
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            scores.update(probs, target)
            loss.update(value, 4)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert float(scores.compute()["dice"]) >= 0


def test_epoch_loss_is_weighted_by_batch_size():
    """Two batches, 4 slices at loss 1 and a short last one of 1 slice at loss 4: the epoch's
    loss is the mean over slices, 8 / 5. torchmetrics' MeanMetric(nan_strategy="disable")
    dropped the weights and gave (1 + 4) / 2."""
    from covidseg.metrics.epoch import loss_metric

    loss = loss_metric()
    loss.update(torch.tensor(1.0), 4)
    loss.update(torch.tensor(4.0), 1)
    assert float(loss.compute()) == pytest.approx(8 / 5)
    loss.reset()
    loss.update(torch.tensor(2.0), torch.tensor(3))
    assert float(loss.compute()) == pytest.approx(2.0)


def test_scores_without_a_labelled_slice_are_undefined():
    """``val/lung_dice`` read 1.0 when no validation slice had a lung mask."""
    scores = SegmentationScores(0.5, auroc=False)
    scores.update(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), torch.tensor([False, False]))
    assert all(math.isnan(float(v)) for v in scores.compute().values())
    scores.update(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), torch.tensor([True]))
    assert float(scores.compute()["dice"]) == 1.0  # one labelled empty slice, predicted empty
