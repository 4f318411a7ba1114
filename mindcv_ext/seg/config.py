"""Keys of train_seg.py / validate_seg.py / scripts/predict_seg.py, parsed by mindcv_ext/config.py's parse_config.

One table for the three tools, so `-c <training recipe>` reads unchanged in validate_seg.py and predict_seg.py.
Keys shared with train.py keep its names, defaults and help (taken from KEYS, not copied); the segmentation
ones follow mmsegmentation's config vocabulary (crop_size, img_scale, ratio_range, cat_max_ratio, total iters).
"""
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from ..config import (KEYS, ConfigError, at_least, check_precision_and_optimizer_keys, check_runtime_keys, choice,
                      fit_workers, in_unit, parse_config, recipe_names)
from ..onnx_runtime import is_onnx
from ..training.runtime import LAUNCHER_VARS
from .data import LAYOUTS
from .demo import SEG_DEMO_CLASSES as DEMO_CLASSES

__all__ = ["SEG_KEYS", "SEG_TRAIN_KEYS", "SEG_EVAL_KEYS", "EVAL_ONLY", "EVAL_OWN", "load_seg_config",
           "load_seg_eval_config", "DEMO_CLASSES"]

_SHARED = ("mode", "distribute", "log_interval", "seed", "device_target", "jit_level", "data_dir",
           "num_parallel_workers", "shuffle", "batch_size", "hflip", "mean", "std", "drop_path_rate", "ckpt_path",
           "resume_opt", "keep_checkpoint_max", "ckpt_save_dir", "clip_grad", "clip_value", "layer_decay", "opt",
           "momentum", "weight_decay", "use_nesterov", "weight_decay_filter", "eps", "lr", "min_lr", "amp_level",
           "amp_cast_list", "loss_scale_type", "loss_scale", "drop_overflow_update",
           "filter_bias_and_bn", "dynamic_loss_scale")  # the last two: parse_config's legacy-key step reads them

SEG_KEYS: Dict[str, Tuple[Any, str, str]] = {k: KEYS[k] for k in _SHARED}
# Segmentation's own defaults where train.py's would not fit: mmseg's 2 images per card (classification's 128 at
# a 512x1024 crop fills any machine's memory), and the files a run writes.
SEG_KEYS.update({
    "batch_size": (2, "int", "images per device (mmseg: 2 per card; global batch = batch_size x devices)"),
    "ckpt_save_dir": ("./outputs/seg", "str", "latest.ckpt, best.ckpt, periodic checkpoints, metrics.jsonl, "
                                              "curves.png and train.log go here"),
})
SEG_KEYS.update({
    "dataset": ("cityscapes", "str", "cityscapes, ade20k (mmseg's layouts, see docs/segmentation.md) or demo (the "
                                     "generated Cityscapes-layout set, made in data_dir on first use)"),
    "train_split": (None, "str", "train split folder (default: train for cityscapes, training for ade20k)"),
    "val_split": (None, "str", "validation split folder (default: val / validation)"),
    "num_classes": (None, "int", f"classes (default: the dataset's: 19 cityscapes, 150 ade20k, "
                                 f"{len(DEMO_CLASSES)} demo)"),
    "check_data": (True, "bool", "open every image/label pair before work and stop on the first bad one"),
    "backbone": ("", "str", "RepMLPNet variant for the encoder, e.g. repmlp_t256 (required for training)"),
    "backbone_ckpt": ("", "str", "encoder weights (any format/layout mindcv_ext.weights reads; a classifier is "
                                 "left out). Empty: random init"),
    "gelu_approximate": (None, "bool", "tanh GELU in the encoder (training: default False; True only for "
                                       "mindcv's published t224 weights). Checkpoints record it: evaluation reads it "
                                       "from there"),
    "sync_bn": (False, "bool", "SyncBatchNorm across the devices of a distributed run (mmseg's SyncBN; Ascend/GPU; "
                               "a single process uses plain BatchNorm)"),
    "head": ("upernet", "str", "decode head: upernet (the paper's) or fpn (Semantic FPN, lighter)"),
    "head_channels": (None, "int", "decode head width (default: UPerNet 512, FPN 128, as mmseg)"),
    "aux_head": (True, "bool", "FCN auxiliary head on stage 3 (training only; mmseg's UPerNet configs have it)"),
    "aux_channels": (256, "int", "auxiliary head width"),
    "aux_weight": (0.4, "float", "auxiliary loss weight"),
    "dropout": (0.1, "float", "dropout before the classifiers"),
    "img_scale": ((2048, 1024), "pair", "RandomResize base scale (w, h): ratio_range times it, aspect kept"),
    "ratio_range": ((0.5, 2.0), "pair", "RandomResize ratio range"),
    "crop_size": ((512, 1024), "pair", "training crop (h, w); multiples of the backbone's native size"),
    "cat_max_ratio": (0.75, "float", "RandomCrop: retry (up to 10 times) crops where one class covers more"),
    "photometric": (True, "bool", "PhotoMetricDistortion (brightness, contrast, saturation, hue)"),
    "total_iters": (80000, "int", "training iterations (optimizer steps)"),
    "val_interval": (8000, "int", "iterations between evaluations and checkpoints (latest.ckpt, periodic)"),
    "val_while_train": (True, "bool", "evaluate every val_interval iterations; best.ckpt by mIoU"),
    "warmup_iters": (0, "int", "linear warmup iterations (from lr * warmup_ratio)"),
    "warmup_ratio": (1e-6, "float", "warmup start, as a fraction of lr"),
    "power": (0.9, "float", "poly decay power: lr = (lr - min_lr) * (1 - iter / total_iters) ** power + min_lr"),
    "eval_mode": ("whole", "str", "whole (pad to the native size's multiple, one pass) or slide (windows)"),
    "eval_scale": (None, "pair", "resize eval images (w, h), aspect kept, before inference (default: img_scale); "
                                 "predictions are scored at the label's own size"),
    "eval_crop": (None, "pair", "slide: window (h, w) (default: crop_size)"),
    "eval_stride": (None, "pair", "slide: stride (h, w) (default: 2/3 of the window, mmseg's 341x682 for 512x1024)"),
    # evaluation / prediction tools
    "save_deploy": ("", "str", "validate_seg.py: re-parameterize, save the deploy-form checkpoint here, and "
                               "evaluate that form"),
    "reparameterize": (False, "bool", "validate/predict: re-parameterize a train-form checkpoint before running"),
    "image_path": ("", "str", "predict_seg.py: an image or a folder of images"),
    "output": ("", "str", "predict_seg.py: folder for the masks (default: next to each input)"),
    "overlay": (0.5, "float", "predict_seg.py: also write <name>_overlay.png blending the mask over the image "
                              "with this weight (0: off)"),
    "overwrite": (False, "bool", "replace existing outputs this tool did not write (masks, --save_deploy); a run's "
                                 "training state (latest.ckpt) is never replaced"),
})
# Keys only the evaluation tools read: accepted there (so one recipe serves all three), not by train_seg.py.
EVAL_ONLY = ("save_deploy", "reparameterize", "image_path", "output", "overlay", "overwrite")
SEG_TRAIN_KEYS = {k: v for k, v in SEG_KEYS.items() if k not in EVAL_ONLY}
SEG_TRAIN_KEYS.update({  # train_seg.py's ckpt_path only continues a run (encoder weights: backbone_ckpt)
    "ckpt_path": ("", "str", "continue a run: its <ckpt_save_dir>/latest.ckpt, with --resume_opt True"),
    "resume_opt": (False, "bool", "with ckpt_path: restore the optimizer state, iteration, lr position and loss "
                                  "scale"),
})
# train_seg.py's --help lists these first; the keys it shares with train.py follow.
_TRAIN_FIRST = ["backbone", "backbone_ckpt", "dataset", "data_dir", "num_classes", "batch_size", "crop_size",
                "total_iters", "val_interval", "ckpt_save_dir", "ckpt_path", "resume_opt"]
TRAIN_OWN = _TRAIN_FIRST + [k for k in SEG_TRAIN_KEYS if k not in _SHARED and k not in _TRAIN_FIRST]
_ALIASES = {"iters": "total_iters", "max_iters": "total_iters", "model": "backbone", "pretrained": "backbone_ckpt",
            "decode_head": "head", "crop": "crop_size", "split": "val_split", "learning_rate": "lr",
            "output_dir": "ckpt_save_dir", "work_dir": "ckpt_save_dir"}



def _ints(cfg, key):
    value = getattr(cfg, key)
    if value is None:
        return None
    if any(v != int(v) or v < 1 for v in value):
        raise ConfigError(f"{key} must be two positive integers; got {list(value)}.")
    setattr(cfg, key, (int(value[0]), int(value[1])))


def _dataset_defaults(cfg) -> None:
    cfg.dataset = str(cfg.dataset).lower()
    choice(cfg, "dataset", ("cityscapes", "ade20k", "demo"))
    cfg.layout = "cityscapes" if cfg.dataset == "demo" else cfg.dataset
    _, _, _, _, train_split, val_split, classes, reduce_zero = LAYOUTS[cfg.layout]
    cfg.train_split = cfg.train_split or train_split
    cfg.val_split = cfg.val_split or val_split
    cfg.reduce_zero_label = reduce_zero
    default_classes = len(DEMO_CLASSES) if cfg.dataset == "demo" else classes
    if cfg.num_classes is None:  # only None means "the dataset's": 0 is a value, and refused below
        cfg.num_classes = default_classes
    if not 2 <= cfg.num_classes <= 255:
        raise ConfigError(f"num_classes must be in 2..255 (255 is the ignore index); got {cfg.num_classes}. Leave "
                          f"it out for the dataset's {default_classes}.")
    if cfg.dataset == "cityscapes" and cfg.num_classes == 19:
        from .data import CITYSCAPES_CLASSES
        cfg.class_names = list(CITYSCAPES_CLASSES)
    elif cfg.dataset == "ade20k" and cfg.num_classes == 150:
        from .data import ADE20K_CLASSES
        cfg.class_names = list(ADE20K_CLASSES)
    elif cfg.dataset == "demo":
        cfg.class_names = list(DEMO_CLASSES[:cfg.num_classes])
    else:
        cfg.class_names = [f"class_{i}" for i in range(cfg.num_classes)]


def _common(cfg, evaluating: bool = False, native: Optional[int] = None) -> None:
    """`native`: the encoder's native size when known (training); the evaluation tools learn it from the checkpoint,
    where seg.inference.resolve_test_cfg checks the window against it."""
    check_runtime_keys(cfg, evaluating)
    for key in ("img_scale", "crop_size", "eval_scale", "eval_crop", "eval_stride"):
        _ints(cfg, key)
    if native and (cfg.crop_size[0] % native or cfg.crop_size[1] % native):  # before the eval window it defaults
        raise ConfigError(f"crop_size {list(cfg.crop_size)} must be multiples of {cfg.backbone}'s native size "
                          f"{native} in height and width (its FCs are built for {native}x{native} partitions), "
                          f"e.g. [{2 * native}, {4 * native}].")
    cfg.eval_scale = cfg.eval_scale or cfg.img_scale
    cfg.eval_crop = cfg.eval_crop or cfg.crop_size  # the evaluation tools may know neither: the checkpoint's then
    choice(cfg, "eval_mode", ("whole", "slide"))
    if cfg.eval_crop:
        from .inference import check_slide, default_stride  # the inference API's window check, before any work

        cfg.eval_stride = cfg.eval_stride or default_stride(cfg.eval_crop)
        if cfg.eval_mode == "slide":  # whole never uses the window: a value it ignores stops nothing
            try:
                check_slide(cfg.eval_crop, cfg.eval_stride, native)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    for key, low in (("mean", -math.inf), ("std", 0)):  # per RGB channel; a std of 0 divides by zero (NaN masks)
        value = getattr(cfg, key)
        if len(value) != 3 or not all(math.isfinite(v) and v > low for v in value):
            need = " > 0" if low == 0 else ""
            raise ConfigError(f"{key} must be 3 finite numbers{need} (R, G, B, 0-255 scale); got {list(value)}. Leave "
                              f"it out for ImageNet's.")
    for key, low in (("num_parallel_workers", 1), ("log_interval", 1), ("batch_size", 1)):
        at_least(cfg, key, low)
    cfg.notes = fit_workers(cfg)
    _dataset_defaults(cfg)


def _native(backbone: str) -> int:
    from ..models.repmlp import ARCHS
    if backbone not in ARCHS:
        raise ConfigError(f"backbone must be a RepMLPNet variant ({', '.join(ARCHS)}); got {backbone!r}.")
    return ARCHS[backbone]["image_size"]


def load_seg_config(argv: Optional[Sequence[str]] = None) -> Any:
    """train_seg.py's configuration, checked before any work."""
    cfg = parse_config(argv, SEG_TRAIN_KEYS, _ALIASES, "train_seg.py", own=TRAIN_OWN)
    if cfg.gelu_approximate is None:
        cfg.gelu_approximate = False  # the authors' and this project's encoders: exact (erf) GELU
    if not cfg.backbone:
        raise ConfigError("train_seg.py needs a recipe and a backbone: python train_seg.py --config "
                          "configs/seg/<recipe>.yaml (recipes: " + (", ".join(recipe_names("seg")) or "none found")
                          + ").")
    _common(cfg, native=_native(cfg.backbone))
    cfg.head = str(cfg.head).lower()
    from .model import HEADS  # here: the evaluation tools' config (predict_seg on an .onnx file) needs no MindSpore
    choice(cfg, "head", HEADS)
    for key, low in (("total_iters", 1), ("val_interval", 1), ("keep_checkpoint_max", 1), ("warmup_iters", 0),
                     ("aux_channels", 1), ("aux_weight", 0)):
        at_least(cfg, key, low)
    if cfg.head_channels is not None:  # None: the head's default width
        at_least(cfg, "head_channels", 1)
    in_unit(cfg, "warmup_ratio")
    if cfg.total_iters % cfg.val_interval:
        raise ConfigError(f"total_iters ({cfg.total_iters}) must be a multiple of val_interval ({cfg.val_interval}): "
                          f"checkpoints are written every val_interval iterations and a run resumes from them.")
    if cfg.warmup_iters >= cfg.total_iters:
        raise ConfigError(f"warmup_iters ({cfg.warmup_iters}) must be less than total_iters ({cfg.total_iters}).")
    if cfg.power <= 0:
        raise ConfigError(f"power must be > 0; got {cfg.power}.")
    if not 0 < cfg.cat_max_ratio <= 1:
        raise ConfigError(f"cat_max_ratio must be in (0, 1] (1: off); got {cfg.cat_max_ratio}.")
    if not 0 < cfg.ratio_range[0] <= cfg.ratio_range[1]:
        raise ConfigError(f"ratio_range must be [low, high] with 0 < low <= high; got {list(cfg.ratio_range)}.")
    in_unit(cfg, "dropout", closed_top=False)
    in_unit(cfg, "hflip")
    check_precision_and_optimizer_keys(cfg)
    if cfg.ckpt_path and not cfg.resume_opt:
        raise ConfigError("train_seg.py's ckpt_path resumes a run (with --resume_opt True); to start from "
                          "encoder weights use --backbone_ckpt.")
    for key in ("ckpt_path", "backbone_ckpt"):
        path = getattr(cfg, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{key} {path!r} is not a file (relative paths start at {os.getcwd()}).")
    return cfg


# The evaluation tools' keys, listed first by their --help (each reads what it lists; the rest of a training recipe
# is accepted so -c reads unchanged, and refused on the command line, where it would mean nothing).
_EVAL_COMMON = ["ckpt_path", "eval_mode", "eval_scale", "eval_crop", "eval_stride", "img_scale", "crop_size",
                "mean", "std", "reparameterize", "gelu_approximate", "overwrite", "device_target", "mode",
                "jit_level"]
EVAL_OWN = {
    "validate_seg.py": ["ckpt_path", "dataset", "data_dir", "val_split", "num_classes", "check_data", "save_deploy",
                        *_EVAL_COMMON, "distribute", "num_parallel_workers", "log_interval"],
    "predict_seg.py": ["ckpt_path", "image_path", "output", "overlay", *_EVAL_COMMON],
}
# Without a recipe the evaluation tools take no training-size default (Cityscapes' 2048x1024 scale upsampled the
# demo's 256x128 images 8x, mIoU 16.60 where the recipe gives 68): images keep their size, the window is the
# training crop the checkpoint records (seg.inference.resolve_test_cfg).
SEG_EVAL_KEYS = dict(SEG_KEYS, img_scale=(None, "pair", "eval_scale's default (a recipe's RandomResize scale); "
                                                        "none: images at their own size"),
                     crop_size=(None, "pair", "eval_crop's default (a recipe's training crop); none: the crop the "
                                              "checkpoint records"),
                     ckpt_path=("", "str", "a train_seg.py checkpoint, train or deploy form (best.ckpt, or what "
                                           "--save_deploy wrote); the model is read from it (required)"))


def load_seg_eval_config(argv: Optional[Sequence[str]] = None, prog: str = "validate_seg.py") -> Any:
    """validate_seg.py / predict_seg.py: a training recipe reads unchanged (its training-only keys unused); the
    model, and the eval window when no recipe gives one, are read from the checkpoint. Nothing is created here."""
    own = EVAL_OWN[prog]
    unused = [k for k in SEG_EVAL_KEYS if k not in own]
    cfg = parse_config(argv, SEG_EVAL_KEYS, _ALIASES, prog, own=own, unused=unused)
    given_unused = [k for k in cfg._given if k in unused]
    if given_unused:
        # the tool that reads this key: the other evaluation tool, else train_seg.py
        other = next((p for p, keys in EVAL_OWN.items() if given_unused[0] in keys), "train_seg.py")
        run = "scripts/" + prog if prog == "predict_seg.py" else prog
        raise ConfigError(f"--{given_unused[0]} is {other}'s; {prog} does not use it (`python {run} --help` lists "
                          f"its keys).")
    if not cfg.ckpt_path:
        raise ConfigError(f"{prog} needs --ckpt_path (a checkpoint written by train_seg.py, train or deploy form).")
    if not os.path.isfile(cfg.ckpt_path):
        raise ConfigError(f"checkpoint not found: {cfg.ckpt_path!r}; pass best.ckpt (or latest.ckpt) of a "
                          f"train_seg.py run.")
    if is_onnx(cfg.ckpt_path):  # scripts/export.py's deploy-form file: nothing left to fuse
        asked = ["save_deploy"] * bool(cfg.save_deploy) + [k for k in ("reparameterize", "gelu_approximate")
                                                            if k in cfg._given]  # a recipe's: not the user's ask
        if asked:
            raise ConfigError(f"--{asked[0]} does not apply to {cfg.ckpt_path}: an .onnx file is already a deploy "
                              f"file (re-parameterized, GELU fixed at export); drop --{asked[0]}, or pass the "
                              f".ckpt it was exported from.")
    notes = []
    if "device_target" not in cfg._given and str(cfg.device_target).lower() == "ascend" and not _has_ascend():
        cfg.device_target = "CPU"  # a training recipe's device (or the default) on a machine without it
        if cfg.config:
            notes.append(f"{cfg.config}'s device_target Ascend is not available here: evaluating on CPU")
    if cfg.distribute and "distribute" not in cfg._given and not any(v in os.environ for v in LAUNCHER_VARS):
        cfg.distribute = False  # a training recipe's msrun setting, evaluated without msrun: one process
    _common(cfg, evaluating=True)
    cfg.notes = notes + cfg.notes
    if cfg.save_deploy:  # a directory, a file as parent, a read-only place, an unreadable suffix: refused now
        from ..checkpoint import check_output_path
        check_output_path(cfg.save_deploy, "--save_deploy", (".ckpt", ".safetensors"), tool=prog,
                          overwrite=cfg.overwrite)
    if not 0.0 <= cfg.overlay <= 1.0:
        raise ConfigError(f"overlay must be in [0, 1]; got {cfg.overlay}.")
    return cfg


def _has_ascend() -> bool:
    try:
        import mindspore as ms
        return "ascend" in str(ms.get_context("device_target")).lower()
    except Exception:  # noqa: BLE001
        return False
