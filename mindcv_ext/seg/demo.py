"""A generated segmentation set in the Cityscapes layout, labelled per pixel: the CPU demo's and the tests' data.

Each canvas has a lit, noisy background (class 0) and three to five overlapping objects: a silhouette
(rectangle, circle, square, triangle, cross) filled with a texture (horizontal, vertical or diagonal stripes, a
checkerboard, dots), all drawn by the classification demo's pattern functions (mindcv_ext/data/demo.py) with
random colours, sizes, positions and pattern scales. An object's class is its texture, whatever its silhouette
and colours (like materials), so a pixel's class needs its neighbourhood, and the boundaries need the pixel. A
pixel's label is the top object covering at least half of it (the drawing is supersampled 2x). Files:

    <root>/leftImg8bit/{train,val}/<city>/<city>_<nnnnnn>_000019_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<nnnnnn>_000019_gtFine_labelTrainIds.png
"""
import fcntl
import json
import os
import shutil
import time

import numpy as np
from PIL import Image

from ..data.demo import DEMO_CLASSES as _PATTERNS

__all__ = ["SEG_DEMO_CLASSES", "ensure_seg_demo", "draw_canvas"]

SEG_DEMO_CLASSES = ("background", "hstripes", "vstripes", "dstripes", "checker", "dots")
_TEXTURES = SEG_DEMO_CLASSES[1:]
_SILHOUETTES = ("rectangle", "circle", "square", "triangle", "cross")
_DRAW = {name: drawer for name, drawer, _ in _PATTERNS}
_CITIES = ("aachen", "bremen")
_MARKER = ".seg_demo.json"
_VERSION = 2


def _colours(rng):
    while True:
        fg, bg = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(fg - bg) > 120:
            return fg, bg


def draw_canvas(height: int, width: int, rng: np.random.Generator):
    """(RGB uint8 (H, W, 3), labels uint8 (H, W)) of one canvas."""
    s = 2  # supersampling
    ys, xs = np.meshgrid(np.arange(height * s) + 0.5, np.arange(width * s) + 0.5, indexing="ij")
    ys, xs = ys / s, xs / s  # pixel units
    img = np.empty((height * s, width * s, 3), np.float32)
    img[:] = rng.uniform(0, 255, 3)
    labels = np.zeros((height, width), np.uint8)

    def paint(cover, colour_fg, colour_bg, pattern, class_id):
        """cover: where this layer is (0/1 at 2x); pattern: foreground (1) vs background (0) inside it."""
        nonlocal img
        colour = pattern[..., None] * colour_fg + (1 - pattern[..., None]) * colour_bg
        img = np.where(cover[..., None] > 0, colour, img)
        covered = cover.reshape(height, s, width, s).mean(axis=(1, 3)) >= 0.5
        labels[covered] = class_id

    for _ in range(rng.integers(3, 6)):  # objects: a silhouette filled with its class's texture
        name = _TEXTURES[rng.integers(len(_TEXTURES))]
        shape = _SILHOUETTES[rng.integers(len(_SILHOUETTES))]
        r = rng.uniform(height / 7, height / 3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        u, v = (xs - cx) / r, (ys - cy) / r
        if shape == "rectangle":
            a = rng.uniform(0.5, 1.0)
            cover = ((np.abs(u) < 1 / a) & (np.abs(v) < a)).astype(np.float32)
        else:
            cover = _DRAW[shape](u, v, rng)
        unit = rng.uniform(14, 20)  # pixels per pattern unit: stripes every ~5-14 px
        pattern = _DRAW[name]((xs - cx) / unit, (ys - cy) / unit, rng)
        fg, bg = _colours(rng)
        paint(cover, fg, bg, pattern, SEG_DEMO_CLASSES.index(name))
    light = 1.0 + rng.uniform(-0.25, 0.25) * (xs / width - 0.5) * 2 + rng.uniform(-0.25, 0.25) * (ys / height - 0.5) * 2
    img = (img * light[..., None]).reshape(height, s, width, s, 3).mean(axis=(1, 3))
    img = img + rng.normal(0.0, rng.uniform(3.0, 10.0), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def ensure_seg_demo(root: str, train_images: int = 160, val_images: int = 24, height: int = 128, width: int = 256,
                    seed: int = 0) -> str:
    """Create the set under `root` unless the same one is there already (a marker records the settings; the set
    is written to a temporary folder and renamed, so an interrupted run leaves no half set). Returns the
    absolute root."""
    params = dict(version=_VERSION, train_images=int(train_images), val_images=int(val_images), height=int(height),
                  width=int(width), seed=int(seed))
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, _MARKER)
    with open(os.path.join(root, ".seg_demo.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several ranks: one writes, the others wait and reuse
        if os.path.exists(marker):
            with open(marker) as f:
                found = json.load(f)
            if found == params:
                return root
            raise ValueError(f"{root} holds a segmentation demo set made with {found}, not {params}; delete it or "
                             f"pick another data_dir.")
        if any(os.path.exists(os.path.join(root, d)) for d in ("leftImg8bit", "gtFine")):
            raise ValueError(f"{root} already holds leftImg8bit/ or gtFine/ not made by the demo; refusing to "
                             f"overwrite it. Pick another data_dir.")
        start = time.perf_counter()
        print(f"segmentation demo set: drawing {train_images} + {val_images} canvases ({width}x{height}) into "
              f"{root} (first use only) ...", flush=True)
        tmp = os.path.join(root, ".generating")
        shutil.rmtree(tmp, ignore_errors=True)
        for split_id, (split, count) in enumerate((("train", train_images), ("val", val_images))):
            for i in range(count):
                city = _CITIES[i % len(_CITIES)]
                rng = np.random.default_rng([seed, split_id, i])
                img, lab = draw_canvas(height, width, rng)
                stem = f"{city}_{i:06d}_000019"
                for sub, suffix, data in (("leftImg8bit", "_leftImg8bit.png", img),
                                          ("gtFine", "_gtFine_labelTrainIds.png", lab)):
                    d = os.path.join(tmp, sub, split, city)
                    os.makedirs(d, exist_ok=True)
                    Image.fromarray(data).save(os.path.join(d, stem + suffix))
        for sub in ("leftImg8bit", "gtFine"):
            os.replace(os.path.join(tmp, sub), os.path.join(root, sub))
        os.rmdir(tmp)
        with open(marker + ".tmp", "w") as f:
            json.dump(params, f)
        os.replace(marker + ".tmp", marker)
        print(f"segmentation demo set: written in {time.perf_counter() - start:.1f} s", flush=True)
    return root
