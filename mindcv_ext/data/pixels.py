"""validate.py's evaluation pixels without MindSpore, for a machine that serves an .onnx file with ONNX Runtime only
(scripts/infer.py on an .onnx file uses this; a checkpoint uses eval_transforms, mindcv's MindSpore pipeline).

mindcv's evaluation transforms are MindSpore's Decode (libjpeg-turbo / libpng), Resize of the short side to
floor(image_size / crop_pct) (OpenCV's cv2.resize on CPU), CenterCrop (offset (size - crop) // 2) and Normalize.
PIL decodes with the same libraries and OpenCV (opencv-python-headless, in the `onnx` extra) resizes the same way,
so the pixels are the same bit for bit with bilinear / linear, nearest and area, and within one level (of 255)
with bicubic / cubic (tests/test_pixels.py compares both on JPEG, PNG, BMP, grey, RGBA and palette images of odd
sizes). MindSpore's pilcubic and antialias have no OpenCV counterpart and are refused here.
"""
import io
from typing import Sequence

import numpy as np

__all__ = ["FILTERS", "check_filter", "eval_pixels"]

FILTERS = ("bilinear", "linear", "nearest", "bicubic", "cubic", "area")


def check_filter(interpolation: str) -> str:
    name = str(interpolation).lower()
    if name not in FILTERS:
        raise ValueError(f"interpolation {interpolation!r} is not available without MindSpore (an .onnx file's "
                         f"preprocessing runs in PIL + OpenCV); use one of {', '.join(FILTERS)}")
    return name


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ValueError("an .onnx file's preprocessing needs OpenCV: pip install -e \".[onnx]\" (it brings "
                         "opencv-python-headless)") from None
    return cv2


def eval_pixels(data: bytes, image_size: int, crop_pct: float, interpolation: str, mean: Sequence[float],
                std: Sequence[float]) -> np.ndarray:
    """Encoded image bytes -> normalized (3, image_size, image_size) float32, as eval_transforms makes them."""
    from PIL import Image

    cv2 = _cv2()
    flag = {"bilinear": cv2.INTER_LINEAR, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
            "bicubic": cv2.INTER_CUBIC, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}[check_filter(interpolation)]
    with Image.open(io.BytesIO(data)) as im:
        img = np.asarray(im.convert("RGB"))  # MindSpore's Decode: 3 channels, alpha dropped, palette expanded
    h, w = img.shape[:2]
    short = int(np.floor(image_size / crop_pct))
    nh, nw = (short, int(w * short / h)) if h <= w else (int(h * short / w), short)
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=flag)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    if top < 0 or left < 0:  # MindSpore pads a crop larger than the image; crop_pct <= 1 never asks for it
        raise ValueError(f"crop {image_size} is larger than the resized image {nh}x{nw}")
    img = img[top:top + image_size, left:left + image_size]
    out = (img.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
