"""A small procedural image-classification set, written as real JPEG files in the ImageFolder layout.

It lets the whole train -> re-parameterize -> validate chain run on a fresh machine with no dataset at hand.
Each class is a distinct pattern (shape or texture); position, scale, rotation, colours, lighting and noise are
random, so a model has to learn the pattern rather than a colour or a pixel position.
"""
import contextlib
import fcntl
import json
import os
import shutil
import time

import numpy as np
from PIL import Image

__all__ = ["ensure_demo_dataset", "DEMO_CLASSES"]

_MARKER = ".demo_dataset.json"      # written last: its presence means the set is complete
_IN_PROGRESS = ".demo_generating"   # written first: a leftover means an interrupted run of ours
_LOCK = ".demo_dataset.lock"
_FORMAT_VERSION = 1                 # bump when the drawing code changes, so old sets are not mistaken for new ones
_SUPERSAMPLE = 2                    # draw at 2x and average down: smooth edges like a photographed object


def _rotate(xx, yy, angle):
    c, s = np.cos(angle), np.sin(angle)
    return c * xx + s * yy, -s * xx + c * yy


def _circle(xx, yy, rng):
    return (xx ** 2 + yy ** 2 < 1.0).astype(np.float32)


def _square(xx, yy, rng):
    u, v = _rotate(xx, yy, rng.uniform(-0.35, 0.35))
    return ((np.abs(u) < 0.85) & (np.abs(v) < 0.85)).astype(np.float32)


def _triangle(xx, yy, rng):
    u, v = _rotate(xx, yy, rng.uniform(-0.35, 0.35))
    # apex up (image y grows downwards): inside if below the two slanted edges and above the base
    return ((v < 0.6) & (v > -1.0 + 1.7 * np.abs(u))).astype(np.float32)


def _ring(xx, yy, rng):
    r = np.sqrt(xx ** 2 + yy ** 2)
    inner = rng.uniform(0.45, 0.65)
    return ((r < 1.0) & (r > inner)).astype(np.float32)


def _cross(xx, yy, rng):
    u, v = _rotate(xx, yy, rng.uniform(-0.3, 0.3))
    w = rng.uniform(0.22, 0.35)
    bar = lambda a, b: (np.abs(a) < w) & (np.abs(b) < 1.0)
    return (bar(u, v) | bar(v, u)).astype(np.float32)


def _stripes(angle_center):
    def draw(xx, yy, rng):
        u, v = _rotate(xx, yy, angle_center + rng.uniform(-0.14, 0.14))
        period = rng.uniform(0.35, 0.7)
        return (np.sin(2 * np.pi * v / period + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)
    return draw


def _checker(xx, yy, rng):
    u, v = _rotate(xx, yy, rng.uniform(-0.2, 0.2))
    period = rng.uniform(0.5, 0.9)
    phase = rng.uniform(0, period, size=2)
    return ((np.floor((u + phase[0]) / period) + np.floor((v + phase[1]) / period)) % 2).astype(np.float32)


def _dots(xx, yy, rng):
    period = rng.uniform(0.45, 0.7)
    phase = rng.uniform(0, period, size=2)
    fu = ((xx + phase[0]) / period) % 1.0 - 0.5
    fv = ((yy + phase[1]) / period) % 1.0 - 0.5
    return (fu ** 2 + fv ** 2 < rng.uniform(0.05, 0.09)).astype(np.float32)


def _gradient(xx, yy, rng):
    u, _ = _rotate(xx, yy, rng.uniform(0, 2 * np.pi))
    return np.clip(0.5 + u / 2.5, 0.0, 1.0).astype(np.float32)


def _bullseye(xx, yy, rng):
    r = np.sqrt(xx ** 2 + yy ** 2)
    return ((r < 1.0) & (np.floor(r * 4) % 2 == 0)).astype(np.float32)


# (name, drawer, is_texture). Shapes are drawn in object coordinates (unit radius, random centre and scale);
# textures fill the frame. Diagonal stripes come after the first ten: with flips and rotations they are the
# class most easily confused with the straight stripes, so the default 10-class set leaves them out.
DEMO_CLASSES = (
    ("circle", _circle, False),
    ("square", _square, False),
    ("triangle", _triangle, False),
    ("ring", _ring, False),
    ("cross", _cross, False),
    ("hstripes", _stripes(0.0), True),
    ("vstripes", _stripes(np.pi / 2), True),
    ("checker", _checker, True),
    ("dots", _dots, True),
    ("gradient", _gradient, True),
    ("bullseye", _bullseye, False),
    ("dstripes", _stripes(np.pi / 4), True),
)


def _random_colours(rng):
    """Foreground and background colours far enough apart that the pattern is always visible."""
    while True:
        fg, bg = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(fg - bg) > 120:
            return fg, bg


def _draw(class_idx: int, size: int, rng: np.random.Generator) -> np.ndarray:
    _, drawer, is_texture = DEMO_CLASSES[class_idx]
    n = size * _SUPERSAMPLE
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0  # [-1, 1] across the frame
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    if is_texture:
        scale, cx, cy = rng.uniform(0.8, 1.25), 0.0, 0.0
    else:
        scale = rng.uniform(0.3, 0.6)
        cx, cy = rng.uniform(-1 + scale, 1 - scale, size=2)
    mask = drawer((xx - cx) / scale, (yy - cy) / scale, rng)
    fg, bg = _random_colours(rng)
    img = mask[..., None] * fg + (1.0 - mask[..., None]) * bg
    # uneven lighting and sensor noise, so neither a flat colour nor a single pixel gives the class away
    light = 1.0 + rng.uniform(-0.25, 0.25) * xx + rng.uniform(-0.25, 0.25) * yy
    img = img * light[..., None]
    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    img = img + rng.normal(0.0, rng.uniform(4.0, 16.0), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _class_dir(i: int) -> str:
    return f"{i:02d}_{DEMO_CLASSES[i][0]}"  # numeric prefix keeps the sorted (= label) order stable


def _generate(root: str, params: dict) -> dict:
    counts = {}
    for split_id, (split, per_class) in enumerate((("train", params["train_per_class"]),
                                                   ("val", params["val_per_class"]))):
        for c in range(params["num_classes"]):
            d = os.path.join(root, split, _class_dir(c))
            os.makedirs(d, exist_ok=True)
            for i in range(per_class):
                # one generator per image, keyed by its identity: the set is the same whatever the order
                rng = np.random.default_rng([params["seed"], split_id, c, i])
                Image.fromarray(_draw(c, params["image_size"], rng)).save(
                    os.path.join(d, f"{c:02d}_{i:05d}.jpg"), format="JPEG", quality=90)
        counts[split] = per_class * params["num_classes"]
    return counts


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(root: str):
    # several ranks of one msrun job call this at once: one generates, the others wait and reuse
    with open(os.path.join(root, _LOCK), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_demo_dataset(root: str, num_classes: int = 10, image_size: int = 64, train_per_class: int = 300,
                        val_per_class: int = 50, seed: int = 0) -> str:
    """Create the demo set under `root` unless a complete one with the same settings is already there.

    Layout: root/train/<NN_name>/*.jpg and root/val/<NN_name>/*.jpg (ImageFolder; labels follow the sorted
    class directory names). Deterministic from `seed`. Returns the absolute root, to pass as `data_dir`.
    An interrupted generation is detected (no completion marker) and redone from scratch; a directory that
    already holds other data is never overwritten.
    """
    if not 2 <= int(num_classes) <= len(DEMO_CLASSES):
        raise ValueError(f"The demo dataset has between 2 and {len(DEMO_CLASSES)} classes; got num_classes="
                         f"{num_classes}. Use a real ImageFolder dataset for more classes.")
    if int(image_size) < 16:
        raise ValueError(f"image_size={image_size} is too small for the demo patterns; use 16 or more.")
    if int(train_per_class) < 1 or int(val_per_class) < 1:
        raise ValueError(f"train_per_class and val_per_class must be >= 1; got {train_per_class}, "
                         f"{val_per_class}.")
    params = dict(format_version=_FORMAT_VERSION, num_classes=int(num_classes), image_size=int(image_size),
                  train_per_class=int(train_per_class), val_per_class=int(val_per_class), seed=int(seed))
    root = os.path.abspath(os.fspath(root))
    os.makedirs(root, exist_ok=True)
    marker, in_progress = os.path.join(root, _MARKER), os.path.join(root, _IN_PROGRESS)
    with _locked(root):
        if os.path.exists(marker):
            with open(marker) as f:
                found = json.load(f).get("params")
            if found == params:
                return root
            raise ValueError(f"{root} already holds a demo dataset made with {found}, not the requested {params}. "
                             f"Delete {root} or pass another root.")
        splits = [os.path.join(root, s) for s in ("train", "val")]
        if not os.path.exists(in_progress) and any(os.path.exists(s) for s in splits):
            raise ValueError(f"{root} already has train/ or val/ that ensure_demo_dataset did not make; refusing to "
                             f"overwrite them. Pass an empty or new directory as the demo root.")
        _write_atomic(in_progress, json.dumps(params))
        for s in splits:  # leftovers of an interrupted run of ours: start clean
            shutil.rmtree(s, ignore_errors=True)
        # ~20 s for the default 3,500 files: say so, or a first run looks stuck before training starts
        total = params["num_classes"] * (params["train_per_class"] + params["val_per_class"])
        print(f"demo dataset: generating {total:,} JPEG images ({params['num_classes']} classes, "
              f"{params['image_size']}x{params['image_size']}) into {root} (first use only) ...", flush=True)
        start = time.perf_counter()
        counts = _generate(root, params)
        _write_atomic(marker, json.dumps({"params": params, "num_samples": counts,
                                          "classes": [_class_dir(c) for c in range(params["num_classes"])]},
                                         indent=1))
        os.remove(in_progress)
        print(f"demo dataset: {counts['train']:,} train + {counts['val']:,} val images written in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    return root
