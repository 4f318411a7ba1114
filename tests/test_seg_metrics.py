"""Segmentation metrics against hand counts: a confusion matrix built pixel by pixel in plain Python loops, and
IoU / accuracy formulas applied to it independently of mindcv_ext.seg.metrics."""
import math

import numpy as np
import pytest

from mindcv_ext.seg.metrics import confusion_matrix, majority_baseline, seg_metrics


def _hand_counts(pred, label, k, ignore=255):
    cm = [[0] * k for _ in range(k)]
    for p, t in zip(pred.ravel().tolist(), label.ravel().tolist()):
        if t != ignore:
            cm[t][p] += 1
    return cm


def test_confusion_matrix_and_miou_match_a_hand_count():
    rng = np.random.default_rng(0)
    k = 5
    label = rng.integers(0, k, (37, 53))
    label[rng.random(label.shape) < 0.1] = 255          # some ignored pixels
    label[label == 3] = 4                               # class 3 never labelled ...
    pred = rng.integers(0, k, (37, 53))
    pred[pred == 3] = 2                                 # ... nor predicted: no IoU, left out of the mean
    pred[(label == 1) & (rng.random(label.shape) < 0.7)] = 1
    cm = confusion_matrix(pred, label, k)
    hand = _hand_counts(pred, label, k)
    assert cm.tolist() == hand

    ious, accs = [], []
    for c in range(k):
        tp = hand[c][c]
        fn = sum(hand[c]) - tp
        fp = sum(hand[r][c] for r in range(k)) - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else None)
        accs.append(tp / (tp + fn) if tp + fn else None)
    present = [v for v in ious if v is not None]
    valid = label != 255
    m = seg_metrics(cm)
    assert ious[3] is None and m["per_class"][3]["IoU"] is None
    assert m["mIoU"] == pytest.approx(100 * sum(present) / len(present), abs=1e-3)
    assert m["mAcc"] == pytest.approx(100 * np.mean([a for a in accs if a is not None]), abs=1e-3)
    assert m["aAcc"] == pytest.approx(100 * (pred[valid] == label[valid]).mean(), abs=1e-3)
    for c in (0, 1, 2, 4):
        assert m["per_class"][c]["IoU"] == pytest.approx(100 * ious[c], abs=1e-3)
    assert m["pixels"] == int(valid.sum())


def test_perfect_prediction_and_majority_baseline():
    label = np.array([[0, 0, 0, 1], [0, 0, 2, 255]])
    m = seg_metrics(confusion_matrix(label.copy(), label, 3))
    assert m["mIoU"] == 100.0 and m["aAcc"] == 100.0
    base = majority_baseline(confusion_matrix(label.copy(), label, 3), ["bg", "a", "b"])
    # class 0 everywhere: IoU_0 = 5 / 7, IoU_1 = IoU_2 = 0; aAcc 5 / 7
    assert base["class"] == "bg"
    assert base["mIoU"] == pytest.approx(100 * (5 / 7) / 3, abs=1e-3)
    assert base["aAcc"] == pytest.approx(100 * 5 / 7, abs=1e-3)


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix(np.zeros(4, int), np.array([0, 1, 7, 255]), 3)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(np.array([0, 5, 0, 0]), np.zeros(4, int), 3)
    assert math.isclose(seg_metrics(confusion_matrix(np.zeros(3, int), np.full(3, 255), 2))["aAcc"] or 0, 0)


def test_confusion_counts_sum_exactly_over_32_ranks_through_a_float32_all_reduce():
    # 20-bit parts were exact up to 16 ranks only: 32 ranks' low parts summed past 2**24 and lost their last bits
    import mindspore as ms

    from mindcv_ext.seg.inference import _sum_counts

    rng = np.random.default_rng(0)
    ranks = 32
    # Cityscapes-sized: 500 val images of 2048x1024 over 32 ranks, up to ~2**25 pixels of a class per rank
    counts = [rng.integers(0, 2 ** 25, (19, 19)) for _ in range(ranks)]
    parts = []
    for cm in counts:  # what each rank hands to the all-reduce
        _sum_counts(cm, lambda t: parts.append(t.asnumpy()) or t)

    def all_reduce(_):  # a float32 all-reduce: the running sum stays float32 at every step
        total = np.zeros_like(parts[0])
        for p in parts:
            total = (total + p).astype(np.float32)
        return ms.Tensor(total)

    expected = np.sum(counts, axis=0)  # int64, exact
    assert expected.max() > 2 ** 29  # far past float32's exact integers
    assert np.array_equal(_sum_counts(counts[0], all_reduce), expected)
