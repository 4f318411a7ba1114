"""Training configuration: the key table, YAML + command-line parsing, and early validation.

Keys and defaults are mindcv's (its repository's `config.py`), so a recipe written for mindcv's train.py loads
unchanged; a few keys of older mindcv recipes are accepted too, and a few of ours are marked "(ours)".
`--key value` on the command line wins over the YAML file; values are read as YAML scalars (`--lr 1e-3`,
`--ema True`, `--scale "[0.08, 1.0]"`). A key nobody knows is an error naming the closest valid keys.
"""
import difflib
import os
import sys
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = ["ConfigError", "KEYS", "parse_config", "load_config", "validate", "format_help"]


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the value and the fix."""


# name: (default, kind, help). Kinds: int, float, bool, str, pair (two numbers), floats, ints, any.
# An int/float/str/pair key whose default is None is optional: `None`/`null` turns it off.
_IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
_IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
KEYS: Dict[str, Tuple[Any, str, str]] = {
    # system
    "mode": (0, "int", "0: GRAPH_MODE, 1: PYNATIVE_MODE"),
    "distribute": (False, "bool", "data-parallel training; launch with msrun (see scripts/run_distribute_8p.sh)"),
    "val_while_train": (False, "bool", "evaluate on the val split every val_interval epochs"),
    "val_interval": (1, "int", "epochs between evaluations"),
    "log_interval": (100, "int", "steps between log lines"),
    "seed": (42, "int", "seed for numpy, random, MindSpore and the data pipeline (the same on every rank)"),
    "device_target": ("Ascend", "str", "Ascend, GPU or CPU"),
    "jit_level": ("", "str", "(ours) graph compile level: '' (MindSpore picks), O0, O1, or O2 (Ascend only)"),
    # dataset
    "dataset": ("imagenet", "str", "'imagenet' (any ImageFolder tree: data_dir/train/<class>/*, data_dir/val/...) "
                                   "or 'demo' (the built-in procedural set, generated into data_dir on first use)"),
    "data_dir": ("./", "str", "dataset root"),
    "train_split": ("train", "str", "train split folder"),
    "val_split": ("val", "str", "validation split folder"),
    "dataset_download": (False, "bool", "mindcv's download switch; nothing is downloaded here, so only False"),
    "num_parallel_workers": (8, "int", "data pipeline workers per process"),
    "shuffle": (True, "bool", "shuffle the train set"),
    "num_samples": (None, "int", "use only this many train samples (None: all)"),
    "batch_size": (128, "int", "batch size per device (global batch = batch_size x number of devices)"),
    "drop_remainder": (True, "bool", "drop the last incomplete train batch"),
    "check_data": (False, "bool", "(ours) decode-check every image before training and stop on bad files"),
    # augmentation
    "image_resize": (224, "int", "train crop / eval image size"),
    "scale": ((0.08, 1.0), "pair", "random-resized-crop area range"),
    "ratio": ((0.75, 1.333), "pair", "random-resized-crop aspect range"),
    "hflip": (0.5, "float", "horizontal flip probability"),
    "vflip": (0.0, "float", "vertical flip probability"),
    "color_jitter": (0.4, "float", "color jitter strength (None: off)"),
    "interpolation": ("bilinear", "str", "resize interpolation"),
    "auto_augment": (None, "str", "e.g. randaug-m9-mstd0.5-inc1 (None: off)"),
    "aug_splits": (0, "int", "mindcv's augmentation splits (JSD); not supported here, keep 0"),
    "re_prob": (0.0, "float", "random erasing probability"),
    "re_scale": ((0.02, 0.33), "pair", "random erasing area range"),
    "re_ratio": ((0.3, 3.3), "pair", "random erasing aspect range"),
    "re_value": (0, "any", "random erasing fill value"),
    "re_max_attempts": (10, "int", "random erasing attempts"),
    "mean": (_IMAGENET_MEAN, "floats", "normalization mean (0-255 scale)"),
    "std": (_IMAGENET_STD, "floats", "normalization std (0-255 scale)"),
    "crop_pct": (0.875, "float", "eval: resize to image_resize / crop_pct, then center-crop image_resize"),
    "mixup": (0.0, "float", "mixup alpha (0: off)"),
    "cutmix": (0.0, "float", "cutmix alpha (0: off)"),
    "cutmix_prob": (1.0, "float", "probability of applying mixup/cutmix to a batch"),
    "aug_repeats": (0, "int", "repeated augmentation; not supported here, keep 0"),
    # model
    "model": ("mobilenet_v2_035_224", "str", "registered model name (import mindcv_ext adds repmlp_*, demo_repmlp)"),
    "num_classes": (None, "int", "classes (None: the number of class folders in the train split)"),
    "in_channels": (3, "int", "input channels"),
    "drop_rate": (None, "float", "dropout before the classifier"),
    "drop_path_rate": (None, "float", "stochastic depth"),
    "pretrained": (False, "bool", "start from the model's published weights"),
    "ckpt_path": ("", "str", "start from this checkpoint (weights); with resume_opt, continue its run"),
    "resume_opt": (False, "bool", "resume optimizer state, epoch, lr position, loss scale and EMA from ckpt_path"),
    "keep_checkpoint_max": (10, "int", "periodic checkpoints kept (best and latest are extra)"),
    "ckpt_save_dir": ("./ckpt", "str", "checkpoints, metrics.jsonl, curves.png and train.log go here"),
    "ckpt_save_interval": (1, "int", "epochs between periodic checkpoints"),
    "ckpt_save_policy": ("latest_k", "str", "which periodic checkpoints to keep: latest_k, top_k (by val top-1)"),
    "epoch_size": (90, "int", "epochs"),
    "dataset_sink_mode": (True, "bool", "accepted for mindcv recipes; steps always run one by one (see train.py)"),
    "ema": (False, "bool", "keep an exponential moving average of the weights; validation uses it"),
    "ema_decay": (0.9999, "float", "EMA decay (warmed up as decay * (1 - exp(-step / 2000)), as mindcv does)"),
    "clip_grad": (False, "bool", "clip gradients by global norm"),
    "clip_value": (15.0, "float", "global-norm clip threshold"),
    "layer_decay": (None, "float", "layer-wise lr decay (mindcv create_optimizer)"),
    "gradient_accumulation_steps": (1, "int", "not supported here, keep 1"),
    "save_rank_weights": (False, "bool", "(ours, for tests) every rank saves its final weights as "
                                         "ckpt_save_dir/rank_<id>_final.ckpt"),
    # optimizer
    "opt": ("adam", "str", "sgd, momentum, nesterov, adam, adamw, lion, nadam, adan, rmsprop, adagrad, lamb"),
    "momentum": (0.9, "float", "momentum"),
    "weight_decay": (1e-6, "float", "weight decay"),
    "use_nesterov": (False, "bool", "Nesterov momentum"),
    "weight_decay_filter": ("disable", "str", "disable, auto, or norm_and_bias (no decay on norm params and biases)"),
    "eps": (1e-10, "float", "optimizer epsilon (rmsprop)"),
    # scheduler
    "scheduler": ("cosine_decay", "str", "constant, cosine_decay, exponential_decay, polynomial_decay, step_decay, "
                                         "multi_step_decay, one_cycle, cyclic"),
    "lr": (0.001, "float", "peak learning rate"),
    "min_lr": (1e-6, "float", "final learning rate of cosine decay"),
    "warmup_epochs": (3, "int", "linear warmup epochs"),
    "warmup_factor": (0.0, "float", "warmup starts at lr * warmup_factor"),
    "decay_epochs": (100, "int", "cosine: epochs to reach min_lr; step_decay: epochs per decay"),
    "decay_rate": (0.9, "float", "decay factor"),
    "multi_step_decay_milestones": ([30, 60, 90], "ints", "milestones for multi_step_decay"),
    "lr_epoch_stair": (False, "bool", "change lr once per epoch instead of every step"),
    "num_cycles": (1, "int", "cosine / cyclic cycles"),
    "cycle_decay": (1.0, "float", "peak decay per cosine cycle"),
    # loss
    "loss": ("CE", "str", "CE or BCE"),
    "label_smoothing": (0.0, "float", "label smoothing"),
    "aux_factor": (0.0, "float", "auxiliary-logit loss factor"),
    "reduction": ("mean", "str", "loss reduction"),
    # mixed precision
    "amp_level": ("O0", "str", "O0 (fp32), O1, O2, O3"),
    "val_amp_level": ("O0", "str", "accepted for mindcv recipes; validation runs the trained network as cast"),
    "amp_cast_list": (None, "str", "mindcv's custom cast list, e.g. '[nn.Conv2d, nn.Dense]'"),
    "loss_scale_type": ("fixed", "str", "fixed or dynamic (dynamic needs Ascend or GPU)"),
    "loss_scale": (1.0, "float", "(initial) loss scale"),
    "drop_overflow_update": (False, "bool", "skip the update on overflow (implied by dynamic; Ascend/GPU only)"),
    "eval_shuffle": (False, "bool", "accepted for mindcv recipes; evaluation order does not change results"),
    # keys of older mindcv recipes
    "filter_bias_and_bn": (None, "bool", "older mindcv: True means weight_decay_filter norm_and_bias"),
    "dynamic_loss_scale": (None, "bool", "older mindcv: True means loss_scale_type dynamic"),
    "enable_modelarts": (False, "bool", "ModelArts cloud sync; not supported here, keep False"),
    "multi_data_url": ("/cache/data/", "str", "ModelArts only (ignored)"),
    "data_url": ("/cache/data/", "str", "ModelArts only (ignored)"),
    "ckpt_url": ("/cache/output/", "str", "ModelArts only (ignored)"),
    "train_url": ("/cache/output/", "str", "ModelArts only (ignored)"),
}

_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


# Names other trainers use for mindcv's keys; difflib cannot guess these.
_ALIASES = {"learning_rate": "lr", "epochs": "epoch_size", "num_epochs": "epoch_size", "optimizer": "opt",
            "image_size": "image_resize", "img_size": "image_resize", "input_size": "image_resize",
            "output_dir": "ckpt_save_dir", "save_dir": "ckpt_save_dir", "resume": "ckpt_path",
            "smoothing": "label_smoothing", "warmup": "warmup_epochs", "model_name": "model", "arch": "model",
            "workers": "num_parallel_workers", "wd": "weight_decay", "device": "device_target",
            "model_ema": "ema", "model_ema_decay": "ema_decay", "clip_grad_norm": "clip_value"}


def _suggest(key: str) -> str:
    close = ([_ALIASES[key]] if key in _ALIASES else []) + difflib.get_close_matches(key, KEYS, n=3, cutoff=0.5)
    close = list(dict.fromkeys(close))[:3]
    return f" Did you mean {', '.join(close)}?" if close else ""


def _coerce(key: str, value: Any, where: str) -> Any:
    default, kind, _ = KEYS[key]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
        if default is None or kind == "any":
            return None
        raise ConfigError(f"{key} cannot be None ({where}); its default is {default!r}.")
    bad = ConfigError(f"{key} must be {_KIND_TEXT[kind]}; got {value!r} ({where}).")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if kind == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind == "float":
        # YAML reads 1e-5 (no dot) as a string; mindcv's argparse converts it, so we do too.
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if kind == "str":
        return str(value)
    if kind in ("pair", "floats", "ints"):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise bad
        try:
            items = [int(v) if kind == "ints" else float(v) for v in value]
        except (TypeError, ValueError):
            raise bad from None
        if kind == "pair" and len(items) != 2:
            raise bad
        return tuple(items) if kind == "pair" else items
    return value


_KIND_TEXT = {"bool": "True or False", "int": "an integer", "float": "a number", "str": "a string",
              "pair": "two numbers, e.g. [0.08, 1.0]", "floats": "a list of numbers", "ints": "a list of integers",
              "any": "a value"}


def _read_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path!r}. Recipes live in configs/repmlp/.")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of key: value lines; got a {type(data).__name__}.")
    return data


def _split_cli(argv: Sequence[str]) -> Tuple[Optional[str], List[Tuple[str, Any]], bool]:
    """(config path, [(key, raw value)], wants help). `--key value`, `--key=value`; a bare `--flag` means True."""
    config, pairs, i, wants_help = None, [], 0, False
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            wants_help, i = True, i + 1
            continue
        if not arg.startswith("-"):
            raise ConfigError(f"Unexpected argument {arg!r}: options are --key value (e.g. --lr 0.001).")
        name, eq, value = arg.lstrip("-").partition("=")
        name = name.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or (nxt.startswith("--") and not _is_number(nxt)):
                value = True  # mindcv's bool flags take an optional value
                i += 1
            else:
                value, i = nxt, i + 2
        else:
            i += 1
        if name in ("c", "config"):
            config = value
        else:
            pairs.append((name, value))
    return config, pairs, wants_help


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_config(argv: Optional[Sequence[str]] = None) -> SimpleNamespace:
    """Defaults < YAML (--config) < command line. Raises ConfigError; does not validate values across keys."""
    argv = sys.argv[1:] if argv is None else argv
    config_path, pairs, wants_help = _split_cli(argv)
    if wants_help:
        print(format_help())
        raise SystemExit(0)
    values = {k: v[0] for k, v in KEYS.items()}
    if config_path:
        for key, value in _read_yaml(config_path).items():
            if key not in KEYS:
                raise ConfigError(f"Unknown key {key!r} in {config_path}.{_suggest(key)} "
                                  f"(`python train.py --help` lists the keys.)")
            values[key] = _coerce(key, value, f"in {config_path}")
    for key, raw in pairs:
        if key not in KEYS:
            raise ConfigError(f"Unknown option --{key}.{_suggest(key)} (`python train.py --help` lists the keys.)")
        value = raw if KEYS[key][1] == "str" or not isinstance(raw, str) else yaml.safe_load(raw)
        values[key] = _coerce(key, raw if isinstance(value, str) else value, f"--{key} on the command line")
    values["config"] = config_path or ""
    _apply_legacy_keys(values)
    return SimpleNamespace(**values)


def _apply_legacy_keys(v: Dict[str, Any]) -> None:
    # Older mindcv recipes say filter_bias_and_bn / dynamic_loss_scale; newer ones weight_decay_filter /
    # loss_scale_type. The newer key wins when both are set away from their defaults.
    if v["filter_bias_and_bn"] is True and v["weight_decay_filter"] == "disable":
        v["weight_decay_filter"] = "norm_and_bias"
    if v["dynamic_loss_scale"] is True and v["loss_scale_type"] == "fixed":
        v["loss_scale_type"] = "dynamic"


def _choice(cfg, key, choices, hint=""):
    value = getattr(cfg, key)
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}.{hint}")


def _at_least(cfg, key, low):
    if getattr(cfg, key) < low:
        raise ConfigError(f"{key} must be >= {low}; got {getattr(cfg, key)!r}.")


def _in_unit(cfg, key, closed_top=True):
    value = getattr(cfg, key)
    if value is not None and not (0.0 <= value <= 1.0 if closed_top else 0.0 <= value < 1.0):
        raise ConfigError(f"{key} must be in [0, 1{']' if closed_top else ')'}; got {value!r}.")


def validate(cfg: SimpleNamespace) -> SimpleNamespace:
    """Check values and their combinations before any work starts. Normalizes a few spellings in place."""
    _choice(cfg, "mode", (0, 1), " Use 0 for graph mode (fast) or 1 for PyNative (eager, for debugging).")
    cfg.device_target = {"ascend": "Ascend", "gpu": "GPU", "cpu": "CPU"}.get(str(cfg.device_target).lower(),
                                                                               cfg.device_target)
    _choice(cfg, "device_target", ("Ascend", "GPU", "CPU"))
    cfg.jit_level = (cfg.jit_level or "").upper()
    _choice(cfg, "jit_level", ("", "O0", "O1", "O2"))
    if cfg.jit_level == "O2" and cfg.device_target != "Ascend":
        raise ConfigError(f"jit_level O2 (the GE graph engine) exists only on Ascend; on {cfg.device_target} use "
                          f"--jit_level O0 or O1 (or leave it empty).")
    for key in ("amp_level", "val_amp_level"):
        setattr(cfg, key, str(getattr(cfg, key)).upper())
        _choice(cfg, key, ("O0", "O1", "O2", "O3"))
    cfg.loss_scale_type = str(cfg.loss_scale_type).lower()
    _choice(cfg, "loss_scale_type", ("fixed", "dynamic"),
            " ('auto' is not supported: this train.py always builds its own train step.)")
    if cfg.loss_scale < 1.0:
        raise ConfigError(f"loss_scale must be >= 1; got {cfg.loss_scale}.")
    if cfg.device_target == "CPU" and (cfg.loss_scale_type == "dynamic" or cfg.drop_overflow_update):
        what = "loss_scale_type: dynamic" if cfg.loss_scale_type == "dynamic" else "drop_overflow_update: True"
        raise ConfigError(f"{what} needs overflow detection, which MindSpore does not provide on CPU (its "
                          f"overflow-status kernel, NPUGetFloatStatusV2, does not exist there). On CPU use "
                          f"loss_scale_type: fixed, drop_overflow_update: False (and amp_level O0, where no loss "
                          f"scale is needed).")
    cfg.opt = str(cfg.opt).lower()
    _choice(cfg, "opt", ("sgd", "momentum", "nesterov", "adam", "adamw", "lion", "nadam", "adan", "rmsprop",
                         "adagrad", "lamb"))
    if cfg.opt == "lamb" and cfg.loss_scale != 1.0:
        raise ConfigError("opt lamb does not support a loss scale in mindcv; set loss_scale: 1.")
    _choice(cfg, "weight_decay_filter", ("disable", "auto", "norm_and_bias"))
    _choice(cfg, "scheduler", ("constant", "cosine_decay", "warmup_cosine_decay", "exponential_decay",
                               "polynomial_decay", "step_decay", "multi_step_decay", "one_cycle", "cyclic"))
    if cfg.scheduler in ("one_cycle", "cyclic") and (cfg.warmup_epochs > 0 or cfg.lr_epoch_stair):
        raise ConfigError(f"scheduler {cfg.scheduler} takes no warmup and no lr_epoch_stair (mindcv); set "
                          f"warmup_epochs: 0 and lr_epoch_stair: False.")
    cfg.loss = str(cfg.loss).upper()
    _choice(cfg, "loss", ("CE", "BCE"))
    _choice(cfg, "ckpt_save_policy", ("latest_k", "top_k"))
    if cfg.ckpt_save_policy == "top_k" and not cfg.val_while_train:
        raise ConfigError("ckpt_save_policy top_k ranks checkpoints by val top-1: set val_while_train: True.")
    for key, low in (("batch_size", 1), ("epoch_size", 1), ("log_interval", 1), ("val_interval", 1),
                     ("ckpt_save_interval", 1), ("keep_checkpoint_max", 1), ("num_parallel_workers", 1),
                     ("image_resize", 1), ("in_channels", 1), ("warmup_epochs", 0), ("decay_epochs", 0),
                     ("num_cycles", 1)):
        _at_least(cfg, key, low)
    if cfg.lr <= 0 or cfg.min_lr < 0 or cfg.min_lr > cfg.lr:
        raise ConfigError(f"Need 0 <= min_lr <= lr and lr > 0; got lr={cfg.lr}, min_lr={cfg.min_lr}.")
    if cfg.warmup_epochs > cfg.epoch_size:
        raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs}) is longer than the run (epoch_size "
                          f"{cfg.epoch_size}); lower warmup_epochs.")
    if cfg.num_classes is not None and cfg.num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (or None to count the class folders); got {cfg.num_classes}.")
    for key in ("label_smoothing", "drop_rate", "drop_path_rate"):
        _in_unit(cfg, key, closed_top=False)
    for key in ("hflip", "vflip", "re_prob", "cutmix_prob"):
        _in_unit(cfg, key)
    if not 0.0 < cfg.crop_pct <= 1.0:
        raise ConfigError(f"crop_pct must be in (0, 1]; got {cfg.crop_pct}.")
    if cfg.mixup < 0 or cfg.cutmix < 0:
        raise ConfigError(f"mixup and cutmix are Beta-distribution alphas >= 0 (0: off); got {cfg.mixup}, "
                          f"{cfg.cutmix}.")
    if cfg.ema and not 0.0 < cfg.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in (0, 1); got {cfg.ema_decay}.")
    if cfg.clip_grad and cfg.clip_value <= 0:
        raise ConfigError(f"clip_value must be > 0; got {cfg.clip_value}.")
    if cfg.resume_opt and not cfg.ckpt_path:
        raise ConfigError("resume_opt: True needs the checkpoint to resume: --ckpt_path <ckpt_save_dir>/latest.ckpt.")
    if cfg.ckpt_path and cfg.pretrained:
        raise ConfigError("pretrained and ckpt_path are exclusive (as in mindcv): drop one of them.")
    cfg.dataset = str(cfg.dataset).lower()
    _choice(cfg, "dataset", ("imagenet", "demo"),
            " Any ImageFolder tree (data_dir/train/<class>/*.jpg, data_dir/val/...) is dataset 'imagenet'; "
            "'demo' generates the built-in set.")
    unsupported = [("dataset_download", False, "nothing is downloaded; put the data in data_dir"),
                   ("enable_modelarts", False, "ModelArts sync is not part of this train.py"),
                   ("aug_splits", 0, "JSD augmentation splits are not implemented"),
                   ("aug_repeats", 0, "repeated augmentation is not implemented"),
                   ("gradient_accumulation_steps", 1, "gradient accumulation is not implemented; raise batch_size "
                                                      "or the number of devices instead")]
    for key, ok, why in unsupported:
        if getattr(cfg, key) not in (ok, None) and not (key == "aug_repeats" and getattr(cfg, key) == 1):
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not supported here ({why}); set {key}: {ok!r}.")
    return cfg


def load_config(argv: Optional[Sequence[str]] = None) -> SimpleNamespace:
    return validate(parse_config(argv))


def format_help() -> str:
    lines = ["usage: python train.py --config RECIPE.yaml [--key value ...]", "",
             "Keys (mindcv's names; YAML values, the command line wins):"]
    for key, (default, kind, text) in KEYS.items():
        lines.append(f"  --{key:<28} {text} [default: {default!r}]")
    return "\n".join(lines)
