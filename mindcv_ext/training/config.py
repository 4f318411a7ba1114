"""train.py's configuration checks, and validate.py / infer.py's keys and checks; the key table, the parser and
the checks every tool shares are mindcv_ext/config.py's."""
import math
import os
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import (KEYS, ConfigError, at_least, check_precision_and_optimizer_keys, check_runtime_keys, choice,
                      fit_workers, in_unit, parse_config, recipe_names)

__all__ = ["load_config", "validate", "schedule_notes", "EVAL_KEYS", "eval_keys", "load_eval_config"]


def schedule_notes(cfg) -> List[str]:
    """What the lr schedule does when a recipe's warmup or decay is longer than the run (mindcv only warns)."""
    notes, e, w, d = [], cfg.epoch_size, cfg.warmup_epochs, cfg.decay_epochs
    if w > e:
        reached = cfg.lr * (cfg.warmup_factor + (1 - cfg.warmup_factor) * e / w)
        notes.append(f"warmup_epochs ({w}) is longer than the run (epoch_size {e}): the lr rises linearly for the "
                     f"whole run and ends at {reached:.3g} ({e}/{w} of the way to lr {cfg.lr}); it never decays.")
    elif cfg.scheduler in ("cosine_decay", "warmup_cosine_decay") and d > e - w and cfg.num_cycles == 1:
        end = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * (e - w) / d))
        notes.append(f"decay_epochs ({d}) is longer than the {e - w} epoch(s) after warmup: the cosine decay is cut "
                     f"off and the lr ends at {end:.3g}, not at min_lr {cfg.min_lr}.")
    return notes


def validate(cfg: SimpleNamespace) -> SimpleNamespace:
    """Check values and their combinations before any work starts. Normalizes a few spellings in place."""
    check_runtime_keys(cfg)
    check_precision_and_optimizer_keys(cfg)
    choice(cfg, "scheduler", ("constant", "cosine_decay", "warmup_cosine_decay", "exponential_decay",
                              "polynomial_decay", "step_decay", "multi_step_decay", "one_cycle", "cyclic"))
    if cfg.scheduler in ("one_cycle", "cyclic") and (cfg.warmup_epochs > 0 or cfg.lr_epoch_stair):
        raise ConfigError(f"scheduler {cfg.scheduler} takes no warmup and no lr_epoch_stair (mindcv); set "
                          f"warmup_epochs: 0 and lr_epoch_stair: False.")
    cfg.loss = str(cfg.loss).upper()
    choice(cfg, "loss", ("CE", "BCE"))
    choice(cfg, "ckpt_save_policy", ("latest_k", "top_k"))
    if cfg.ckpt_save_policy == "top_k" and not cfg.val_while_train:
        raise ConfigError("ckpt_save_policy top_k ranks checkpoints by val top-1: set val_while_train: True.")
    for key, low in (("epoch_size", 1), ("log_interval", 1), ("val_interval", 1), ("ckpt_save_interval", 1),
                     ("keep_checkpoint_max", 1), ("in_channels", 1), ("warmup_epochs", 0), ("decay_epochs", 0),
                     ("num_cycles", 1)):
        at_least(cfg, key, low)
    _check_loader_keys(cfg, True, batch_size=cfg.batch_size, image_size=cfg.image_resize,
                       num_parallel_workers=cfg.num_parallel_workers, num_samples=cfg.num_samples, hflip=cfg.hflip,
                       vflip=cfg.vflip, re_prob=cfg.re_prob, mixup_prob=cfg.cutmix_prob, mixup=cfg.mixup,
                       cutmix=cfg.cutmix, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
                       auto_augment=cfg.auto_augment)
    # A shortened run of a recipe (e.g. a smoke test) runs, as in mindcv, and so does a recipe on a smaller
    # machine; cfg.notes says what was adjusted.
    cfg.notes = schedule_notes(cfg) + fit_workers(cfg)
    if cfg.num_classes is not None and cfg.num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (or None to count the class folders); got {cfg.num_classes}.")
    for key in ("label_smoothing", "drop_rate", "drop_path_rate"):  # the loss's and the model's, not the loader's
        in_unit(cfg, key, closed_top=False)
    if cfg.ema and not 0.0 < cfg.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in (0, 1); got {cfg.ema_decay}.")
    if cfg.ckpt_path and cfg.pretrained:
        raise ConfigError("pretrained and ckpt_path are exclusive (as in mindcv): drop one of them.")
    cfg.dataset = str(cfg.dataset).lower()
    choice(cfg, "dataset", ("imagenet", "demo"),
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
    if not cfg.model:
        recipes = ", ".join(recipe_names()) or "none found"
        if not cfg.config:
            raise ConfigError(f"train.py needs a recipe: python train.py --config configs/repmlp/<recipe>.yaml "
                              f"[--key value ...]. Recipes in configs/repmlp/: {recipes}.")
        raise ConfigError(f"{cfg.config} sets no model; add a line such as `model: repmlp_t224` (or pass --model). "
                          f"The recipes in configs/repmlp/ ({recipes}) show the full set of keys.")
    return cfg


# The loader argument a config key feeds, where the names differ: the loaders' messages then name the key.
_LOADER_NAMES = {"image_size": "image_resize", "mixup_prob": "cutmix_prob"}


def _check_loader_keys(cfg, training: bool, **values) -> None:
    """The keys that become loader arguments, checked by the loaders' own checks (data.loaders.check_args: one
    check per value) before any work; interpolation is normalized in place. train.py's mixup/cutmix also need an
    even per-device batch: said now, not when the loader is built after the model."""
    from ..data.loaders import check_args, check_mixing

    try:
        cfg.interpolation = check_args(_LOADER_NAMES, **values)["interpolation"]
        if training:
            check_mixing(cfg.batch_size, cfg.drop_remainder, cfg.mixup, cfg.cutmix)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_config(argv: Optional[Sequence[str]] = None) -> SimpleNamespace:
    return validate(parse_config(argv))


# ---- validate.py and scripts/infer.py: the same keys and parser, so `-c <training recipe>` reads unchanged ----------

# Keys of the evaluation tools beyond the training ones, and training keys whose default differs there.
EVAL_KEYS: Dict[str, Tuple[Any, str, str]] = {
    "model": ("", "str", "registered model name, e.g. repmlp_t224 (required, from the recipe or --model)"),
    "data_dir": ("", "str", "dataset root holding <val_split>/<class>/<images>"),
    "ckpt_path": ("", "str", "train- or deploy-form weights (.ckpt / .safetensors / .pth / .npz); the form is read "
                             "from the file"),
    "device_target": ("CPU", "str", "Ascend, GPU or CPU"),
    "batch_size": (64, "int", "images per batch"),
    "num_parallel_workers": (min(8, os.cpu_count() or 1), "int", "data pipeline workers"),
    "image_resize": (None, "int", "crop size (default: the model's native input size; multiples of it work too)"),
    "log_interval": (50, "int", "print running accuracy every N batches (0: off)"),
    "ema": (False, "bool", "evaluate the EMA weights (ema.* keys) of a training checkpoint; a recipe's ema: True "
                           "means: the EMA ones when the file has them"),
    "deploy": (None, "bool", "expect a deploy-form (True) or train-form (False) checkpoint; default: read from it"),
    "gelu_approximate": (False, "bool", "tanh GELU: True for mindcv's published t224 weights, False (exact erf) "
                                        "for the authors' and this project's"),
}
EVAL_ALIASES = {"split": "val_split", "image_size": "image_resize"}


def eval_keys(extra: Optional[Dict[str, Tuple[Any, str, str]]] = None) -> Dict[str, Tuple[Any, str, str]]:
    return {**KEYS, **EVAL_KEYS, **(extra or {})}


def load_eval_config(argv: Optional[Sequence[str]] = None, prog: str = "validate.py",
                     extra: Optional[Dict[str, Tuple[Any, str, str]]] = None) -> SimpleNamespace:
    """validate.py / infer.py configuration: every training key is accepted (a recipe reads unchanged; keys that
    only matter for training are not used), the evaluation ones are checked. The recipe's `ema: True` means the
    run kept EMA weights: they are evaluated when the file has them; an explicit --ema True insists on them."""
    cfg = parse_config(argv, eval_keys(extra), EVAL_ALIASES, prog, own=[*EVAL_KEYS, *(extra or {})])
    if cfg.ema and "ema" not in cfg._given:
        cfg.ema = None  # from the recipe: prefer EMA weights, but best.ckpt already holds them as plain weights
    from ..onnx_runtime import is_onnx, model_name

    if not cfg.model and is_onnx(cfg.ckpt_path) and os.path.isfile(cfg.ckpt_path):
        cfg.model = model_name(cfg.ckpt_path)  # export.py / quantize.py record it
    for key, what in (("model", "a model: --model repmlp_t224 (or a recipe with -c)"),
                      ("ckpt_path", "weights to evaluate: --ckpt_path best.ckpt")):
        if not getattr(cfg, key):
            raise ConfigError(f"{prog} needs {what}.")
    check_runtime_keys(cfg, evaluating=True)
    for key, low in (("log_interval", 0), ("in_channels", 1)):
        at_least(cfg, key, low)
    # image_resize None: the model's native size, checked by the loader once known
    size = {} if cfg.image_resize is None else {"image_size": cfg.image_resize}
    _check_loader_keys(cfg, False, batch_size=cfg.batch_size, num_parallel_workers=cfg.num_parallel_workers,
                       crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, **size)
    cfg.notes = fit_workers(cfg)
    if cfg.num_classes is not None and cfg.num_classes < 1:
        raise ConfigError(f"num_classes must be positive; got {cfg.num_classes}.")
    cfg.dataset = str(cfg.dataset).lower()
    choice(cfg, "dataset", ("imagenet", "demo", ""), " Evaluation reads ImageFolder data (imagenet).")
    if cfg.ckpt_path and not os.path.isfile(cfg.ckpt_path):
        raise ConfigError(f"--ckpt_path {cfg.ckpt_path!r} is not a file; pass the checkpoint file itself."
                          if os.path.exists(cfg.ckpt_path) else f"checkpoint not found: {cfg.ckpt_path!r}. Without "
                          f"weights the result would be chance level; pass the .ckpt written by train.py (or "
                          f"scripts/reparameterize.py / convert_weights.py).")
    return cfg
