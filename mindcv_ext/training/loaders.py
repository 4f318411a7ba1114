"""From config keys to mindcv_ext.data loaders: dataset location checks, the built-in demo set, class count,
and the keyword mapping (mindcv's key names -> the loader's arguments)."""
import inspect
import logging
import os
from typing import Callable, Dict, Optional, Tuple

from .config import KEYS, ConfigError

__all__ = ["prepare_data_dir", "count_classes", "build_train_loader", "build_eval_loader", "check_images"]

_log = logging.getLogger("train")


def prepare_data_dir(cfg) -> str:
    """The dataset root. `dataset: demo` generates the built-in procedural set there on first use (a no-op when
    it already exists); `dataset: imagenet` must already hold <train_split>/<class>/ (and <val_split>/)."""
    if cfg.dataset == "demo":
        from ..data import ensure_demo_dataset

        try:  # the images do not depend on the training seed: one demo set serves every run
            return ensure_demo_dataset(cfg.data_dir, num_classes=cfg.num_classes or 10, image_size=cfg.image_resize)
        except ValueError as e:  # e.g. data_dir holds another dataset or a demo set made with other settings
            raise ConfigError(f"dataset demo, data_dir {cfg.data_dir!r}: {e}") from None
    root = cfg.data_dir
    needed = [cfg.train_split] + ([cfg.val_split] if cfg.val_while_train else [])
    for split in needed:
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise ConfigError(f"{path!r} does not exist. data_dir must hold an ImageFolder tree: "
                              f"{os.path.join(root, cfg.train_split, '<class>', '*.jpg')} and "
                              f"{os.path.join(root, cfg.val_split, '<class>', '*.jpg')}. Set --data_dir, or use "
                              f"--dataset demo to generate the built-in demo set.")
    return root


def count_classes(split_dir: str) -> int:
    classes = [e.name for e in os.scandir(split_dir) if e.is_dir()]
    if not classes:
        raise ConfigError(f"{split_dir!r} has no class folders; expected {split_dir}/<class>/<image files>.")
    return len(classes)


def _call(fn: Callable, args: tuple, kwargs: Dict, optional: Dict[str, Tuple[str, object]]):
    """Call fn(*args, **kwargs, **supported optional ones). optional: arg name -> (config key, value). An optional
    value the loader has no argument for is dropped, with a warning if it differs from mindcv's default."""
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for arg, (key, value) in optional.items():
        if takes_any or arg in params:
            kwargs[arg] = value
        elif value != KEYS[key][0]:
            _log.warning(f"{key}={value!r} is not used: {fn.__module__}.{fn.__name__} has no {arg!r} argument "
                         f"(it applies its own default).")
    return fn(*args, **kwargs)


def build_train_loader(cfg, data_dir: str, num_classes: int, rank: int, group_size: int):
    """(loader, number of samples in this rank's shard)."""
    from ..data import create_train_loader

    shards = dict(num_shards=group_size, shard_id=rank) if group_size > 1 else {}
    kwargs = dict(batch_size=cfg.batch_size, image_size=cfg.image_resize, num_classes=num_classes,
                  num_parallel_workers=cfg.num_parallel_workers, shuffle=cfg.shuffle, auto_augment=cfg.auto_augment,
                  re_prob=cfg.re_prob, color_jitter=cfg.color_jitter, mixup=cfg.mixup, cutmix=cfg.cutmix,
                  mixup_prob=cfg.cutmix_prob, label_smoothing=0.0, interpolation=cfg.interpolation,
                  hflip=cfg.hflip, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                  drop_remainder=cfg.drop_remainder, seed=cfg.seed, **shards)
    optional = {"split": ("train_split", cfg.train_split), "vflip": ("vflip", cfg.vflip),
                "re_scale": ("re_scale", tuple(cfg.re_scale)), "re_ratio": ("re_ratio", tuple(cfg.re_ratio)),
                "re_value": ("re_value", cfg.re_value), "re_max_attempts": ("re_max_attempts", cfg.re_max_attempts),
                "mean": ("mean", cfg.mean), "std": ("std", cfg.std), "num_samples": ("num_samples", cfg.num_samples)}
    if cfg.train_split != "train" and not _accepts(create_train_loader, "split"):
        raise ConfigError(f"train_split {cfg.train_split!r}: the train loader reads <data_dir>/train only; rename "
                          f"the folder or set train_split: train.")
    if cfg.num_samples is not None and not _accepts(create_train_loader, "num_samples"):
        raise ConfigError("num_samples is not supported by the train loader; set num_samples: None.")
    return _as_config_error(_call, create_train_loader, (data_dir,), kwargs, optional)


def build_eval_loader(cfg, data_dir: str, num_classes: int, rank: int, group_size: int):
    from ..data import create_eval_loader

    shards = dict(num_shards=group_size, shard_id=rank) if group_size > 1 else {}
    kwargs = dict(split=cfg.val_split, batch_size=cfg.batch_size, image_size=cfg.image_resize,
                  crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
                  num_parallel_workers=cfg.num_parallel_workers, **shards)
    optional = {"mean": ("mean", cfg.mean), "std": ("std", cfg.std), "num_classes": ("num_classes", num_classes)}
    return _as_config_error(_call, create_eval_loader, (data_dir,), kwargs, optional)


def _as_config_error(fn, *args):
    # The loaders check the data layout and their arguments and raise ValueError naming the problem: report it
    # like any other bad input (one line, exit code 2), not as a traceback.
    try:
        return fn(*args)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _accepts(fn: Callable, arg: str) -> bool:
    params = inspect.signature(fn).parameters
    return arg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_images(data_dir: str, workers: Optional[int] = None) -> None:
    """Decode-check every image under data_dir; raise listing the bad files (MindSpore's decoder can kill the
    process on some truncated JPEGs, hours into a run)."""
    from ..data import find_bad_images

    bad = find_bad_images(data_dir, workers=workers)
    if bad:
        shown = "\n".join(f"  {path}: {reason}" for path, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ConfigError(f"{len(bad)} unreadable image(s) under {data_dir}:\n{shown}{more}\nRemove or replace "
                          f"them (python scripts/check_dataset.py {data_dir} lists them all), then start again.")
