import pytest
import torch
from torchmetrics.classification import BinaryAUROC

from covidseg.metrics import per_image_dice, segmentation_metrics


def test_per_image_dice_hand_values_and_empty_policy():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    gt = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    # 2*1/(2+1); both empty -> 1; prediction on empty mask -> 0; missed lesion -> 0
    assert per_image_dice(pred, gt).tolist() == pytest.approx([2 / 3, 1.0, 0.0, 0.0])


def test_collection_matches_hand_counts():
    # 2 images of 2x2 pixels: probabilities and truth
    probs = torch.tensor([[[[0.9, 0.8], [0.2, 0.6]]], [[[0.1, 0.3], [0.4, 0.05]]]])
    target = torch.tensor([[[[1, 0], [1, 1]]], [[[0, 0], [0, 0]]]])
    # at 0.5: TP=2 (0.9, 0.6), FP=1 (0.8), FN=1 (0.2), TN=4
    m = segmentation_metrics("val")
    m.update(probs, target)
    out = {k: float(v) for k, v in m.compute().items()}
    tp, fp, fn, tn = 2, 1, 1, 4
    assert out["val/dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["val/iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["val/precision"] == pytest.approx(tp / (tp + fp))
    assert out["val/recall"] == pytest.approx(tp / (tp + fn))
    assert out["val/specificity"] == pytest.approx(tn / (tn + fp))
    assert out["val/accuracy"] == pytest.approx((tp + tn) / 8)
    # image 1: dice 2*2/(3+3)=2/3; image 2 empty & empty -> 1
    assert out["val/dice_image"] == pytest.approx((2 / 3 + 1) / 2)
    # AUROC by hand: positives {0.9, 0.2, 0.6}, negatives {0.8, 0.1, 0.3, 0.4, 0.05}
    pos, neg = [0.9, 0.2, 0.6], [0.8, 0.1, 0.3, 0.4, 0.05]
    exact = sum((p > n) for p in pos for n in neg) / 15
    assert out["val/auroc"] == pytest.approx(exact, abs=0.01)


def test_binned_auroc_close_to_exact_on_random_pixels():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(4, 1, 32, 32, generator=g) > 0.8).int()
    probs = (0.35 * target + 0.65 * torch.rand(4, 1, 32, 32, generator=g)).clamp(0, 1)
    m = segmentation_metrics("test")
    m.update(probs, target)
    exact = BinaryAUROC()(probs.flatten(), target.flatten())
    assert float(m.compute()["test/auroc"]) == pytest.approx(float(exact), abs=2e-3)


def test_no_lesion_anywhere():
    m = segmentation_metrics("val")
    m.update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.int))
    out = m.compute()
    assert float(out["val/dice_image"]) == 1.0
    assert float(out["val/accuracy"]) == 1.0
