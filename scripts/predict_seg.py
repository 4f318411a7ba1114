"""Segmentation masks for images, from a train_seg.py checkpoint (train or deploy form).

    python scripts/predict_seg.py -c configs/seg/demo_seg_cpu.yaml --ckpt_path outputs/seg_demo/best_deploy.ckpt \
        --image_path data/seg_demo/leftImg8bit/val/aachen [--output masks/] [--eval_mode slide]

For each image (a file, or every .png/.jpg/.jpeg/.bmp under a folder, recursively) it writes
<name>_mask.png: a palette PNG whose pixel values are the class indices (a label file) shown in the class
colours (Cityscapes' for 19 classes), and with --overlay > 0 <name>_overlay.png: the colours blended over the
image. Next to each input unless --output names a folder. Images are processed as validate_seg.py does: resized
to eval_scale (aspect kept), whole or sliding-window inference, logits resized back to the image's own size.
Every input is opened and the output place checked before the model is loaded.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import mindcv_ext  # noqa: E402,F401
from mindcv_ext import cli  # noqa: E402
from mindcv_ext.checkpoint import CheckpointError  # noqa: E402
from mindcv_ext.seg.config import load_seg_eval_config  # noqa: E402
from mindcv_ext.seg.data import normalize, palette_for, rescale_size  # noqa: E402
from mindcv_ext.seg.inference import predict_mask  # noqa: E402
from mindcv_ext.seg.model import load_for_inference  # noqa: E402
from mindcv_ext.training.config import ConfigError  # noqa: E402
from mindcv_ext.training.runtime import set_runtime  # noqa: E402

_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_OUR_SUFFIXES = ("_mask.png", "_overlay.png")


def find_images(path: str):
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConfigError(f"image_path {path!r} does not exist; pass an image file or a folder of images.")
    found = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names
                   if n.lower().endswith(_EXTENSIONS) and not n.endswith(_OUR_SUFFIXES))
    if not found:
        raise ConfigError(f"no {'/'.join(_EXTENSIONS)} images under {path}.")
    return found


def output_paths(image: str, output: str):
    stem = os.path.splitext(os.path.basename(image))[0]
    folder = output or os.path.dirname(os.path.abspath(image))
    return os.path.join(folder, stem + "_mask.png"), os.path.join(folder, stem + "_overlay.png")


def _check_inputs(images, output):
    for path in images:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{path} cannot be read as an image ({type(e).__name__}); remove it or pass another "
                              f"image_path.") from None
    if output:
        if os.path.exists(output) and not os.path.isdir(output):
            raise ConfigError(f"output {output} is a file; pass a folder (it is created when missing).")
        os.makedirs(output, exist_ok=True)
    folders = {output} if output else {os.path.dirname(os.path.abspath(p)) for p in images}
    for folder in folders:
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"cannot write masks into {folder}; pass --output <a writable folder>.")


def save_mask(mask: np.ndarray, palette: np.ndarray, path: str) -> None:
    """Palette PNG: the values are class indices, shown in the class colours (255 = ignore, black)."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[:len(palette) - 1] = palette[:-1]
    im.putpalette(flat.reshape(-1).tolist())
    tmp = path + ".tmp.png"
    im.save(tmp)
    os.replace(tmp, path)


def main(argv=None) -> int:
    cfg = load_seg_eval_config(argv, "predict_seg.py")
    if not cfg.image_path:
        raise ConfigError("predict_seg.py needs --image_path (an image or a folder of images).")
    images = find_images(cfg.image_path)
    _check_inputs(images, cfg.output)
    set_runtime(cfg, "Use --device_target CPU.")
    model, names, arch = load_for_inference(cfg)
    names = names or [str(i) for i in range(arch["num_classes"])]
    palette = palette_for(arch["num_classes"])
    print(f"{cfg.ckpt_path}: {arch['backbone']} + {arch['head']} ({'deploy' if arch['deploy'] else 'train'} form), "
          f"{len(images)} image(s), {cfg.eval_mode} inference. Colours: "
          + ", ".join(f"{n}=#{bytes(palette[i].tolist()).hex()}" for i, n in enumerate(names)), flush=True)
    t0 = time.time()
    for path in images:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        h, w = rgb.shape[:2]
        size = rescale_size(w, h, cfg.eval_scale)
        resized = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)) if size != (w, h) else rgb
        mask = predict_mask(model, normalize(resized, cfg.mean, cfg.std), out_size=(h, w), mode=cfg.eval_mode,
                            crop_size=cfg.eval_crop, stride=cfg.eval_stride)
        mask_path, overlay_path = output_paths(path, cfg.output)
        save_mask(mask, palette, mask_path)
        if cfg.overlay > 0:
            blend = (1 - cfg.overlay) * rgb + cfg.overlay * palette[np.minimum(mask, len(palette) - 1)]
            Image.fromarray(blend.astype(np.uint8)).save(overlay_path)
        shares = np.bincount(mask.ravel(), minlength=len(names)) / mask.size
        top = ", ".join(f"{names[i]} {100 * shares[i]:.0f}%" for i in np.argsort(-shares)[:3] if shares[i] > 0)
        print(f"{path} -> {mask_path} ({top})", flush=True)
    print(f"{len(images)} mask(s) written in {time.time() - t0:.1f} s", flush=True)
    return 0


def run(argv=None) -> int:
    """main() with the project's exit codes; what the command line runs (tests call it too)."""
    return cli.guarded(lambda: main(argv), "predict_seg.py", bad_input=(ConfigError, CheckpointError, FileNotFoundError))


if __name__ == "__main__":
    cli.run_tool(run, "predict_seg.py")  # signals: 130 / 143 with one line, also when blocked in native code
