"""Whole-image and sliding-window inference, and evaluation over a loader (mmseg's test_cfg modes).

- whole: the image is padded at the bottom and right to a multiple of the model's native size (the encoder's
  FC sizes need that), run once, and the logits cropped back.
- slide: crop_size windows every stride pixels (the last window of a row or column flush with the border, as
  mmseg), each padded like whole, logits summed and divided by the number of windows covering each pixel.
Logits are then resized (bilinear) to the label's size and arg-maxed.
"""
import math
from typing import Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import ops

from ..cli import keep_sigint
from .metrics import confusion_matrix

__all__ = ["pad_to_multiple", "infer_logits", "predict_mask", "evaluate_seg"]


def pad_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """(N, 3, H, W) -> zero-padded at the bottom/right to multiples of `multiple` (0 = the mean after normalizing,
    mmseg's pad value)."""
    h, w = img.shape[-2:]
    ph, pw = math.ceil(h / multiple) * multiple - h, math.ceil(w / multiple) * multiple - w
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, 0), (0, 0), (0, ph), (0, pw)))


def _run(model, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[-2:]
    out = model(ms.Tensor(pad_to_multiple(img, model.native_size))).asnumpy()
    keep_sigint()  # MindSpore's forward installs a SIGINT handler that turns Ctrl-C into SIGTERM
    return out[..., :h, :w]


def infer_logits(model, img: np.ndarray, mode: str = "whole", crop_size: Optional[Sequence[int]] = None,
                 stride: Optional[Sequence[int]] = None) -> np.ndarray:
    """img (3, H, W) or (1, 3, H, W) normalized -> logits (C, H, W). The model must be in eval mode."""
    img = img[None] if img.ndim == 3 else img
    if mode == "whole":
        return _run(model, img)[0]
    h, w = img.shape[-2:]
    ch, cw = crop_size
    sh, sw = stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    total, count = None, np.zeros((h, w), np.float32)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            window = img[..., y1:y2, x1:x2]
            # pad each window to the full crop (one compiled shape for all windows), then crop the logits back
            padded = np.pad(window, ((0, 0), (0, 0), (0, ch - window.shape[2]), (0, cw - window.shape[3])))
            logits = _run(model, padded)[0][:, :y2 - y1, :x2 - x1]
            if total is None:
                total = np.zeros((logits.shape[0], h, w), np.float32)
            total[:, y1:y2, x1:x2] += logits
            count[y1:y2, x1:x2] += 1
    return total / count


def predict_mask(model, img: np.ndarray, out_size: Optional[Sequence[int]] = None, **kwargs) -> np.ndarray:
    """Class index per pixel (H, W) int32, resized to out_size (H, W) first if given."""
    logits = ms.Tensor(infer_logits(model, img, **kwargs)[None])
    if out_size is not None and tuple(out_size) != tuple(logits.shape[2:]):
        logits = ops.interpolate(logits, size=tuple(int(s) for s in out_size), mode="bilinear",
                                 align_corners=False)
    return logits.argmax(axis=1).asnumpy()[0].astype(np.int32)


def evaluate_seg(model, loader, num_classes: int, ignore_index: int = 255, all_reduce=None, log=None,
                 log_interval: int = 0, **kwargs) -> np.ndarray:
    """The confusion matrix of `model` over an eval loader (build_seg_eval_loader), summed over ranks when
    all_reduce is given. Sets the model to eval mode; kwargs: mode, crop_size, stride."""
    model.set_train(False)
    cm = np.zeros((num_classes, num_classes), np.int64)
    n = 0
    for n, (img, label, _) in enumerate(loader.create_tuple_iterator(num_epochs=1, output_numpy=True), 1):
        pred = predict_mask(model, img, out_size=label.shape, **kwargs)
        cm += confusion_matrix(pred, label, num_classes, ignore_index)
        if log and log_interval and n % log_interval == 0:
            log(f"evaluated {n} images")
    if all_reduce is not None:
        cm = _sum_counts(cm, all_reduce)
    return cm


def _sum_counts(cm: np.ndarray, all_reduce) -> np.ndarray:
    """Exact sum of int64 counts over ranks through a float32 all-reduce (what every backend has): each count
    is split into 20-bit parts, whose sums over <= 16 ranks stay below float32's exact-integer limit 2**24."""
    low, high = cm & 0xFFFFF, cm >> 20
    if high.max(initial=0) >= 2 ** 19:
        raise ValueError("confusion-matrix counts too large to all-reduce exactly")
    parts = ms.Tensor(np.stack([low, high]).astype(np.float32))
    summed = np.rint(all_reduce(parts).asnumpy()).astype(np.int64)
    return summed[0] + (summed[1] << 20)
