"""Train and eval loaders for ImageFolder datasets, built from mindcv's create_dataset / create_transforms /
create_loader, with the argument checks mindcv leaves out (it silently falls back to bilinear for an unknown
interpolation, to random weights for a missing checkpoint, to a cryptic C++ error for a missing directory)."""
import logging
import math
import os
from typing import Dict, Optional, Sequence, Tuple

from ..config import IMAGENET_MEAN as IMAGENET_DEFAULT_MEAN, IMAGENET_STD as IMAGENET_DEFAULT_STD

# MindSpore and mindcv are imported where a loader is built: the argument checks below also serve the config of
# infer.py on an .onnx file, on a machine without MindSpore.

__all__ = ["create_train_loader", "create_eval_loader", "class_folders", "eval_resize_size", "eval_transforms",
           "check_args", "check_mixing", "check_interpolation"]

_logger = logging.getLogger(__name__)
_LAYOUT = "data_dir/{split}/<class name>/<image>.jpg (ImageFolder: one directory per class, the same classes " \
          "in train/ and val/)"
_AUTO_AUGMENT_PREFIXES = ("randaug", "autoaug", "3a", "trivialaugwide", "augmix")


def class_folders(data_dir: str, split: str, num_classes: Optional[int] = None, training: bool = False) -> list:
    """The class names of data_dir/split in label order. Raises a clear error unless it is an ImageFolder tree,
    or has more classes than `num_classes`, or (`training`) fewer than 2. The one class-folder check of the
    project: train.py, validate.py and the loaders use it.

    Label order is MindSpore's: ImageFolderDataset numbers the class folders in the sorted order of their names'
    bytes. Names that are not valid UTF-8 are refused: Python sorts their surrogate escapes elsewhere (the recorded
    names would be swapped against the labels), they cannot be recorded in a checkpoint as text, and MindSpore's
    own get_class_indexing() fails on them. So are hidden folders (.ipynb_checkpoints): MindSpore reads them as a
    class their owners do not know is there."""
    if not data_dir:
        raise ValueError("No data_dir given. Expected the layout " + _LAYOUT.format(split=split) + ".")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"Dataset directory not found: {data_dir!r}. Expected the layout "
                                + _LAYOUT.format(split=split) + ".")
    split_dir = os.path.join(data_dir, split)
    if not os.path.isdir(split_dir):
        found = sorted(e.name for e in os.scandir(data_dir) if e.is_dir())
        raise FileNotFoundError(f"No '{split}' split in {data_dir!r} (it has: {', '.join(found) or 'nothing'}). "
                                f"Expected the layout " + _LAYOUT.format(split=split) + ".")
    classes = sorted((e.name for e in os.scandir(split_dir) if e.is_dir()), key=os.fsencode)
    where = os.fsencode(split_dir).decode("utf-8", "backslashreplace")
    for name in classes:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        if shown != name:  # surrogate escapes: bytes that are not UTF-8
            raise ValueError(f"Class folder '{shown}' in {where} has a name that is not valid UTF-8 (bytes shown as "
                             f"\\xNN); class names are recorded in checkpoints as text. Rename it to a UTF-8 name "
                             f"(in both splits), e.g. convmv -f latin1 -t utf8 -r --notest {where}.")
        if name.startswith("."):
            raise ValueError(f"Hidden folder '{shown}' in {where}: MindSpore's ImageFolderDataset would read it as "
                             f"a class. Move it out of {where} (or delete it).")
    if not classes:
        raise ValueError(f"{split_dir!r} has no class directories. Expected the layout "
                         + _LAYOUT.format(split=split) + ".")
    if training and len(classes) < 2:
        raise ValueError(f"{split_dir!r} has one class folder ({classes[0]!r}): training needs at least 2 classes "
                         f"(with one, every label is 0, the loss is 0 and top-1 100% without learning anything). Add "
                         f"a folder per class under {split_dir!r}.")
    if num_classes is not None:
        if len(classes) > num_classes:
            raise ValueError(f"{split_dir!r} has {len(classes)} class directories but the model has num_classes="
                             f"{num_classes}: labels would run past the classifier. Set num_classes to "
                             f"{len(classes)} or remove the extra directories.")
        if len(classes) < num_classes:
            # legal (a subset of classes), but labels follow the sorted directory names: a subset shifts them
            _logger.warning("%s has %d class directories, fewer than num_classes=%d; labels are assigned by sorted "
                            "directory name, so they only match the model's classes if the missing ones sort last.",
                            split_dir, len(classes), num_classes)
    return classes


def check_interpolation(interpolation: str, key: str = "interpolation") -> str:
    """The name in lower case, if MindSpore knows the filter (mindcv falls back to bilinear without a word);
    without MindSpore, the filters an .onnx file's preprocessing has (data.pixels)."""
    try:
        from mindspore.dataset.vision import Inter
        # ANTIALIAS resizes PIL images only, and mindcv decodes to NumPy: its pipeline failed at the first image
        known = [n.lower() for n in Inter.__members__ if n != "ANTIALIAS"]
    except ImportError:
        from .pixels import FILTERS as known
    if not isinstance(interpolation, str) or interpolation.lower() not in known:
        raise ValueError(f"Unknown {key} {interpolation!r}; use one of: {', '.join(known)}.")
    return interpolation.lower()


_POSITIVE = ("batch_size", "image_size", "num_parallel_workers", "num_samples")  # the last two: None is allowed
_UNIT = ("hflip", "vflip", "re_prob", "mixup_prob", "label_smoothing")


def check_args(names: Optional[Dict[str, str]] = None, **values) -> Dict[str, object]:
    """The loaders' argument checks, each value by its argument name; returns the values, normalized
    (interpolation in lower case). The one place these values are checked: the loaders call it on their arguments,
    and train.py's / validate.py's configs before any work, with `names` mapping an argument to the config key the
    user wrote (image_size -> image_resize), so the message names that."""
    names = names or {}
    out = dict(values)
    for arg, value in values.items():
        key = names.get(arg, arg)
        if arg in _POSITIVE:
            if value is None and arg in ("num_parallel_workers", "num_samples"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive integer; got {value!r}.")
        elif arg in _UNIT:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1]; got {value}.")
        elif arg in ("mixup", "cutmix"):
            if value < 0:
                raise ValueError(f"{key} is a Beta-distribution alpha >= 0 (0: off); got {value}.")
        elif arg == "crop_pct":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value <= 1.0:
                raise ValueError(f"{key} must be in (0, 1] (the crop is that fraction of the resized image); got "
                                 f"{value!r}. RepMLPNet's authors evaluate with 1.0, mindcv with 0.875.")
        elif arg == "interpolation":
            out[arg] = check_interpolation(value, key)
        elif arg == "auto_augment":
            if value is not None and not str(value).startswith(_AUTO_AUGMENT_PREFIXES):
                raise ValueError(f"Unknown {key} policy {value!r}: mindcv's policies start with "
                                 f"{', '.join(_AUTO_AUGMENT_PREFIXES)} (e.g. 'randaug-m9-mstd0.5-inc1', "
                                 f"'autoaug-mstd0.5', 'trivialaugwide', 'augmix-m3-w3'). Use None for no "
                                 f"auto-augmentation.")
        else:
            raise TypeError(f"check_args() has no check for {arg!r}")
    return out


def check_mixing(batch_size: int, drop_remainder: bool, mixup: float, cutmix: float,
                 label_smoothing: float = 0.0) -> None:
    """mixup/cutmix pair each batch with its reverse; label_smoothing here smooths only their mixed targets."""
    mixing = mixup > 0 or cutmix > 0
    if mixing and (batch_size % 2 or not drop_remainder):
        raise ValueError(f"mixup/cutmix mix each batch with its reverse and need an even batch_size with "
                         f"drop_remainder=True; got batch_size={batch_size}, drop_remainder={drop_remainder}.")
    if label_smoothing > 0 and not mixing:
        raise ValueError("label_smoothing in the loader only applies to mixup/cutmix targets. Without mixing, "
                         "smooth in the loss (mindcv's CrossEntropySmooth(smoothing=...)) and pass 0 here.")


def _check_shards(num_shards, shard_id):
    if (num_shards is None) != (shard_id is None):
        raise ValueError("Give both num_shards and shard_id (data parallel) or neither.")
    if num_shards is not None and not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, num_shards); got shard_id={shard_id}, num_shards={num_shards}.")


def _dataset_size(dataset, where: str) -> int:
    n = dataset.get_dataset_size()
    if n == 0:
        raise ValueError(f"No images in {where}: every class directory is empty (or this shard got none).")
    return n


def create_train_loader(data_dir: str, *, batch_size: int, image_size: int, num_classes: int,
                        num_parallel_workers: Optional[int], shuffle: bool = True, num_shards: Optional[int] = None,
                        shard_id: Optional[int] = None, auto_augment: Optional[str] = None, re_prob: float = 0.,
                        color_jitter=None, mixup: float = 0., cutmix: float = 0., mixup_prob: float = 1.,
                        label_smoothing: float = 0., interpolation: str = "bilinear", hflip: float = 0.5,
                        scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (0.75, 1.333),
                        drop_remainder: bool = True, dataset: str = "imagenet", seed: Optional[int] = None,
                        split: str = "train", vflip: float = 0., re_scale: Sequence[float] = (0.02, 0.33),
                        re_ratio: Sequence[float] = (0.3, 3.3), re_value=0, re_max_attempts: int = 10,
                        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                        num_samples: Optional[int] = None) -> Tuple[object, int]:
    """Batched training data from data_dir/train: (loader, number of samples in this shard).

    Augmentation is mindcv's: random resized crop (`scale`, `ratio`), horizontal flip, then `auto_augment`
    (a mindcv policy string such as 'randaug-m9-mstd0.5-inc1') or, without it, `color_jitter`; ImageNet
    normalisation; random erasing with probability `re_prob`. Batches hold float32 images (N, 3, S, S).

    Labels are int32 (N,) without mixing. With `mixup` / `cutmix` alpha > 0 they are float32 soft targets
    (N, num_classes), mixed per batch with probability `mixup_prob` (mindcv's Mixup; both on: 50/50 switch).
    `label_smoothing` smooths those mixed targets only. mindcv's recipes instead smooth in the loss
    (CrossEntropySmooth takes both label forms): then leave it 0 here, or the targets are smoothed twice.

    `seed` sets MindSpore's global dataset seed (shuffle order and random augmentation). `split` names the
    directory under data_dir; vflip, re_scale, re_ratio, re_value, re_max_attempts, mean and std (0-255 scale)
    go to mindcv's transforms; `num_samples` reads a random subset of that size (per shard).
    """
    interpolation = check_args(batch_size=batch_size, image_size=image_size, num_parallel_workers=num_parallel_workers,
                               num_samples=num_samples, hflip=hflip, vflip=vflip, re_prob=re_prob,
                               mixup_prob=mixup_prob, label_smoothing=label_smoothing, mixup=mixup, cutmix=cutmix,
                               interpolation=interpolation, auto_augment=auto_augment)["interpolation"]
    check_mixing(batch_size, drop_remainder, mixup, cutmix, label_smoothing)
    _check_shards(num_shards, shard_id)
    if dataset.lower() not in ("imagenet", ""):
        raise ValueError(f"dataset={dataset!r}: only ImageFolder data ('imagenet' or '') is supported here.")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    mixing = mixup > 0 or cutmix > 0
    class_folders(data_dir, split, num_classes, training=True)
    import mindspore.dataset as ds
    from mindcv.data import create_dataset, create_loader, create_transforms
    from mindcv.data.mixup import Mixup

    if seed is not None:
        ds.config.set_seed(int(seed))

    try:
        transform = create_transforms(dataset_name=dataset, image_resize=image_size, is_training=True,
                                      auto_augment=auto_augment, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
                                      color_jitter=color_jitter, interpolation=interpolation, re_prob=re_prob,
                                      vflip=vflip, re_scale=tuple(re_scale), re_ratio=tuple(re_ratio),
                                      re_value=re_value, re_max_attempts=re_max_attempts, mean=list(mean),
                                      std=list(std))
    except (AssertionError, KeyError, ValueError) as e:  # mindcv asserts on malformed policy strings
        raise ValueError(f"Invalid augmentation settings (auto_augment={auto_augment!r}, color_jitter="
                         f"{color_jitter!r}): {e or type(e).__name__}") from e
    data = create_dataset(name=dataset, root=data_dir, split=split, shuffle=shuffle, num_samples=num_samples,
                          num_shards=num_shards, shard_id=shard_id, num_parallel_workers=num_parallel_workers)
    num_samples = _dataset_size(data, os.path.join(data_dir, split))
    if num_samples < batch_size and drop_remainder:
        raise ValueError(f"Only {num_samples} training images (per shard) for batch_size={batch_size} with "
                         f"drop_remainder=True: every batch would be dropped. Lower batch_size.")
    # mixing is mapped here rather than through create_loader so that label_smoothing reaches mindcv's Mixup
    loader = create_loader(dataset=data, batch_size=batch_size, drop_remainder=drop_remainder, is_training=True,
                           num_classes=num_classes, transform=transform, num_parallel_workers=num_parallel_workers)
    if mixing:
        mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob, switch_prob=0.5,
                    label_smoothing=label_smoothing, num_classes=num_classes)
        loader = loader.map(operations=mix, input_columns=["image", "label"],
                            num_parallel_workers=num_parallel_workers)
    return loader, num_samples


def eval_resize_size(image_size: int, crop_pct: float) -> int:
    """Short side before the centre crop (mindcv's rule)."""
    return int(math.floor(image_size / crop_pct))


def create_eval_loader(data_dir: str, *, split: str = "val", batch_size: int, image_size: int,
                       crop_pct: float = 0.875, interpolation: str = "bilinear",
                       num_parallel_workers: Optional[int], num_shards: Optional[int] = None,
                       shard_id: Optional[int] = None, num_classes: Optional[int] = None,
                       mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                       std: Sequence[float] = IMAGENET_DEFAULT_STD) -> Tuple[object, int]:
    """Batched evaluation data from data_dir/split, in file order: (loader, number of samples in this shard).

    Resize the short side to int(image_size / crop_pct), centre crop image_size, ImageNet mean/std. crop_pct 1.0
    is the RepMLPNet authors' protocol, 0.875 mindcv's. The last batch may be smaller. Labels are int32 (N,).
    `num_classes`, when given, is checked against the number of class directories. mean/std on the 0-255 scale.
    """
    interpolation = check_args(batch_size=batch_size, image_size=image_size, num_parallel_workers=num_parallel_workers,
                               crop_pct=crop_pct, interpolation=interpolation)["interpolation"]
    _check_shards(num_shards, shard_id)
    if not split or os.sep in split:
        raise ValueError(f"split must be a directory name under data_dir such as 'val', got {split!r}.")
    class_folders(data_dir, split, num_classes)
    from mindcv.data import create_dataset, create_loader

    transform = eval_transforms(image_size, crop_pct, interpolation, mean, std)
    data = create_dataset(name="imagenet", root=data_dir, split=split, shuffle=False, num_shards=num_shards,
                          shard_id=shard_id, num_parallel_workers=num_parallel_workers)
    num_samples = _dataset_size(data, os.path.join(data_dir, split))
    loader = create_loader(dataset=data, batch_size=batch_size, drop_remainder=False, is_training=False,
                           transform=transform, num_parallel_workers=num_parallel_workers)
    return loader, num_samples


def eval_transforms(image_size: int, crop_pct: float = 0.875, interpolation: str = "bilinear",
                    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                    std: Sequence[float] = IMAGENET_DEFAULT_STD) -> list:
    """The evaluation transforms, encoded image bytes in, normalized CHW float32 out: decode, resize the short side
    to int(image_size / crop_pct), centre crop image_size, mean/std (0-255 scale). validate.py's loader and
    scripts/infer.py both take them from here, so a prediction sees exactly the pixels an evaluation does."""
    interpolation = check_args(crop_pct=crop_pct, interpolation=interpolation)["interpolation"]
    from mindcv.data import create_transforms

    return create_transforms(dataset_name="imagenet", image_resize=image_size, is_training=False,
                             crop_pct=float(crop_pct), interpolation=interpolation, mean=list(mean), std=list(std))
