"""The report's metric maths on tiny arrays with hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from covidseg import report
from covidseg.metrics import per_image_dice

# The classic 4-pixel example: exact AUROC 3/4, average precision 5/6.
PROB4 = np.array([0.1, 0.4, 0.35, 0.8])
GT4 = np.array([0, 0, 1, 1])

# Four slices as (tp, fp, fn, tn): lesion found in part, nothing anywhere, false alarm only, lesion missed.
COUNTS = np.array([(2, 0, 1, 1), (0, 0, 0, 4), (0, 2, 0, 2), (0, 0, 3, 1)])


def test_pixel_counts_thresholds_inclusive():
    prob = np.array([[0.9, 0.2], [0.5, 0.49]], np.float32)
    gt = np.array([[1, 0], [1, 1]], np.uint8)
    assert report.pixel_counts(prob, gt, 0.5) == (2, 0, 1, 1)
    assert report.pixel_counts(prob, gt, 0.1) == (3, 1, 0, 0)
    assert report.pixel_counts(prob, np.zeros_like(gt), 0.95) == (0, 0, 0, 4)


def test_rates_per_image_with_empty_masks():
    r = report.rates(*COUNTS.T)
    assert r["dice"] == pytest.approx([0.8, 1.0, 0.0, 0.0])
    assert r["iou"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert r["recall"] == pytest.approx([2 / 3, np.nan, np.nan, 0.0], nan_ok=True)
    assert r["precision"] == pytest.approx([1.0, np.nan, 0.0, np.nan], nan_ok=True)
    assert r["specificity"] == pytest.approx([1.0, 1.0, 0.5, 1.0])
    assert r["accuracy"] == pytest.approx([0.75, 1.0, 0.5, 0.25])


def test_dice_rule_matches_metrics_per_image_dice():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    gt = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
    counts = [report.pixel_counts(p.numpy().astype(float), g.numpy(), 0.5) for p, g in zip(pred, gt)]
    assert report.rates(*np.array(counts).T)["dice"] == pytest.approx(per_image_dice(pred, gt).numpy())


def test_histograms_bin_edges():
    pos, neg = report.prob_histograms(np.array([0.0, 0.0005, 0.001, 0.5, 1.0]), np.array([1, 0, 1, 0, 1]), bins=1000)
    assert pos.sum() == 3 and neg.sum() == 2
    assert pos[0] == 1 and pos[1] == 1 and pos[999] == 1  # 1.0 falls in the last bin
    assert neg[0] == 1 and neg[500] == 1


def test_roc_and_pr_on_four_pixels():
    pos, neg = report.prob_histograms(PROB4, GT4)
    fpr, tpr, thresholds, auc = report.roc_from_histograms(pos, neg)
    assert auc == pytest.approx(0.75)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(thresholds) < 0)
    recall, precision, ap = report.pr_from_histograms(pos, neg)
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert recall[-1] == 1 and precision[-1] == pytest.approx(0.5)


def test_auroc_and_ap_match_torchmetrics_exact():
    rng = np.random.default_rng(1)
    gt = rng.random(20000) < 0.1
    prob = np.clip(rng.normal(0.35 + 0.3 * gt, 0.2), 0, 1).astype(np.float32)
    pos, neg = report.prob_histograms(prob, gt)
    exact_auc = BinaryAUROC()(torch.from_numpy(prob), torch.from_numpy(gt.astype(np.int64))).item()
    exact_ap = BinaryAveragePrecision()(torch.from_numpy(prob), torch.from_numpy(gt.astype(np.int64))).item()
    assert report.roc_from_histograms(pos, neg)[3] == pytest.approx(exact_auc, abs=1e-3)
    assert report.pr_from_histograms(pos, neg)[2] == pytest.approx(exact_ap, abs=2e-3)


def test_undefined_curves():
    pos, neg = report.prob_histograms(np.array([0.2, 0.7]), np.array([0, 0]))
    assert report.roc_from_histograms(pos, neg)[3] is None
    assert report.pr_from_histograms(pos, neg)[2] is None


def test_dice_by_threshold_and_best():
    pos, neg = report.prob_histograms(PROB4, GT4)
    # 0.2: {0.35, 0.4, 0.8} -> tp 2, fp 1, fn 0; 0.5: {0.8} -> tp 1, fn 1; 0.9: nothing -> tp 0, fn 2
    assert report.dice_by_threshold(pos, neg, np.array([0.2, 0.5, 0.9])) == pytest.approx([0.8, 2 / 3, 0.0])
    assert report.best_threshold(pos, neg, np.array([0.2, 0.5, 0.9])) == (0.2, pytest.approx(0.8))
    assert report.best_threshold(pos, neg, np.array([0.15, 0.2, 0.3]))[0] == 0.15  # tie (all 0.8): lowest
    rng = np.random.default_rng(0)
    prob, gt = rng.random(5000), rng.random(5000) < 0.3
    pos, neg = report.prob_histograms(prob, gt)
    for t in (0.05, 0.3, 0.55, 0.95):
        tp, fp, fn, tn = report.pixel_counts(prob, gt, t)
        assert report.dice_by_threshold(pos, neg, np.array([t]))[0] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_bootstrap_resamples_cases_not_images():
    assert report.bootstrap_ci([0.3, 0.5, 0.7], ["a", "a", "a"]) == pytest.approx((0.5, 0.5))
    assert report.bootstrap_ci([0.4, 0.6, 0.5, 0.5], ["a", "a", "b", "b"]) == pytest.approx((0.5, 0.5))  # equal case means
    # 99 perfect slices of case a, 1 failed slice of case b: image resampling would give a
    # tight interval near 0.99; drawing {b, b} (p = 1/4) gives 0 and {a, a} gives 1.
    values, groups = [1.0] * 99 + [0.0], ["a"] * 99 + ["b"]
    assert report.bootstrap_ci(values, groups) == pytest.approx((0.0, 1.0))
    assert report.bootstrap_ci(values, groups, seed=3) == report.bootstrap_ci(values, groups, seed=3)


def test_summarize_every_number():
    pos, neg = report.prob_histograms(PROB4, GT4)
    m = report.summarize(COUNTS, np.array([0.75, np.nan, np.nan, 0.5]), pos, neg, ["A", "A", "B", "C"], ["s1", "s1", "s2", "s2"], 0.4)
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
    assert (ci["low"], ci["high"]) == pytest.approx(report.bootstrap_ci([0.8, 1.0, 0.0, 0.0], ["A", "A", "B", "C"]))
    assert ci["mean"] == pytest.approx(0.45) and ci["low"] <= 0.45 <= ci["high"]
    assert (ci["cases"], ci["resamples"]) == (3, 1000)
    assert m["per_source"].keys() == {"s1", "s2"}
    assert m["per_source"]["s1"] == pytest.approx({"images": 2, "cases": 1, "dice_image": 0.9, "dice_global": 0.8})
    assert m["per_source"]["s2"] == pytest.approx({"images": 2, "cases": 2, "dice_image": 0.0, "dice_global": 0.0})
    assert "scores 1" in m["policy"]["dice_iou_empty"]
    json.dumps(m, allow_nan=False)  # undefined values are null, never NaN
    table = report.metric_table(m)
    assert "| Dice | 0.4500 | 0.4000 |" in table and "| AUROC | 0.6250 | 0.7500 |" in table


def test_summarize_all_empty():
    pos, neg = report.prob_histograms(np.zeros(8), np.zeros(8))
    m = report.summarize(np.array([(0, 0, 0, 4), (0, 0, 0, 4)]), np.array([np.nan, np.nan]), pos, neg, ["a", "b"], ["s", "s"], 0.5)
    assert m["per_image_mean"]["dice"] == 1.0 and m["global"]["dice"] == 1.0
    assert m["per_image_mean"]["recall"] is None and m["global"]["recall"] is None and m["global"]["auroc"] is None
    assert "per_source" not in m
    assert "n/a" in report.markdown({**m, "checkpoints": ["x.ckpt"], "roots": ["d"]})


def test_figures_render(tmp_path):
    pos, neg = report.prob_histograms(PROB4, GT4)
    empty_pos, empty_neg = report.prob_histograms(np.zeros(4), np.zeros(4))
    image = np.linspace(0, 1, 64).reshape(8, 8)
    figures = [
        report.roc_figure(pos, neg, (0.5, 0.5), 0.4),
        report.roc_figure(empty_pos, empty_neg, None, 0.5),
        report.pr_figure(pos, neg, (0.5, 1.0), 0.4),
        report.pr_figure(empty_pos, empty_neg, (None, None), 0.5),
        report.confusion_figure(2, 2, 4, 8, 0.4),
        report.samples_figure([("a", image, image > 0.5, image), ("b", image[:4], image[:4] > 2, image[:4])], 0.5),
        report.learning_curves_figure({"v0": {"train/loss": {0: 1.0, 1: 0.5}, "val/dice": {0: 0.2, 1: 0.4}}}),
    ]
    for i, fig in enumerate(figures):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert fig.axes[0].get_title() or fig.get_suptitle()


def test_no_nan_in_degenerate_rates():
    r = report.rates(0, 0, 0, 0)
    assert r["dice"] == 1.0 and math.isnan(float(r["recall"]))
