"""Segmentation data: the Cityscapes and ADE20K layouts, pair checks, mmseg's transforms, MindSpore loaders.

Layouts (mmsegmentation's):
- cityscapes: <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png with
  <root>/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png (19 classes, 255 = ignore; the trainIds files
  are made by cityscapesscripts' createTrainIdLabelImgs, as for mmseg).
- ade20k: <root>/images/<split>/<name>.jpg with <root>/annotations/<split>/<name>.png; label 0 means "other"
  and becomes 255, the rest shift down by one (mmseg's reduce_zero_label), giving 150 classes.

Labels are single-channel PNGs of class indices; 255 is ignored everywhere. Every pair is checked before
training or evaluation starts (check_pairs): a missing partner, an unreadable file, image and label of different
sizes, a colour label image, or label values outside [0, num_classes) and 255 stop the run with one line.

Train transforms are mmseg's Cityscapes/ADE pipeline: random rescale (ratio 0.5-2.0 of img_scale, keeping the
aspect ratio), random crop with cat_max_ratio 0.75, horizontal flip, photometric distortion, normalization, and
padding to the crop size (image 0 after normalization, label 255). They run in the MindSpore pipeline
(GeneratorDataset -> batch).
"""
import glob
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..data.imagecheck import special_files
from ..config import IMAGENET_MEAN, IMAGENET_STD, ConfigError

__all__ = ["DataError", "LAYOUTS", "list_pairs", "check_pairs", "read_image", "read_label", "TrainTransform",
           "rescale_size", "normalize", "build_seg_train_loader", "build_seg_eval_loader", "CITYSCAPES_CLASSES",
           "eval_preprocess",
           "ADE20K_CLASSES",
           "CITYSCAPES_PALETTE", "palette_for"]

Image.MAX_IMAGE_PIXELS = None  # large panoramas are legitimate here

IGNORE = 255


class DataError(ConfigError):
    """A dataset problem found before work starts; the message names the file and the fix."""


CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
# ADE20K (SceneParsing, 150 classes): the first name of each entry of the dataset's objectInfo150 list, in label
# order (label v is class v - 1 after reduce_zero_label), as mmseg's ADE20KDataset names them.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32))


def palette_for(num_classes: int) -> np.ndarray:
    """(num_classes + 1, 3) uint8 colours: Cityscapes' for 19 classes, else fixed distinct ones; the last row
    (black) is for ignored pixels."""
    if num_classes == len(CITYSCAPES_PALETTE):
        colours = np.array(CITYSCAPES_PALETTE, np.uint8)
    else:
        rng = np.random.default_rng(3)
        colours = rng.integers(40, 256, size=(num_classes, 3)).astype(np.uint8)
        base = np.array([(128, 128, 128), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
                         (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)], np.uint8)
        colours[:min(num_classes, len(base))] = base[:num_classes]
    return np.concatenate([colours, np.zeros((1, 3), np.uint8)])


# ------------------------------------------------------------------------------------------------- layouts

LAYOUTS = {
    # name: (image dir, image suffix, label dir, label suffix, default train split, default val split, classes,
    #        reduce_zero_label)
    "cityscapes": ("leftImg8bit", "_leftImg8bit.png", "gtFine", "_gtFine_labelTrainIds.png", "train", "val", 19,
                   False),
    "ade20k": ("images", ".jpg", "annotations", ".png", "training", "validation", 150, True),
}


def list_pairs(layout: str, root: str, split: str) -> List[Tuple[str, str]]:
    """(image, label) paths of one split, sorted. Raises DataError for a missing folder, an empty split, or an
    image without a label / a label without an image."""
    img_dir, img_sfx, lab_dir, lab_sfx = LAYOUTS[layout][:4]
    images_root, labels_root = os.path.join(root, img_dir, split), os.path.join(root, lab_dir, split)
    for d, what in ((images_root, "images"), (labels_root, "labels")):
        if not os.path.isdir(d):
            raise DataError(f"{layout} {what} folder {d} not found: data_dir must hold {img_dir}/{split}/ and "
                            f"{lab_dir}/{split}/ (see docs/segmentation.md for the layout).")
    # Cityscapes keeps one folder per city; ADE20K is flat.
    pattern = "*/*" if layout == "cityscapes" else "*"
    images = sorted(glob.glob(os.path.join(images_root, pattern + img_sfx)))
    labels = sorted(glob.glob(os.path.join(labels_root, pattern + lab_sfx)))
    if not images:
        raise DataError(f"no {pattern + img_sfx} images under {images_root}; is data_dir the dataset root?")
    special = special_files(images + labels)  # from stat alone: reading a FIFO would block the run forever
    if special:
        (path, why), more = special[0], len(special) - 1
        raise DataError(f"{path}: {why}{f' ({more} more such file(s))' if more else ''}. Remove it, or replace it "
                        f"with the image file it stands for.")

    def key(path, base, sfx):
        return os.path.relpath(path, base)[:-len(sfx)]

    label_of = {key(p, labels_root, lab_sfx): p for p in labels}
    image_keys = {key(p, images_root, img_sfx) for p in images}
    missing = [p for p in images if key(p, images_root, img_sfx) not in label_of]
    if missing:
        expected = os.path.join(labels_root, key(missing[0], images_root, img_sfx) + lab_sfx)
        how = " (cityscapesscripts' createTrainIdLabelImgs makes the labelTrainIds files)" \
            if layout == "cityscapes" else ""
        raise DataError(f"{missing[0]} has no label ({expected} is missing)"
                        f"{f'; {len(missing) - 1} more images lack theirs' if len(missing) > 1 else ''}. Add the "
                        f"labels{how} or remove those images.")
    orphans = [p for k, p in label_of.items() if k not in image_keys]
    if orphans:
        raise DataError(f"{orphans[0]} is a label without an image"
                        f"{f' ({len(orphans) - 1} more)' if len(orphans) > 1 else ''}: image and label names do not "
                        f"pair up. Remove it or add its image.")
    return [(p, label_of[key(p, images_root, img_sfx)]) for p in images]


def read_image(path: str) -> np.ndarray:
    """RGB uint8 (H, W, 3). 16-bit greyscale PNGs are scaled to 8 bits (PIL's convert would clip every value above
    255 to white); other modes PIL cannot map to RGB faithfully (32-bit int, float) are refused."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            grey = (np.asarray(im, np.float32) / 257.0 + 0.5).astype(np.uint8)  # 65535 -> 255
            return np.repeat(grey[:, :, None], 3, axis=2)
        if im.mode in ("I", "F"):
            raise DataError(f"{path} is a {'32-bit integer' if im.mode == 'I' else 'floating-point'} image (PIL "
                            f"mode {im.mode}); images must be 8-bit or 16-bit RGB or greyscale: convert it.")
        return np.asarray(im.convert("RGB"))


def read_label(path: str, reduce_zero_label: bool = False) -> np.ndarray:
    """Class indices uint8 (H, W); with reduce_zero_label 0 -> 255 and v -> v - 1 (255 stays 255)."""
    with Image.open(path) as im:
        label = np.array(im)
    if label.ndim != 2:
        raise DataError(f"{path} is a {label.shape[-1]}-channel image; labels are single-channel PNGs of class "
                        f"indices (for Cityscapes the *_gtFine_labelTrainIds.png files, not *_color.png).")
    label = label.astype(np.int64)
    if reduce_zero_label:
        label = np.where(label == 0, IGNORE, np.where(label == IGNORE, IGNORE, label - 1))
    return label.astype(np.uint8) if label.max(initial=0) <= 255 and label.min(initial=0) >= 0 else label


def _pair_problem(image_path: str, size, label_path: str, label: np.ndarray, num_classes: int,
                  reduce_zero_label: bool) -> Optional[str]:
    """What is wrong with a decoded label against its image's (w, h) size, or None."""
    if (label.shape[1], label.shape[0]) != tuple(size):
        return (f"{image_path} is {size[0]}x{size[1]} but its label {label_path} is {label.shape[1]}x"
                f"{label.shape[0]}; image and label must have the same size")
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.size or (values < 0).any():
        shown = ", ".join(str(int(v)) for v in (bad[:5] if bad.size else values[values < 0][:5]))
        raw = " (after reduce_zero_label's shift by -1)" if reduce_zero_label else ""
        return (f"{label_path} holds label value(s) {shown}{raw} outside [0, {num_classes}) and not the ignore "
                f"index {IGNORE}; num_classes is {num_classes}")
    return None


def _check_one(pair, num_classes: int, reduce_zero_label: bool) -> Tuple[Optional[str], int]:
    """(problem or None, labelled pixels of the pair)."""
    image_path, label_path = pair
    try:
        with Image.open(image_path) as im:
            size = im.size
            im.verify()  # reads the whole file's structure (PNG: every chunk's checksum) without decoding
    except Exception as e:  # noqa: BLE001
        reason = str(e).splitlines()[0] if str(e) else ""
        return f"{image_path} cannot be read as an image ({type(e).__name__}: {reason})", 0
    try:
        label = read_label(label_path, reduce_zero_label)
    except DataError as e:
        return str(e), 0
    except Exception as e:  # noqa: BLE001
        return f"{label_path} cannot be read as a label image ({type(e).__name__})", 0
    return (_pair_problem(image_path, size, label_path, label, num_classes, reduce_zero_label),
            int((label != IGNORE).sum()))


def check_pairs(pairs: Sequence[Tuple[str, str]], num_classes: int, reduce_zero_label: bool = False,
                workers: int = 2, split: str = "") -> int:
    """Open every pair (image structure, full label decode) and raise DataError on the first bad one, counting
    the others, or when no pixel of the split is labelled (all 255 after reduce_zero_label: nothing to learn or
    score). Returns the number of pairs checked."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda pair: _check_one(pair, num_classes, reduce_zero_label), pairs))
    problems = [p for p, _ in results if p]
    if problems:
        more = f" ({len(problems) - 1} more bad pair(s))" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}. Fix or remove the file(s) (or set num_classes), then run again.")
    if pairs and not sum(n for _, n in results):
        zero = (" (ade20k's reduce_zero_label makes label 0, 'other', the ignore index: all-0 labels are empty)"
                if reduce_zero_label else "")
        raise DataError(f"no pixel of the {len(pairs)} labels of split {split or '?'!r} is labelled: every value is "
                        f"the ignore index {IGNORE}{zero}. Training or scoring on it means nothing; check the labels "
                        f"and the dataset setting.")
    return len(pairs)


# ---------------------------------------------------------------------------------------------- transforms

def rescale_size(w: int, h: int, scale: Sequence[int]) -> Tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with the long edge <= max(scale) and the short edge <=
    min(scale). Returns (new_w, new_h)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(w, h), short_edge / min(w, h))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def normalize(img: np.ndarray, mean, std) -> np.ndarray:
    """uint8/float (H, W, 3) RGB -> float32 (3, H, W)."""
    img = (np.asarray(img, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def eval_preprocess(img: np.ndarray, scale: Optional[Sequence[int]], mean, std) -> np.ndarray:
    """The evaluation's preprocessing (mmseg's test pipeline): RGB uint8 (H, W, 3) resized to `scale` (w, h),
    aspect kept (None: its own size), then normalized -> float32 (3, H', W'). Predictions go back to (H, W)."""
    if scale:
        size = tuple(max(1, n) for n in rescale_size(img.shape[1], img.shape[0], scale))  # a 1-pixel side stays 1
        if size != (img.shape[1], img.shape[0]):
            img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    return normalize(img, mean, std)


def _resize_pair(img, label, size):
    w, h = size
    img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return img, label


class TrainTransform:
    """(RGB uint8 HWC, label uint8 HW) -> (float32 CHW normalized crop, int32 HW label), mmseg's train pipeline.

    img_scale (w, h) and ratio_range: RandomResize; crop_size (h, w): RandomCrop with cat_max_ratio, then padded
    to crop_size; hflip: flip probability; photometric: PhotoMetricDistortion."""

    def __init__(self, img_scale, ratio_range, crop_size, cat_max_ratio=0.75, hflip=0.5, photometric=True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=0, rank=0):
        self.img_scale, self.ratio_range = tuple(img_scale), tuple(ratio_range)
        self.crop_h, self.crop_w = crop_size
        self.cat_max_ratio, self.hflip, self.photometric = cat_max_ratio, hflip, photometric
        self.mean, self.std = mean, std
        self.seed, self.rank = seed, rank
        self._count = itertools.count()

    def __call__(self, img, label, key=None):
        """key: what makes this draw's randomness (the loader passes (image index, times it was read), so a run
        is reproducible whatever order the pipeline's threads run in); default: a call counter."""
        key = (next(self._count),) if key is None else tuple(key)
        rng = np.random.default_rng([self.seed, self.rank, *key])
        img, label = np.asarray(img), np.asarray(label)
        ratio = rng.uniform(*self.ratio_range)
        target = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
        img, label = _resize_pair(img, label, rescale_size(img.shape[1], img.shape[0], target))
        img, label = self._crop(img, label, rng)
        if rng.random() < self.hflip:
            img, label = img[:, ::-1], label[:, ::-1]
        if self.photometric:
            img = photometric_distortion(img, rng)
        img = normalize(img, self.mean, self.std)
        h, w = label.shape
        out_img = np.zeros((3, self.crop_h, self.crop_w), np.float32)
        out_lab = np.full((self.crop_h, self.crop_w), IGNORE, np.int32)
        out_img[:, :h, :w], out_lab[:h, :w] = img, label
        return out_img, out_lab

    def _crop(self, img, label, rng):
        h, w = label.shape
        ch, cw = min(self.crop_h, h), min(self.crop_w, w)
        for _ in range(10):
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            if self.cat_max_ratio >= 1.0:
                break
            crop = label[y:y + ch, x:x + cw]
            counts = np.bincount(crop[crop != IGNORE].ravel().astype(np.int64))
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return img[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def photometric_distortion(img: np.ndarray, rng) -> np.ndarray:
    """mmseg's PhotoMetricDistortion: brightness +-32, contrast 0.5-1.5 (before or after the HSV part),
    saturation 0.5-1.5, hue +-18 degrees (of 180), each with probability 0.5."""
    img = img.astype(np.float32)

    def contrast(x):
        return np.clip(x * rng.uniform(0.5, 1.5), 0, 255) if rng.random() < 0.5 else x

    if rng.random() < 0.5:
        img = np.clip(img + rng.uniform(-32, 32), 0, 255)
    contrast_first = rng.random() < 0.5
    if contrast_first:
        img = contrast(img)
    sat, hue = rng.random() < 0.5, rng.random() < 0.5
    if sat or hue:
        hsv = np.asarray(Image.fromarray(img.astype(np.uint8)).convert("HSV")).astype(np.float32)
        if sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        if hue:  # PIL's hue runs 0-255 for 360 degrees; mmseg's (OpenCV's) 0-180
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19) * 256.0 / 180.0) % 256
        img = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")).astype(np.float32)
    if not contrast_first:
        img = contrast(img)
    return img.astype(np.uint8)


# ------------------------------------------------------------------------------------------------- loaders

class _PairSource:
    """Decoded (image, label) by index; with a transform, transformed with randomness keyed by (index, times this
    index was read), so augmentations do not depend on the order the pipeline's threads run in."""

    def __init__(self, pairs, reduce_zero_label: bool, transform=None, num_classes: int = IGNORE):
        self.pairs, self.reduce_zero_label, self.transform = list(pairs), reduce_zero_label, transform
        self.num_classes = num_classes
        self.reads = [itertools.count() for _ in self.pairs]
        self.error: Optional[DataError] = None  # the first bad pair met (check_data off): the tool reports it

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        # With check_data off this is the only check: a bad pair is kept as one DataError naming the file, which
        # the tool reports instead of the pages MindSpore's pipeline wraps an exception in.
        image_path, label_path = self.pairs[i]
        try:
            img, label = read_image(image_path), read_label(label_path, self.reduce_zero_label)
            problem = _pair_problem(image_path, (img.shape[1], img.shape[0]), label_path, label, self.num_classes,
                                    self.reduce_zero_label)
        except DataError as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001  (PIL: truncated or unreadable files)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            problem = f"{image_path} or its label {label_path} cannot be read ({type(e).__name__}: {reason})"
        if problem:
            self.error = self.error or DataError(f"{problem}. Fix or remove the file (check_data: True finds every "
                                                 f"such pair before work)")
            raise self.error
        if self.transform is None:
            return img, label
        return self.transform(img, label, key=(int(i), next(self.reads[i])))


class _EvalSource(_PairSource):
    """(normalized image resized to eval_scale, original label, index): prediction goes back to label size."""

    def __init__(self, pairs, reduce_zero_label, eval_scale, mean, std, num_classes: int = IGNORE):
        super().__init__(pairs, reduce_zero_label, num_classes=num_classes)
        self.eval_scale, self.mean, self.std = eval_scale, mean, std

    def __getitem__(self, i):
        img, label = super().__getitem__(i)
        return eval_preprocess(img, self.eval_scale, self.mean, self.std), label.astype(np.int32), np.array(i, np.int32)


def build_seg_train_loader(pairs, cfg, rank: int = 0, group_size: int = 1):
    """Endless shuffled batches (image float32 (N, 3, crop_h, crop_w), label int32 (N, crop_h, crop_w)); each rank
    reads its own shard. Returns (dataset, samples in this shard)."""
    import mindspore.dataset as ds

    if len(pairs) < group_size:
        raise DataError(f"{len(pairs)} training images cannot be shared by {group_size} devices.")
    transform = TrainTransform(cfg.img_scale, cfg.ratio_range, cfg.crop_size, cfg.cat_max_ratio, cfg.hflip,
                               cfg.photometric, cfg.mean, cfg.std, seed=cfg.seed, rank=rank)
    # Decoding and augmentation run in the source's threads (GeneratorDataset workers; PIL and NumPy release the
    # GIL for the heavy parts), keyed per image so a run is reproducible.
    source = _PairSource(pairs, cfg.reduce_zero_label, transform, cfg.num_classes)
    data = ds.GeneratorDataset(source, column_names=["image", "label"],
                               shuffle=cfg.shuffle, num_shards=group_size if group_size > 1 else None,
                               shard_id=rank if group_size > 1 else None,
                               num_parallel_workers=cfg.num_parallel_workers, python_multiprocessing=False)
    shard = len(pairs) // group_size
    if shard < cfg.batch_size:
        raise DataError(f"batch_size {cfg.batch_size} is larger than this device's {shard} training images; "
                        f"lower batch_size.")
    loader = data.batch(cfg.batch_size, drop_remainder=True).repeat()
    loader.pair_source = source  # its .error names a bad pair the pipeline stopped on
    return loader, shard


def build_seg_eval_loader(pairs, cfg, rank: int = 0, group_size: int = 1):
    """One image per item (sizes differ): (image (3, H', W') float32 resized to eval_scale, label (H, W) int32,
    index). Unshuffled; each rank reads its shard (pad images are not added: every image counts once)."""
    import mindspore.dataset as ds

    source = _EvalSource(pairs, cfg.reduce_zero_label, cfg.eval_scale, cfg.mean, cfg.std, cfg.num_classes)
    if group_size > 1:  # round-robin shards (image i on rank i % group_size), no repeats: the matrices add up
        mine = [p for i, p in enumerate(pairs) if i % group_size == rank]
        source = _EvalSource(mine, cfg.reduce_zero_label, cfg.eval_scale, cfg.mean, cfg.std, cfg.num_classes)
    loader = ds.GeneratorDataset(source, column_names=["image", "label", "index"], shuffle=False,
                                 num_parallel_workers=min(cfg.num_parallel_workers, 2),
                                 python_multiprocessing=False)
    loader.pair_source = source  # its .error names a bad pair the pipeline stopped on
    return loader
