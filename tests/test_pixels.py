"""mindcv_ext.data.pixels (an .onnx file's preprocessing without MindSpore) against mindcv's evaluation
transforms run by MindSpore: the same pixels on images of odd sizes and modes, as infer.py feeds them."""
import io

import numpy as np
import pytest
from PIL import Image

from mindcv_ext.data.loaders import eval_transforms
from mindcv_ext.data.pixels import eval_pixels

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless not installed (optional 'onnx' extra)")

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _encoded():
    """Smooth random images (JPEG keeps them close to what was drawn) of sizes that round both ways, in the
    modes users have: RGB JPEG / PNG / BMP, grey JPEG, RGBA and palette PNG."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(375, 500), (256, 343), (343, 256), (97, 131), (40, 90), (64, 64)]):
        rgb = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (5, 5), 1.5)
        fmt = ("JPEG", "PNG", "BMP")[i % 3]
        out.append((f"{h}x{w} {fmt}", Image.fromarray(rgb), fmt))
    out.append(("grey JPEG", Image.fromarray(rng.integers(0, 256, (120, 90)).astype(np.uint8)), "JPEG"))
    out.append(("RGBA PNG", Image.fromarray(rng.integers(0, 256, (120, 90, 4)).astype(np.uint8), "RGBA"), "PNG"))
    out.append(("palette PNG", Image.fromarray(rng.integers(0, 256, (90, 120, 3)).astype(np.uint8)).convert("P"),
                "PNG"))
    encoded = []
    for name, im, fmt in out:
        buf = io.BytesIO()
        im.save(buf, fmt)
        encoded.append((name, buf.getvalue()))
    return encoded


@pytest.mark.parametrize("interpolation,levels", [("bilinear", 0), ("nearest", 0), ("area", 0), ("bicubic", 1)])
@pytest.mark.parametrize("size,crop_pct", [(224, 0.875), (64, 1.0)])
def test_the_same_pixels_as_mindspore_eval_transforms(interpolation, levels, size, crop_pct):
    ops = eval_transforms(size, crop_pct, interpolation, MEAN, STD)
    for name, data in _encoded():
        want = np.frombuffer(data, np.uint8).copy()
        for op in ops:
            want = op(want)
        got = eval_pixels(data, size, crop_pct, interpolation, MEAN, STD)
        assert got.shape == want.shape == (3, size, size), name
        diff = np.abs(got - want) * np.asarray(STD, np.float32)[:, None, None]  # in levels of 0-255
        assert diff.max() <= levels + 1e-3, (name, float(diff.max()))


def test_filters_without_an_opencv_counterpart_are_refused():
    with pytest.raises(ValueError, match="not available without MindSpore"):
        eval_pixels(_encoded()[0][1], 224, 0.875, "pilcubic", MEAN, STD)
