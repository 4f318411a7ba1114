"""Segmentation metrics from a confusion matrix, as mmsegmentation's IoUMetric reports them.

IoU_c = TP / (TP + FP + FN); a class that appears neither in the labels nor in the predictions has no IoU (NaN)
and is left out of the mean. aAcc = correct / labelled pixels; Acc_c = TP / labelled pixels of c.
Pixels labelled ignore_index are not counted.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["confusion_matrix", "seg_metrics", "format_table", "majority_baseline"]


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = label, columns = prediction."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    label = np.asarray(label).reshape(-1).astype(np.int64)
    if pred.shape != label.shape:
        raise ValueError(f"prediction and label differ in size: {pred.size} vs {label.size} pixels")
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    bad = (label < 0) | (label >= num_classes) | (pred < 0) | (pred >= num_classes)
    if bad.any():
        raise ValueError(f"values outside [0, {num_classes}) (and not ignore_index {ignore_index}) in the "
                         f"{'labels' if ((label < 0) | (label >= num_classes)).any() else 'predictions'}")
    return np.bincount(label * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def seg_metrics(cm: np.ndarray, class_names: Optional[Sequence[str]] = None) -> Dict:
    """{'mIoU', 'mAcc', 'aAcc' (percent), 'per_class': [{'class', 'IoU', 'Acc', 'pixels'}], 'pixels'}."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    labelled, predicted = cm.sum(axis=1), cm.sum(axis=0)
    union = labelled + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(labelled > 0, tp / labelled, np.nan)
    total = cm.sum()
    names = list(class_names) if class_names else [str(i) for i in range(len(tp))]
    rows = [{"class": names[i], "IoU": _pct(iou[i]), "Acc": _pct(acc[i]), "pixels": int(labelled[i])}
            for i in range(len(tp))]
    return {"mIoU": _pct(np.nanmean(iou)) if np.isfinite(iou).any() else None,
            "mAcc": _pct(np.nanmean(acc)) if np.isfinite(acc).any() else None,
            "aAcc": _pct(tp.sum() / total) if total else None,
            "per_class": rows, "pixels": int(total)}


def _pct(v) -> Optional[float]:
    return None if v is None or not np.isfinite(v) else round(float(v) * 100.0, 4)


def majority_baseline(cm: np.ndarray, class_names: Optional[Sequence[str]] = None) -> Dict:
    """The metrics of predicting the most frequent labelled class everywhere (a trivial baseline): its row of the
    confusion matrix is kept, every other pixel is an error against it."""
    cm = np.asarray(cm)
    labelled = cm.sum(axis=1)
    k = int(np.argmax(labelled))
    trivial = np.zeros_like(cm)
    trivial[:, k] = labelled
    out = seg_metrics(trivial, class_names)
    out["class"] = (list(class_names)[k] if class_names else str(k))
    return out


def format_table(metrics: Dict) -> List[str]:
    """Per-class lines like mmseg's table, then the summary."""
    width = max([len(r["class"]) for r in metrics["per_class"]] + [5])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}  {'pixels':>10}"]
    for r in metrics["per_class"]:
        show = lambda v: "    n/a" if v is None else f"{v:7.2f}"
        lines.append(f"{r['class']:<{width}}  {show(r['IoU'])}  {show(r['Acc'])}  {r['pixels']:>10}")
    return lines
