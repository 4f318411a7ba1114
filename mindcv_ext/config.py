"""The configuration machinery every tool shares: mindcv's key table, YAML recipe + command-line parsing, --help,
and the checks every tool makes the same way. Each tool's own keys and checks live with the tool
(training/config.py: train.py, validate.py, infer.py; seg/config.py: the segmentation tools).

Keys and defaults are mindcv's (its repository's `config.py`), so a recipe written for mindcv's train.py loads
unchanged; a few keys of older mindcv recipes are accepted too, and a few of ours are marked "(ours)".
`--key value` on the command line wins over the YAML file; values are read as YAML scalars (`--lr 1e-3`,
`--ema True`, `--scale "[0.08, 1.0]"`). A key nobody knows is an error naming the closest valid keys.
"""
import difflib
import math
import os
import re
import sys
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = ["ConfigError", "KEYS", "IMAGENET_MEAN", "IMAGENET_STD", "parse_config", "split_cli", "format_help",
           "recipe_names", "choice", "at_least", "in_unit", "fit_workers", "check_runtime_keys",
           "check_precision_and_optimizer_keys"]

class ConfigError(ValueError):
    """A configuration problem; the message names the key, the value and the fix."""


# name: (default, kind, help). Kinds: int, float, bool, str, pair (two numbers), floats, ints, any.
# An int/float/str/pair key whose default is None is optional: `None`/`null` turns it off.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # the one copy (seg.data, seg.inference read it)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
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
    "mean": (list(IMAGENET_MEAN), "floats", "normalization mean (0-255 scale)"),
    "std": (list(IMAGENET_STD), "floats", "normalization std (0-255 scale)"),
    "crop_pct": (0.875, "float", "eval: resize to image_resize / crop_pct, then center-crop image_resize"),
    "mixup": (0.0, "float", "mixup alpha (0: off)"),
    "cutmix": (0.0, "float", "cutmix alpha (0: off)"),
    "cutmix_prob": (1.0, "float", "probability of applying mixup/cutmix to a batch"),
    "aug_repeats": (0, "int", "repeated augmentation; not supported here, keep 0"),
    # model
    # Required (mindcv's default, mobilenet_v2_035_224, would train another network without a word).
    "model": ("", "str", "registered model name, required (import mindcv_ext adds repmlp_*, demo_repmlp)"),
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


def _suggest(key: str, table) -> str:
    # from the tool's own table: a segmentation tool must not suggest a classification-only key
    close = [_ALIASES[key]] if key in _ALIASES else []
    close = [k for k in close if k in table] + difflib.get_close_matches(key, table, n=3, cutoff=0.5)
    close = list(dict.fromkeys(close))[:3]
    return f" Did you mean {', '.join(close)}?" if close else ""


def _coerce(key: str, value: Any, where: str, table=None) -> Any:
    default, kind, _ = (table or KEYS)[key]
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
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        return _finite(key, number, value, where)
    if kind == "str":
        return str(value)
    if kind in ("pair", "floats", "ints"):
        if isinstance(value, str):
            value = _yaml_value(value, f"{key} ({where})")
        if not isinstance(value, (list, tuple)):
            raise bad
        try:
            items = [int(v) if kind == "ints" else _finite(key, float(v), value, where) for v in value]
        except ConfigError:  # a nan/inf item: its own message
            raise
        except (TypeError, ValueError):
            raise bad from None
        if kind == "pair" and len(items) != 2:
            raise bad
        return tuple(items) if kind == "pair" else items
    return value


def _finite(key: str, number: float, value: Any, where: str) -> float:
    # YAML reads .nan / .inf (and the command line nan / inf) as floats; no key means anything by them.
    if not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number; got {value!r} ({where}).")
    return number


_KIND_TEXT = {"bool": "True or False", "int": "an integer", "float": "a number", "str": "a string",
              "pair": "two numbers, e.g. [0.08, 1.0]", "floats": "a list of numbers", "ints": "a list of integers",
              "any": "a value"}


class _RecipeLoader(yaml.SafeLoader):
    """safe_load for recipes, which are flat `key: value` files. Refused, with the line: a key set twice (YAML keeps
    the last without a word), a key YAML reads as something other than a name (`yes:` is True, `1:` an int), and
    anchors / aliases: a recipe needs none, and nested aliases ("billion laughs") expand to gigabytes when a value
    is turned into a string. Aliases are refused while the document is composed, before anything is built."""

    def __init__(self, stream, path: str):
        super().__init__(stream)
        self.path = path

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"{self.path} line {event.start_mark.line + 1}: YAML anchors and aliases (&name, *name) "
                              f"are not accepted in a recipe, which is a flat file of key: value lines; write the "
                              f"value out.")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                written = key_node.value if isinstance(key_node, yaml.ScalarNode) else "written as a list or mapping"
                raise ConfigError(f"{self.path} line {line}: the key {written or '(empty)'} is read by YAML as "
                                  f"{key!r}, not a key name; recipe keys are names such as lr or epoch_size (`--help` "
                                  f"lists them).")
            if key in seen:
                raise ConfigError(f"{self.path}: {key} is set twice, on lines {seen[key]} and {line} (YAML would "
                                  f"silently keep the last); keep one of them.")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _yaml_value(text: str, where: str) -> Any:
    """One value written as YAML (`--lr 1e-3`, `--scale "[0.08, 1.0]"`), under the recipe loader's rules."""
    loader = _RecipeLoader(text, where)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: {text!r} is not a valid value ({problem}); quote lists, e.g. "
                          f"\"[0.08, 1.0]\".") from None
    finally:
        loader.dispose()


def _read_yaml(path: str) -> Dict[str, Any]:
    if os.path.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml")))
        raise ConfigError(f"--config {path} is a directory; pass a recipe file, e.g. --config "
                          f"{os.path.join(path, inside[0])}." if inside else
                          f"--config {path} is a directory; pass a recipe file (the shipped ones are in "
                          f"configs/repmlp/: {', '.join(recipe_names()) or 'none found'}).")
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path!r}. Recipes live in configs/repmlp/ (classification) and "
                          f"configs/seg/ (segmentation).")
    try:
        with open(path, encoding="utf-8") as f:
            loader = _RecipeLoader(f, path)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except yaml.MarkedYAMLError as e:  # one line: where, and what the parser says
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(str(t) for t in (e.context, e.problem) if t)
        raise ConfigError(f"{path}{where} is not valid YAML: {what}.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it "
                          f"as UTF-8.") from None
    except OSError as e:
        raise ConfigError(f"Cannot read {path}: {e.strerror or e}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of key: value lines; got a {type(data).__name__}.")
    return data


def split_cli(argv: Sequence[str]) -> Tuple[Optional[str], List[Tuple[str, Any]], bool]:
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


def parse_config(argv: Optional[Sequence[str]] = None, table: Optional[Dict[str, Tuple[Any, str, str]]] = None,
                 aliases: Optional[Dict[str, str]] = None, prog: str = "train.py",
                 own: Optional[Sequence[str]] = None, unused: Sequence[str] = ()) -> SimpleNamespace:
    """Defaults < YAML (--config) < command line. Raises ConfigError; does not validate values across keys.

    `table` replaces KEYS (validate.py and infer.py add their own keys to the training ones, so a training recipe
    reads unchanged there); `aliases` maps other option names to keys (e.g. validate.py's old --split); `own`
    names the tool's own keys, which --help lists first; `unused` the recipe keys a tool accepts and does not use,
    which --help names in one line."""
    table = table or KEYS
    aliases = aliases or {}
    argv = sys.argv[1:] if argv is None else argv
    config_path, pairs, wants_help = split_cli(argv)
    if wants_help:
        print(format_help(table, prog, own, unused))
        raise SystemExit(0)
    values = {k: v[0] for k, v in table.items()}
    if config_path:
        for key, value in _read_yaml(config_path).items():
            if key not in table:
                raise ConfigError(f"Unknown key {key!r} in {config_path}.{_suggest(key, table)} "
                                  f"(`python {prog} --help` lists the keys.)")
            values[key] = _coerce(key, value, f"in {config_path}", table)
    for key, raw in pairs:
        key = aliases.get(key, key)
        if key not in table:
            raise ConfigError(f"Unknown option --{key}.{_suggest(key, table)} (`python {prog} --help` lists the keys.)")
        value = raw if table[key][1] == "str" or not isinstance(raw, str) else _yaml_value(raw, f"--{key}")
        values[key] = _coerce(key, raw if isinstance(value, str) else value, f"--{key} on the command line", table)
    values["config"] = config_path or ""
    values["_given"] = sorted({aliases.get(k, k) for k, _ in pairs})  # what the command line set explicitly
    _apply_legacy_keys(values)
    return SimpleNamespace(**values)


def _apply_legacy_keys(v: Dict[str, Any]) -> None:
    # Older mindcv recipes say filter_bias_and_bn / dynamic_loss_scale; newer ones weight_decay_filter /
    # loss_scale_type. The newer key wins when both are set away from their defaults.
    if v["filter_bias_and_bn"] is True and v["weight_decay_filter"] == "disable":
        v["weight_decay_filter"] = "norm_and_bias"
    if v["dynamic_loss_scale"] is True and v["loss_scale_type"] == "fixed":
        v["loss_scale_type"] = "dynamic"


def choice(cfg, key, choices, hint=""):

    value = getattr(cfg, key)
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}.{hint}")


def at_least(cfg, key, low):
    if getattr(cfg, key) < low:
        raise ConfigError(f"{key} must be >= {low}; got {getattr(cfg, key)!r}.")


def in_unit(cfg, key, closed_top=True):
    value = getattr(cfg, key)
    if value is not None and not (0.0 <= value <= 1.0 if closed_top else 0.0 <= value < 1.0):
        raise ConfigError(f"{key} must be in [0, 1{']' if closed_top else ')'}; got {value!r}.")


def fit_workers(cfg) -> List[str]:
    """Recipes ask for 8 data workers (Ascend servers); MindSpore refuses more than the machine's cores
    ("num_parallel_workers exceeds the boundary"), so a recipe tried on a laptop would stop there."""
    cores = os.cpu_count() or 1
    if cfg.num_parallel_workers <= cores:
        return []
    asked, cfg.num_parallel_workers = cfg.num_parallel_workers, cores
    return [f"num_parallel_workers {asked} is more than this machine's {cores} cores (MindSpore refuses that); "
            f"using {cores}."]

def check_runtime_keys(cfg, evaluating: bool = False) -> None:
    """mode, device_target and jit_level, the same for every tool (spellings normalized in place). A training
    recipe's Ascend-only jit_level O2 is refused for training elsewhere and dropped when evaluating elsewhere."""
    choice(cfg, "mode", (0, 1), " Use 0 for graph mode (fast) or 1 for PyNative (eager, for debugging).")
    cfg.device_target = {"ascend": "Ascend", "gpu": "GPU", "cpu": "CPU"}.get(str(cfg.device_target).lower(),
                                                                               cfg.device_target)
    choice(cfg, "device_target", ("Ascend", "GPU", "CPU"))
    cfg.jit_level = (cfg.jit_level or "").upper()
    choice(cfg, "jit_level", ("", "O0", "O1", "O2"))
    if cfg.jit_level == "O2" and cfg.device_target != "Ascend":
        if evaluating:
            cfg.jit_level = ""
            return
        raise ConfigError(f"jit_level O2 (the GE graph engine) exists only on Ascend; on {cfg.device_target} use "
                          f"--jit_level O0 or O1 (or leave it empty).")


def check_precision_and_optimizer_keys(cfg) -> None:
    """amp_level, the loss scale, amp_cast_list, the optimizer, lr / min_lr, gradient clipping and resume_opt, the
    same for every training tool (train.py, train_seg.py); spellings normalized in place. Call after
    check_runtime_keys (the CPU check needs the device)."""
    for key in ("amp_level", "val_amp_level"):
        if hasattr(cfg, key):
            setattr(cfg, key, str(getattr(cfg, key)).upper())
            choice(cfg, key, ("O0", "O1", "O2", "O3"))
    cfg.loss_scale_type = str(cfg.loss_scale_type).lower()
    choice(cfg, "loss_scale_type", ("fixed", "dynamic"),
           " ('auto' is not supported: the training tools always build their own train step.)")
    if cfg.loss_scale < 1.0:
        raise ConfigError(f"loss_scale must be >= 1; got {cfg.loss_scale}.")
    if cfg.device_target == "CPU" and (cfg.loss_scale_type == "dynamic" or cfg.drop_overflow_update):
        what = "loss_scale_type: dynamic" if cfg.loss_scale_type == "dynamic" else "drop_overflow_update: True"
        raise ConfigError(f"{what} needs overflow detection, which MindSpore does not provide on CPU (its "
                          f"overflow-status kernel, NPUGetFloatStatusV2, does not exist there). On CPU use "
                          f"loss_scale_type: fixed, drop_overflow_update: False (and amp_level O0, where no loss "
                          f"scale is needed).")
    if cfg.amp_cast_list is not None:
        _check_cast_list(cfg.amp_cast_list)
    cfg.opt = str(cfg.opt).lower()
    choice(cfg, "opt", ("sgd", "momentum", "nesterov", "adam", "adamw", "lion", "nadam", "adan", "rmsprop",
                        "adagrad", "lamb"))
    if cfg.opt == "lamb" and cfg.loss_scale != 1.0:
        raise ConfigError("opt lamb does not support a loss scale in mindcv; set loss_scale: 1.")
    choice(cfg, "weight_decay_filter", ("disable", "auto", "norm_and_bias"))
    if cfg.lr <= 0 or not 0 <= cfg.min_lr <= cfg.lr:
        raise ConfigError(f"Need lr > 0 and 0 <= min_lr <= lr; got lr={cfg.lr}, min_lr={cfg.min_lr}.")
    if cfg.clip_grad and cfg.clip_value <= 0:
        raise ConfigError(f"clip_value must be > 0; got {cfg.clip_value}.")
    if cfg.resume_opt and not cfg.ckpt_path:
        raise ConfigError("resume_opt: True needs the checkpoint to resume: --ckpt_path <ckpt_save_dir>/latest.ckpt.")


def _check_cast_list(text: str) -> None:
    """mindcv eval()s amp_cast_list: accept only what it is for, a list of mindspore.nn cells (a typo was a
    traceback from inside mindcv, and any other expression would run)."""
    from mindspore import nn

    fix = "amp_cast_list is a list of mindspore.nn cells, e.g. '[nn.Conv2d, nn.Dense]'"
    if not re.fullmatch(r"\s*\[\s*(nn\.\w+\s*,\s*)*(nn\.\w+\s*)?\]\s*", text):
        raise ConfigError(f"{fix}; got {text!r}.")
    unknown = [n for n in re.findall(r"nn\.(\w+)", text)
               if not (isinstance(getattr(nn, n, None), type) and issubclass(getattr(nn, n), nn.Cell))]
    if unknown:
        raise ConfigError(f"{fix}; {', '.join('nn.' + n for n in unknown)} is not one (got {text!r}).")


def recipe_names(folder: str = "repmlp") -> List[str]:
    """The shipped recipes (configs/<folder>/*.yaml next to the package, else under the working directory);
    folder repmlp: classification's, seg: segmentation's."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.join(here, "..", "configs", folder), os.path.join("configs", folder)):
        if os.path.isdir(root):
            return sorted(n for n in os.listdir(root) if n.endswith((".yaml", ".yml")))
    return []


# The usage line of each tool (the path it is run by); the evaluation tools of classification share the default.
_USAGE = {
    "train.py": "train.py --config RECIPE.yaml [--key value ...]",
    "train_seg.py": "train_seg.py --config RECIPE.yaml [--key value ...]",
    "validate_seg.py": "validate_seg.py --ckpt_path FILE [-c RECIPE.yaml] [--data_dir DIR] [--key value ...]",
    "predict_seg.py": "scripts/predict_seg.py --ckpt_path FILE --image_path IMAGE_OR_FOLDER [-c RECIPE.yaml] "
                      "[--output FOLDER] [--key value ...]",
    "scripts/infer.py": "scripts/infer.py [-c RECIPE.yaml] --model NAME --ckpt_path FILE --image_path "
                        "IMAGE_OR_FOLDER [--key value ...]",
}


def format_help(table: Optional[Dict[str, Tuple[Any, str, str]]] = None, prog: str = "train.py",
                own: Optional[Sequence[str]] = None, unused: Sequence[str] = ()) -> str:
    """The --help text. `own`: the keys of a tool itself, listed first; the other keys it reads follow under their
    own heading; `unused`: recipe keys accepted (so a training recipe reads unchanged) but not used, named in one
    line."""
    table = table or KEYS
    usage = _USAGE.get(prog, f"{prog} [-c RECIPE.yaml] --model NAME --ckpt_path FILE [--key value ...]")
    lines = [f"usage: python {usage}", ""]

    def section(heading, keys):
        lines.append(heading)
        lines.extend(f"  --{key:<28} {table[key][2]} [default: {table[key][0]!r}]" for key in keys)

    if own is None:
        section("Keys (mindcv's names; YAML values, the command line wins):", table)
    else:
        section(f"{prog} keys (the command line wins over -c):", list(dict.fromkeys(own)))
        rest = [k for k in table if k not in own and k not in unused]
        if rest:
            lines.append("")
            section("keys shared with train.py:" if prog == "train_seg.py" else
                    "training-recipe keys (read from -c, used where they apply):", rest)
    if unused:
        lines += ["", f"Read from a training recipe (-c) and not used by {prog}: {', '.join(unused)}."]
    return "\n".join(lines)
