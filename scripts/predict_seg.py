"""Segmentation masks for images, from a train_seg.py checkpoint (train or deploy form).

    python scripts/predict_seg.py --ckpt_path outputs/seg_demo/best.ckpt --image_path photos/ [--output masks/]
    python scripts/predict_seg.py -c configs/seg/demo_seg_cpu.yaml --ckpt_path best.ckpt --image_path photo.png

For each image (a file, or every image under a folder, recursively: the extensions infer.py reads) it writes
<name>_mask.png: a palette PNG whose pixel values are the class indices (a label file) shown in the class colours
(Cityscapes' for 19 classes), and with --overlay > 0 <name>_overlay.png: the colours blended over the image. Next
to each input, or under --output (a folder; the inputs' subfolders are kept, so s1/x.png and s2/x.png do not meet).

Images are predicted as validate_seg.py scores them (seg.inference.inference_segmentor): resized to eval_scale
(a recipe's img_scale; without one, their own size), whole or sliding-window inference (the window: the training
crop the checkpoint records), logits resized back to the image's size.

Nothing is replaced silently (mindcv_ext.outputs): a mask or overlay this tool wrote before (a PNG text mark) is
refreshed; any other existing file (a photo_mask.png of your own) needs --overwrite True; two inputs that would
write one file (a.png and a.jpg) are refused. Every input is opened and every output name checked before the
model is loaded, and --output is created only once the checkpoint has loaded. Special files (FIFOs, sockets) among
the images are skipped from their stat and counted. Exit status (mindcv_ext.cli): 0 done, 2 bad input before
any work (one line), 1 a failure mid-run such as a full disk (one line; masks written so far stay), 130 / 143.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import mindcv_ext  # noqa: E402,F401
from mindcv_ext import cli  # noqa: E402
from mindcv_ext.checkpoint import (CheckpointError, creatable_under, is_temp_name, make_temp,  # noqa: E402
                                   remove_temp_files)
from mindcv_ext.data.imagecheck import IMAGE_EXTENSIONS, find_images  # noqa: E402
from mindcv_ext.outputs import OutputError, OutputNames, png_mark, written_by  # noqa: E402
from mindcv_ext.seg.config import load_seg_eval_config  # noqa: E402
from mindcv_ext.seg.data import DataError, read_image  # noqa: E402
from mindcv_ext.seg.inference import inference_segmentor, init_segmentor  # noqa: E402
from mindcv_ext.config import ConfigError  # noqa: E402
from mindcv_ext.onnx_runtime import is_onnx  # noqa: E402

PROG = "predict_seg.py"
_OUR_SUFFIXES = ("_mask.png", "_overlay.png")
printable = cli.printable


def find_inputs(image_path: str):
    """(images, [(path, why)] special files skipped): the shared finder's list without this tool's own outputs
    (marked masks and overlays of an earlier run next to the inputs) and without temporaries of a save in
    progress or killed. A user's own *_mask.png is an input like any image."""
    images, skipped = find_images(image_path)
    keep = [p for p in images if not is_temp_name(p)
            and not (p.endswith(_OUR_SUFFIXES) and written_by(p) == PROG)]
    if not keep:
        raise ConfigError(f"no images under {image_path} (searched for {' '.join(IMAGE_EXTENSIONS)}, not counting "
                          f"this tool's masks and overlays).")
    return keep, skipped


def plan_outputs(images, image_path: str, output: str, overlay: bool, overwrite: bool):
    """[(image, mask path, overlay path or None)], every name claimed (mindcv_ext.outputs.OutputNames) before any
    work: collisions, a user's own file and a run's training state are refused now. Creates nothing."""
    if output:
        output = os.path.abspath(output)
        if os.path.exists(output) and not os.path.isdir(output):
            raise ConfigError(f"--output {output} is a file; pass a folder (it is created when missing).")
        existing, problem = creatable_under(output)
        if problem:
            raise ConfigError(f"--output {output} cannot be created: "
                              + (f"{existing} is a file." if problem == "file" else f"{existing} is not writable.")
                              + " Pass another folder.")
    root = image_path if os.path.isdir(image_path) else os.path.dirname(os.path.abspath(image_path))
    names, plan = OutputNames(PROG, overwrite, what="output"), []
    inputs = {os.path.realpath(p): p for p in images}
    for image in images:
        if output:  # the inputs' subfolders kept under --output
            folder = os.path.join(output, os.path.dirname(os.path.relpath(os.path.abspath(image),
                                                                          os.path.abspath(root))))
        else:
            folder = os.path.dirname(os.path.abspath(image))
            if not os.access(folder, os.W_OK):
                raise ConfigError(f"cannot write masks into {folder}; pass --output <a writable folder>.")
        stem = os.path.join(folder, os.path.splitext(os.path.basename(image))[0])
        for out in (stem + "_mask.png", stem + "_overlay.png"):  # even with --overwrite: it is read in this run
            if os.path.realpath(out) in inputs:
                raise ConfigError(f"{printable(image)}'s output {out} is also an input of this run; rename it or "
                                  f"pass --output <another folder>.")
        mask = names.claim(stem + "_mask.png", printable(image))
        plan.append((image, mask, names.claim(stem + "_overlay.png", printable(image)) if overlay else None))
    return plan


def check_images(images) -> None:
    """Open every image before the model loads: a damaged or undecodable file is bad input, named."""
    for path in images:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{path} cannot be read as an image ({type(e).__name__}); remove it or pass another "
                              f"image_path.") from None


def save_png(image: Image.Image, path: str) -> None:
    """Atomically (make_temp + rename: a kill leaves only a temporary that the next run removes and never reads),
    marked as this tool's output (a PNG text chunk), with an ordinary file mode."""
    tmp = make_temp(path, ".png")
    try:
        image.save(tmp, format="PNG", pnginfo=png_mark(PROG))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def mask_image(mask: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Palette PNG: the values are class indices, shown in the class colours (255 = ignore, black)."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[:len(palette) - 1] = palette[:-1]
    im.putpalette(flat.reshape(-1).tolist())
    return im


def prepare(argv):
    """Every check before any work, then the model: raises ConfigError / CheckpointError / OutputError."""

    cfg = load_seg_eval_config(argv, PROG)
    for note in cfg.notes:  # as validate_seg.py: e.g. a recipe's Ascend, evaluated on CPU here
        print(f"note: {printable(note)}", flush=True)
    if not cfg.image_path:
        raise ConfigError(f"{PROG} needs --image_path (an image or a folder of images).")
    images, skipped = find_inputs(cfg.image_path)
    check_images(images)
    plan = plan_outputs(images, cfg.image_path, cfg.output, cfg.overlay > 0, cfg.overwrite)
    if not is_onnx(cfg.ckpt_path):  # an .onnx file runs on ONNX Runtime: no MindSpore needed
        from mindcv_ext.training.runtime import set_runtime
        set_runtime(cfg, "Use --device_target CPU.")
    model = init_segmentor(cfg.ckpt_path, reparameterize=cfg.reparameterize, gelu_approximate=cfg.gelu_approximate,
                           mode=cfg.eval_mode, scale=cfg.eval_scale, crop_size=cfg.eval_crop,
                           stride=cfg.eval_stride, mean=cfg.mean, std=cfg.std)
    return cfg, model, plan, skipped


def work(prepared) -> int:
    cfg, model, plan, skipped = prepared
    arch, meta, test = model.arch, model.dataset_meta, model.test_cfg
    names, palette = meta["classes"], meta["palette"]
    how = test["mode"] + (f" (window {test['crop_size'][0]}x{test['crop_size'][1]}, stride {test['stride'][0]}x"
                          f"{test['stride'][1]})" if test["mode"] == "slide" else "")
    size = f"resized to {test['scale'][0]}x{test['scale'][1]} (aspect kept)" if test["scale"] else "at their own size"
    print(printable(f"{cfg.ckpt_path}: {arch['backbone']} + {arch['head']} ({'deploy' if arch['deploy'] else 'train'} "
                    f"form), {len(plan)} image(s) {size}, {how} inference. Colours: "
                    + ", ".join(f"{n}=#{bytes(palette[i].tolist()).hex()}" for i, n in enumerate(names))), flush=True)
    for path, why in skipped:
        print(f"skipped {printable(path)}: {why}", file=sys.stderr, flush=True)
    for folder in sorted({os.path.dirname(m) for _, m, _ in plan}):  # only now: the checkpoint has loaded
        os.makedirs(folder, exist_ok=True)
        remove_temp_files(folder)  # what a killed run's saves left
    t0, written = time.time(), 0
    for image, mask_path, overlay_path in plan:
        rgb = read_image(image)
        mask = inference_segmentor(model, rgb)
        try:
            save_png(mask_image(mask, palette), mask_path)
            written += 1
            if overlay_path:
                blend = (1 - cfg.overlay) * rgb + cfg.overlay * palette[np.minimum(mask, len(palette) - 1)]
                save_png(Image.fromarray(blend.astype(np.uint8)), overlay_path)
        except OSError as e:  # a full disk, a folder gone: the files written so far stay
            raise OSError(f"cannot write {e.filename or mask_path}: {e.strerror or e}; {written} of {len(plan)} "
                          f"mask(s) written before it.") from None
        shares = np.bincount(mask.ravel(), minlength=len(names)) / mask.size
        top = ", ".join(f"{names[i]} {100 * shares[i]:.0f}%" for i in np.argsort(-shares)[:3] if shares[i] > 0)
        print(printable(f"{image} -> {mask_path} ({top})"), flush=True)
    print(f"{written} mask(s) written" + (f", {len(skipped)} skipped (special files, listed above)" if skipped else "")
          + f" in {time.time() - t0:.1f} s", flush=True)
    return cli.OK


def main(argv=None) -> int:
    return cli.staged(lambda: prepare(argv), work, PROG, bad_input=(ConfigError, CheckpointError, OutputError,
                                                                    ValueError), failed=(OSError, DataError))


def run(argv=None) -> int:
    """main() with the project's exit codes, as the command line gets them (tests call it in-process)."""
    return cli.guarded(lambda: main(argv), PROG)


if __name__ == "__main__":
    cli.run_tool(main, PROG)  # signals: 130 / 143 with one line, also when blocked in native code
