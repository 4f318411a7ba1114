"""Segmentation inference, mmseg style: load a model from a checkpoint, predict an image with the evaluation's
preprocessing, evaluate over a loader. validate_seg.py and scripts/predict_seg.py both go through it.

    model = init_segmentor("best.ckpt", reparameterize=True)       # eval mode; model.dataset_meta, model.test_cfg
    mask = inference_segmentor(model, "photo.png")                  # (H, W) class indices at the image's size

Test modes (mmseg's test_cfg):
- whole: the image is padded at the bottom and right to a multiple of the model's native size (the encoder's
  FC sizes need that), run once, and the logits cropped back.
- slide: crop_size windows every stride pixels (the last window of a row or column flush with the border, as
  mmseg), each zero-padded at the bottom/right to the full window (one compiled shape for all) and its logits
  cropped back, logits summed and divided by the number of windows covering each pixel. A stride larger than the
  window would leave pixels no window covers: refused (check_slide).
Logits are then resized (bilinear) to the image's (the label's) size and arg-maxed.

test_cfg defaults (resolve_test_cfg), what a checkpoint alone allows: the window is the training crop the checkpoint
records; the stride 2/3 of it (mmseg's 341x682 for 512x1024); images at their own size unless a scale is given
(a recipe's img_scale); ImageNet mean/std.
"""
import math
from typing import Optional, Sequence

import numpy as np

from ..cli import exit_at_once, keep_sigint
from ..config import IMAGENET_MEAN, IMAGENET_STD
from .data import eval_preprocess, palette_for, read_image
from .metrics import confusion_matrix

__all__ = ["init_segmentor", "inference_segmentor", "resolve_test_cfg", "check_slide", "default_stride",
           "save_deploy", "pad_to_multiple", "infer_logits", "predict_mask", "evaluate_seg"]


def default_stride(crop_size: Sequence[int]) -> tuple:
    """The slide stride when none is given: 2/3 of the window (mmseg's 341x682 for 512x1024)."""
    return tuple(max(1, c * 2 // 3) for c in crop_size)


def check_slide(crop_size: Sequence[int], stride: Sequence[int], native: Optional[int], where: str = "") -> None:
    """ValueError unless sliding windows of crop_size every stride cover every pixel and fit the encoder: each
    stride at most the window (a larger one skips the pixels between windows; their logits were 0/0, NaN) and the
    window a multiple of the native size. The one check of eval_crop / eval_stride: seg/config.py calls it too,
    with native None while the encoder is not known yet (the evaluation tools, before the checkpoint is read)."""
    for name, c, s in (("height", crop_size[0], stride[0]), ("width", crop_size[1], stride[1])):
        if s > c:
            raise ValueError(f"eval_stride {list(stride)} is larger than eval_crop {list(crop_size)} in {name}: the "
                             f"pixels between windows would never be predicted. Use a stride <= the window, e.g. "
                             f"--eval_stride {list(default_stride(crop_size))}{where}.")
        if native and c % native:
            raise ValueError(f"eval_crop {list(crop_size)} must be multiples of the encoder's native size {native} "
                             f"(its FCs are built for {native}x{native} partitions){where}.")


def resolve_test_cfg(arch: dict, native: int, mode: str = "whole", scale=None, crop_size=None, stride=None,
                     mean=None, std=None) -> dict:
    """mmseg's test_cfg plus the test pipeline's resize and normalization, with the defaults a checkpoint allows
    (module docstring). Raises ValueError, before any work, for a slide setting that cannot fit."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"eval_mode must be whole or slide; got {mode!r}.")
    crop = tuple(crop_size) if crop_size else arch.get("crop_size")
    if mode == "slide":
        if not crop:
            raise ValueError("eval_mode slide needs a window: this checkpoint does not record its training crop; pass "
                             f"--eval_crop H W (multiples of {native}) or -c <the training recipe>.")
        stride = tuple(stride) if stride else default_stride(crop)
        check_slide(crop, stride, native)
    return dict(mode=mode, scale=tuple(scale) if scale else None, crop_size=tuple(crop) if crop else None,
                stride=tuple(stride) if stride else None, mean=tuple(mean or IMAGENET_MEAN),
                std=tuple(std or IMAGENET_STD))


def init_segmentor(checkpoint: str, reparameterize: bool = False, gelu_approximate: Optional[bool] = None,
                   log=None, **test_cfg):
    """mmseg's init_model for a train_seg.py checkpoint (train or deploy form, any format mindcv_ext.weights reads):
    the SegModel in eval mode, re-parameterized if asked, with
      model.dataset_meta = {"classes": names, "palette": (num_classes + 1, 3) uint8} (recorded names, or indices),
      model.arch (seg_architecture + gelu_approximate, crop_size; "reparameterized" when done here),
      model.test_cfg (resolve_test_cfg(**test_cfg)).
    Raises CheckpointError (not a segmentation checkpoint, damaged) or ValueError (a test setting that cannot fit)."""
    from ..onnx_runtime import is_onnx, onnx_segmentor

    if is_onnx(checkpoint):  # scripts/export.py's file, run by ONNX Runtime: no MindSpore
        return onnx_segmentor(checkpoint, **test_cfg)
    from ..reparameterize import reparameterize as fuse
    from .model import load_seg_checkpoint

    model, w, arch = load_seg_checkpoint(checkpoint, log=log, gelu_approximate=gelu_approximate)
    model.set_train(False)
    if reparameterize and not arch["deploy"]:
        fuse(model)
        arch["deploy"] = arch["reparameterized"] = True
    n = arch["num_classes"]
    names = list(w.class_names) if w.class_names and len(w.class_names) == n else None
    model.dataset_meta = {"classes": names or [str(i) for i in range(n)], "recorded": bool(names),
                          "palette": palette_for(n)}
    model.arch = arch
    model.test_cfg = resolve_test_cfg(arch, model.native_size, **test_cfg)
    return model


def save_deploy(model, path: str, tool: str) -> str:
    """Write a re-parameterized model's deploy-form checkpoint (atomically, marked as `tool`'s output, with its
    class names and metadata, so it loads with no flag)."""
    from ..weights import save_weights
    from .model import seg_metadata

    arch = model.arch
    names = model.dataset_meta["classes"] if model.dataset_meta["recorded"] else None
    return save_weights(model, path, class_names=names, tool=tool,
                        append_dict=seg_metadata(arch["gelu_approximate"], arch["crop_size"]))


def inference_segmentor(model, image) -> np.ndarray:
    """mmseg's inference_model for one image (a path or an RGB uint8 (H, W, 3) array): the evaluation's
    preprocessing (model.test_cfg), whole or sliding-window inference, class index per pixel (H, W) int32 at
    the image's own size."""
    rgb = read_image(image) if isinstance(image, str) else np.asarray(image)
    cfg = model.test_cfg
    img = eval_preprocess(rgb, cfg["scale"], cfg["mean"], cfg["std"])
    return predict_mask(model, img, out_size=rgb.shape[:2], mode=cfg["mode"], crop_size=cfg["crop_size"],
                        stride=cfg["stride"])


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
    # A signal ends the process at once here (cli.exit_at_once): each new image size compiles the graph again,
    # and an exception inside MindSpore's compile prints pages of analyzer dump.
    x = pad_to_multiple(img, model.native_size)
    with exit_at_once():
        if _is_onnx(model):  # ONNX Runtime: NumPy in and out, no MindSpore
            out = model(x)
        else:
            import mindspore as ms
            out = model(ms.Tensor(x)).asnumpy()
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
    check_slide(crop_size, stride, None)  # resolve_test_cfg refuses this before work; never a silent NaN here
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


def _is_onnx(model) -> bool:
    from ..onnx_runtime import OnnxNet
    return isinstance(model, OnnxNet)


def _bilinear_taps(n_out: int, n_in: int):
    """(first index, second index, weight of the second) per output pixel of bilinear resampling with half-pixel
    centres (align_corners False), the source coordinate clamped at 0 and at the last pixel: what
    ops.interpolate(mode='bilinear') and mmseg's resize compute along one axis."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def resize_logits(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(C, h, w) float32 -> (C, H, W) bilinear, align_corners False: columns, then rows, two taps each. In NumPy
    for every model, checkpoint or .onnx file alike: one resize, and none that needs MindSpore (tests compare it
    with ops.interpolate). Computed channels-last, so each tap gathers whole pixels (C contiguous values): half
    the time of gathering along the last axis of (C, h, w), about MindSpore's CPU op's at Cityscapes' 1024x2048
    (measured with the argmax: 0.46-0.49 s against 0.96-1.06 s and 0.42 s). Returns a (C, H, W) view."""
    r0, r1, fy = _bilinear_taps(int(size[0]), logits.shape[1])
    c0, c1, fx = _bilinear_taps(int(size[1]), logits.shape[2])
    pixels = np.ascontiguousarray(logits.transpose(1, 2, 0))  # (h, w, C)
    cols = pixels[:, c0] * (1 - fx)[None, :, None] + pixels[:, c1] * fx[None, :, None]
    return (cols[r0] * (1 - fy)[:, None, None] + cols[r1] * fy[:, None, None]).transpose(2, 0, 1)


def predict_mask(model, img: np.ndarray, out_size: Optional[Sequence[int]] = None, **kwargs) -> np.ndarray:
    """Class index per pixel (H, W) int32, resized to out_size (H, W) first if given."""
    logits = infer_logits(model, img, **kwargs)
    if out_size is not None and tuple(out_size) != tuple(logits.shape[1:]):
        logits = resize_logits(logits, out_size)
    return logits.argmax(axis=0).astype(np.int32)


def evaluate_seg(model, loader, num_classes: int, ignore_index: int = 255, all_reduce=None, log=None,
                 log_interval: int = 0, **kwargs) -> np.ndarray:
    """The confusion matrix of `model` over an eval loader (build_seg_eval_loader), summed over ranks when
    all_reduce is given. Sets the model to eval mode; kwargs: mode, crop_size, stride."""
    model.set_train(False)
    cm = np.zeros((num_classes, num_classes), np.int64)
    for n, (img, label, _) in enumerate(loader.create_tuple_iterator(num_epochs=1, output_numpy=True), 1):
        # A new eval pipeline's first batch installs MindData's SIGTERM handler (exit 0, no line); put the tool's
        # back before the forward, whose first call compiles and may keep the watchdog from doing it in time.
        keep_sigint()
        pred = predict_mask(model, img, out_size=label.shape, **kwargs)
        cm += confusion_matrix(pred, label, num_classes, ignore_index)
        if log and log_interval and n % log_interval == 0:
            log(f"evaluated {n} images")
    if all_reduce is not None:
        cm = _sum_counts(cm, all_reduce)
    return cm


def _sum_counts(cm: np.ndarray, all_reduce) -> np.ndarray:
    """Exact sum of int64 counts over ranks through a float32 all-reduce (what every backend has): each count
    (< 2**48) is split into three 16-bit parts, whose sums over <= 256 ranks stay within float32's exact-integer
    limit 2**24 (20-bit parts were exact only up to 16 ranks)."""
    if cm.max(initial=0) >= 2 ** 48:
        raise ValueError("confusion-matrix counts too large to all-reduce exactly")
    import mindspore as ms

    parts = ms.Tensor(np.stack([(cm >> s) & 0xFFFF for s in (0, 16, 32)]).astype(np.float32))
    summed = np.rint(all_reduce(parts).asnumpy()).astype(np.int64)
    return summed[0] + (summed[1] << 16) + (summed[2] << 32)
