"""From config keys to mindcv_ext.data loaders: dataset location checks, the built-in demo set, class count,
and the keyword mapping (mindcv's key names -> the loader's arguments)."""
import os
from typing import List

from ..config import ConfigError

__all__ = ["check_save_dir_outside_data", "prepare_data_dir", "train_class_names", "build_train_loader",
           "build_eval_loader"]


def check_save_dir_outside_data(cfg) -> None:
    """Refuse a ckpt_save_dir inside the train or val split (e.g. data/train/run1): every folder there is read as
    a class, and the run's own train.log and checkpoints as its images. Run before anything is created."""
    data = os.path.realpath(cfg.data_dir or ".")
    save = os.path.realpath(cfg.ckpt_save_dir)
    for split in (cfg.train_split, cfg.val_split):
        split_dir = os.path.join(data, split)
        if os.path.commonpath([save, split_dir]) == split_dir:
            raise ConfigError(f"ckpt_save_dir {cfg.ckpt_save_dir} is inside the {split} split {split_dir}: "
                              f"ImageFolderDataset would read it as a class folder and this run's train.log and "
                              f"checkpoints as images. Save outside the dataset's splits, e.g. --ckpt_save_dir "
                              f"{os.path.join(os.path.dirname(data), 'outputs', os.path.basename(save))}.")


def prepare_data_dir(cfg) -> str:
    """The dataset root. `dataset: demo` generates the built-in procedural set there on first use (a no-op when
    it already exists); `dataset: imagenet` must already hold <train_split>/<class>/ (and <val_split>/), and its
    samples pass the quick scan (no hidden, empty, special or non-image files: imagecheck.scan_entries)."""
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
    if not cfg.check_data:  # check_data runs the full check, which starts with this one
        from ..data.imagecheck import check_images

        try:  # one stat and a few header bytes per file: seconds for ImageNet, before anything reads the data
            check_images(root, splits=needed, full=False)
        except (ValueError, OSError) as e:
            raise ConfigError(str(e)) from None
    return root


def train_class_names(cfg, data_dir: str) -> List[str]:
    """The train split's class names in label order. With validation on, the val split must name the same
    classes: a renamed or missing folder would shift its labels, and best.ckpt would be chosen on noise."""
    from ..data.loaders import class_folders
    from ..weights import check_class_names

    train_dir, val_dir = os.path.join(data_dir, cfg.train_split), os.path.join(data_dir, cfg.val_split)
    try:
        names = class_folders(data_dir, cfg.train_split, training=True)
        if cfg.val_while_train:
            check_class_names(names, class_folders(data_dir, cfg.val_split), f"{val_dir} against {train_dir}",
                              "Labels follow the sorted folder names of each split; make both splits hold the "
                              "same class folders.")
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None
    return names


def build_train_loader(cfg, data_dir: str, num_classes: int, rank: int, group_size: int):
    """(loader, number of samples in this rank's shard)."""
    from ..data import create_train_loader

    shards = dict(num_shards=group_size, shard_id=rank) if group_size > 1 else {}
    return _as_config_error(
        create_train_loader, data_dir, batch_size=cfg.batch_size, image_size=cfg.image_resize,
        num_classes=num_classes, num_parallel_workers=cfg.num_parallel_workers, shuffle=cfg.shuffle,
        auto_augment=cfg.auto_augment, re_prob=cfg.re_prob, color_jitter=cfg.color_jitter, mixup=cfg.mixup,
        cutmix=cfg.cutmix, mixup_prob=cfg.cutmix_prob, label_smoothing=0.0, interpolation=cfg.interpolation,
        hflip=cfg.hflip, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), drop_remainder=cfg.drop_remainder,
        seed=cfg.seed, split=cfg.train_split, vflip=cfg.vflip, re_scale=tuple(cfg.re_scale),
        re_ratio=tuple(cfg.re_ratio), re_value=cfg.re_value, re_max_attempts=cfg.re_max_attempts, mean=cfg.mean,
        std=cfg.std, num_samples=cfg.num_samples, **shards)


def build_eval_loader(cfg, data_dir: str, num_classes: int, rank: int, group_size: int):
    from ..data import create_eval_loader

    shards = dict(num_shards=group_size, shard_id=rank) if group_size > 1 else {}
    return _as_config_error(
        create_eval_loader, data_dir, split=cfg.val_split, batch_size=cfg.batch_size, image_size=cfg.image_resize,
        crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, num_parallel_workers=cfg.num_parallel_workers,
        mean=cfg.mean, std=cfg.std, num_classes=num_classes, **shards)


def _as_config_error(fn, *args, **kwargs):
    # The loaders check the data layout and their arguments and raise ValueError naming the problem: report it
    # like any other bad input (one line, exit code 2), not as a traceback.
    try:
        return fn(*args, **kwargs)
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None
