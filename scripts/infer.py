"""Predict the classes of images: top-5 class names and probabilities for one image or a folder of them.

    python scripts/infer.py --model demo_repmlp --ckpt_path outputs/demo/best.ckpt --image_path photo.jpg
    python scripts/infer.py -c configs/repmlp/repmlp_demo_cpu.yaml --ckpt_path outputs/demo/best.ckpt \\
        --image_path photos/ --output predictions.jsonl

mindcv's flags (--model, --ckpt_path, --image_path) plus `-c/--config` with the training recipe, read by the parser
validate.py uses (command-line flags win). The checkpoint may be train or deploy form: the form is read from the
file. Preprocessing is validate.py's, from the same code: resize the short side to int(image_size / crop_pct),
centre crop, mean/std (the model's or recipe's image size, crop_pct, interpolation, mean, std). An .onnx file
(export.py / quantize.py) runs on ONNX Runtime with no MindSpore needed: its pixels come from PIL and OpenCV
(mindcv_ext.data.pixels), the same pixels as MindSpore's pipeline (bit for bit with bilinear, nearest and area).

--image_path is an image or a folder, searched recursively for .jpg .jpeg .jpe .jfif .png .bmp .tif .tiff (any
case). Files that cannot be read (corrupt, truncated, not an image) are reported on one line each and skipped:
MindSpore's decoder can kill the process on some broken JPEGs, so every file is checked first (the project's image
checker for the file structure, then a full decode with PIL) and only its checked bytes reach MindSpore.

Class names: the ones train.py recorded in the checkpoint; --class_names FILE (one name per line, in label order)
replaces them; without either, classes are shown by index, and "class" is null in the JSON lines.

Output: one line per image on stdout (`path: name (index) prob | ...`); progress, skipped files and the summary go to
stderr. --output F.jsonl also writes one JSON object per image:
    {"path": ..., "top5": [{"index": i, "class": name or null, "prob": p}, ...]}   (min(5, num_classes) entries)
F.jsonl is replaced only when the run ends with predictions (it is written under a temporary name beside it, then
renamed): an interrupted or failed run leaves an existing F.jsonl as it was. It may not be the checkpoint, the
--class_names file, an input image, or an image-named file inside the --image_path folder.
Exit status (mindcv_ext.cli's table): 0 when at least one image was predicted (skipped files are counted in the
summary), 1 when none could be or the run did not finish, 2 for bad input (a one-line error naming the problem and
the fix, before any long work), 130 / 143 on Ctrl-C / SIGTERM (one line).
"""
import io
import json
import os
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import _common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np

from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.cli import FAILED, OK, keep_sigint, printable, run_tool, staged
from mindcv_ext.data.imagecheck import IMAGE_EXTENSIONS, find_images
from mindcv_ext.config import ConfigError
from mindcv_ext.training.config import load_eval_config

PROG = "scripts/infer.py"
TOPK = 5

INFER_KEYS = {
    "image_path": ("", "str", "an image, or a folder searched recursively for "
                              f"{' '.join(IMAGE_EXTENSIONS)} files (required)"),
    "output": ("", "str", "also write one JSON object per image to this .jsonl file, when the run ends: written "
                          "beside it under a temporary name and renamed at the end, so an interrupted or failed run "
                          "leaves an existing file as it was (its predictions so far are on stdout only). An "
                          "existing file that is not infer.py's predictions is replaced only with --overwrite True"),
    "overwrite": (False, "bool", "replace an existing --output file that is not an earlier run's predictions"),
    "class_names": ("", "str", "text file with one class name per line, in label order (default: the names the "
                               "checkpoint records; without either, class indices)"),
    "batch_size": (32, "int", "images per batch"),
    "log_interval": (1, "int", "a progress line on stderr every N batches (0: off)"),
}


def _err(text: str) -> None:
    # Every stderr line may quote a file or class name: escaped, so a name cannot forge lines or colour the terminal
    print(printable(text), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ the images

def check_image_bytes(data: bytes) -> Optional[str]:
    """None if MindSpore can safely be given these bytes, else why not. Pure Python and PIL, no MindSpore: the
    image checker's structure walk catches the files on which MindSpore's decoder crashes or hangs (JPEGs cut short
    in their header, broken tables); a full PIL decode catches damaged image data."""
    from PIL import Image

    from mindcv_ext.data._scan_worker import check_bytes

    reason = check_bytes(data)
    if reason:
        return reason
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        return f"cannot be decoded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'})"
    return None


def read_image(path: str) -> Tuple[Optional[bytes], Optional[str]]:
    """(the file's bytes, None), or (None, why it is skipped). The bytes checked are the bytes decoded later."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"
    reason = check_image_bytes(data)
    return (None, reason) if reason else (data, None)


def _ms_error(e: Exception) -> str:
    """The useful line of a MindSpore data error (its text is a banner, the message, then a C++ call stack)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return next((ln.replace("[ERROR] ", "") for ln in lines if "[ERROR]" in ln), lines[0] if lines else
                type(e).__name__)[:200]


def predict(net, paths: Sequence[str], transforms: list, batch_size: int, workers: int,
            on_skip: Callable[[str, str], None]) -> Iterator[Tuple[List[int], np.ndarray]]:
    """Yield (indices into `paths`, logits (n, num_classes) float32) batch by batch, in file order; call
    `on_skip(path, reason)` for each file that cannot be used. The decode and transforms are validate.py's, run by a
    MindSpore pipeline over the checked bytes (what ImageFolderDataset feeds validate.py's loader); `transforms` a
    function (bytes -> pixels: an .onnx file's, mindcv_ext.data.pixels) runs without MindSpore."""
    if callable(transforms):
        yield from _predict_numpy(net, paths, transforms, batch_size, workers, on_skip)
        return
    import mindspore as ms
    import mindspore.dataset as ds

    skipped: Dict[int, str] = {}
    reported = set()

    def report(upto: int):
        for i in sorted(i for i in skipped if i not in reported and i < upto):
            reported.add(i)
            on_skip(paths[i], skipped[i])

    def batched(start: int):
        """From paths[start] on; returns where a pipeline error stopped it (len(paths) when it did not)."""
        def source():
            for i in range(start, len(paths)):
                if i in skipped:
                    continue
                data, reason = read_image(paths[i])
                if reason:
                    skipped[i] = reason  # reported from the main thread, so lines never interleave
                    continue
                yield np.frombuffer(data, np.uint8).copy(), np.int64(i)

        data = ds.GeneratorDataset(source, column_names=["image", "index"], shuffle=False, num_parallel_workers=1,
                                   python_multiprocessing=False)
        data = data.map(operations=transforms, input_columns="image", num_parallel_workers=workers)
        it = data.batch(batch_size, drop_remainder=False).create_tuple_iterator(num_epochs=1, output_numpy=True)
        done = start - 1  # the last index yielded: the pipeline keeps file order
        while True:
            try:
                images, index = next(it)
            except StopIteration:
                return len(paths)
            except RuntimeError as e:
                _err(f"note: a file passed the checks but MindSpore refused it ({_ms_error(e)}); finding it image "
                     f"by image")
                return done + 1
            report(int(index[-1]))
            done = int(index[-1])
            logits = net(ms.Tensor(images))
            logits = logits.asnumpy() if hasattr(logits, "asnumpy") else logits  # ONNX Runtime: NumPy
            keep_sigint()  # MindSpore's forward installs a SIGINT handler that turns Ctrl-C into SIGTERM
            yield [int(i) for i in index], logits

    def one_by_one(start: int):
        """Eagerly, with the same transforms, up to and including the first file MindSpore refuses; returns the
        index after it, where the batched pipeline resumes."""
        for i in range(start, len(paths)):
            if i not in skipped:
                data, reason = read_image(paths[i])
                if reason:
                    skipped[i] = reason
                else:
                    try:
                        x = np.frombuffer(data, np.uint8).copy()
                        for op in transforms:  # MindSpore's vision ops also run eagerly on NumPy arrays
                            x = op(x)
                    except RuntimeError as e:
                        skipped[i] = f"MindSpore cannot decode it: {_ms_error(e)}"
                        report(i + 1)
                        return i + 1
                    report(i)
                    logits = net(ms.Tensor(np.asarray(x)[None]))
                    logits = logits.asnumpy() if hasattr(logits, "asnumpy") else logits  # ONNX Runtime: NumPy
                    keep_sigint()
                    yield [i], logits
        return len(paths)

    start = 0
    while start < len(paths):
        start = yield from batched(start)
        if start < len(paths):
            start = yield from one_by_one(start)
    report(len(paths))


def _predict_numpy(net, paths, pixels, batch_size, workers, on_skip):
    """predict() for an .onnx file: the checked bytes -> pixels (`pixels`, threads: PIL and OpenCV release the GIL)
    -> ONNX Runtime, batch by batch in file order."""
    from concurrent.futures import ThreadPoolExecutor

    def load(path):
        data, reason = read_image(path)
        if reason:
            return None, reason
        try:
            return pixels(data), None
        except Exception as e:  # noqa: BLE001 - PIL / OpenCV raise many types on data the checks let through
            return None, f"cannot be decoded ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            part = list(range(start, min(start + batch_size, len(paths))))
            index, images = [], []
            for i, (x, reason) in zip(part, pool.map(load, [paths[i] for i in part])):
                if reason:
                    on_skip(paths[i], reason)
                else:
                    index.append(i)
                    images.append(x)
            if images:
                yield index, net(np.stack(images))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, names: Optional[List[Optional[str]]], k: int) -> List[dict]:
    """The k most probable classes of one image, most probable first (ties: lower index first, as TopKMeter)."""
    prob = softmax(logits)
    order = np.argsort(-prob, kind="stable")[:k]
    return [{"index": int(i), "class": names[i] if names and i < len(names) else None, "prob": float(prob[i])}
            for i in order]


# ------------------------------------------------------------------------------------------------ the command

def _read_class_names_file(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:  # utf-8-sig: Windows editors start the file with a BOM
            names = [line.strip() for line in f.read().splitlines()]
    except FileNotFoundError:
        raise ConfigError(f"--class_names file not found: {path!r}; pass a text file with one class name per "
                          f"line, in label order.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--class_names {path!r} is not UTF-8 text; save it as UTF-8, one name per line.") from None
    except OSError as e:
        raise ConfigError(f"cannot read --class_names {path!r}: {e.strerror or e}.") from None
    blank = [n for n, name in enumerate(names, 1) if not name]
    if blank:
        raise ConfigError(f"--class_names {path!r}: line {blank[0]} is empty; write one class name per line, "
                          f"in label order, with no blank lines.")
    return names


def _class_names(cfg, w, file_names: Optional[List[str]], num_classes: int) -> Tuple[Optional[list], str]:
    """(names by label index or None, where they come from)."""
    if file_names is not None:
        if len(file_names) != num_classes:
            raise ConfigError(f"--class_names {cfg.class_names!r} has {len(file_names)} lines but {cfg.ckpt_path} "
                              f"has {num_classes} classes; give one name per class, in label order.")
        if w.class_names and w.class_names != file_names:
            _err(f"note: --class_names {cfg.class_names} replaces the different names recorded in the checkpoint")
        return file_names, f"from {cfg.class_names}"
    if w.class_names:
        if len(w.class_names) > num_classes:  # cannot come from train.py; do not guess which names are meant
            _err(f"note: {cfg.ckpt_path} records {len(w.class_names)} class names for {num_classes} classes; "
                 f"showing indices (give --class_names to name them)")
            return None, "none (indices)"
        # train.py may train a head wider than the class folders: the extra classes have no name
        return list(w.class_names), "recorded in the checkpoint"
    return None, "none (indices; --class_names FILE names them)"


def _refuse_output_over_inputs(cfg, paths: List[str]) -> None:
    """--output must not replace what the run reads: the checkpoint, the class-names file or an input image (also
    through a link), nor be a file in the --image_path folder that a later run would take for an image."""
    from mindcv_ext.outputs import same_file

    out = cfg.output
    for flag, path in (("--ckpt_path", cfg.ckpt_path), ("--class_names", cfg.class_names)):
        if path and same_file(path, out):
            raise ConfigError(f"--output {out!r} is the {flag} file itself; writing predictions there would destroy "
                              f"it. Name another file, e.g. predictions.jsonl.")
    if os.path.exists(out):  # an input reached through a hard or symbolic link from elsewhere
        st = os.stat(out)
        for path in paths:
            try:
                other = os.stat(path)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                raise ConfigError(f"--output {out!r} is the input image {printable(path)!r}; name another file, e.g. "
                                  f"predictions.jsonl.")
    if os.path.isdir(cfg.image_path):
        root, real = os.path.realpath(cfg.image_path), os.path.realpath(out)
        if os.path.commonpath([root, real]) == root and real.lower().endswith(IMAGE_EXTENSIONS):
            raise ConfigError(f"--output {out!r} is an image file name inside --image_path {cfg.image_path!r}: it "
                              f"would replace an input, or be read as one by the next run. Name a .jsonl file.")


def prepare(cfg):
    """Every check of the command that needs no network, then the network: raises ConfigError / CheckpointError.
    Returns (net, weights, image_size, paths, names, names_source, transforms). An .onnx file runs on ONNX Runtime
    with the evaluation pixels made by PIL + OpenCV (mindcv_ext.data.pixels, the same pixels): no MindSpore."""
    from mindcv_ext.onnx_runtime import is_onnx

    onnx_file = is_onnx(cfg.ckpt_path)
    if onnx_file:
        from mindcv_ext.data.pixels import check_filter
        check_filter(cfg.interpolation)  # ValueError: bad input, before the images are searched
    else:
        from mindcv_ext.weights import refuse_segmentation_checkpoint
        refuse_segmentation_checkpoint(cfg.ckpt_path, "scripts/predict_seg.py")
    if not cfg.image_path:
        raise ConfigError("no images given: pass --image_path photo.jpg, or --image_path a folder of images.")
    if not os.path.exists(cfg.image_path):
        raise ConfigError(f"--image_path {cfg.image_path!r} does not exist; pass an image file or a folder of images.")
    paths, cfg.special_files = find_images(cfg.image_path)  # special files: counted as skipped by run()
    if not paths:
        raise ConfigError(f"no image files under {cfg.image_path!r} (searched recursively for "
                          f"{', '.join(IMAGE_EXTENSIONS)}); point --image_path at a folder that holds images.")
    file_names = _read_class_names_file(cfg.class_names) if cfg.class_names else None
    if cfg.output:
        parent = os.path.dirname(os.path.abspath(cfg.output))
        if os.path.isdir(cfg.output) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise ConfigError(f"cannot write --output {cfg.output!r}: " + (
                "it is a directory; name a file such as predictions.jsonl." if os.path.isdir(cfg.output) else
                f"the folder {parent!r} does not exist or is not writable; create it or choose another path."))
        _refuse_output_over_inputs(cfg, paths)
        from mindcv_ext.outputs import check_replace
        check_replace(cfg.output, PROG, cfg.overwrite)  # the one output rule; OutputError is a ValueError (2)
    if onnx_file:
        from functools import partial

        from mindcv_ext.data.pixels import eval_pixels
        from mindcv_ext.onnx_runtime import build_onnx_model

        net, w, image_size = build_onnx_model(cfg, log=lambda s: _err(s))
        transforms = partial(eval_pixels, image_size=image_size, crop_pct=cfg.crop_pct,
                             interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    else:
        import mindcv

        import mindcv_ext  # noqa: F401  (registers the models)
        from mindcv_ext.data.loaders import eval_transforms
        from mindcv_ext.evaluation import build_eval_model, set_eval_context

        if not mindcv.is_model(cfg.model):
            raise ConfigError(f"unknown model {cfg.model!r}; use one of {', '.join(mindcv.list_models('*repmlp*'))} "
                              f"(or another registered mindcv model).")
        set_eval_context(cfg)
        net, w, image_size = build_eval_model(cfg, log=lambda s: _err(s))
        transforms = eval_transforms(image_size, cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std)
    names, names_source = _class_names(cfg, w, file_names, net.num_classes)
    return net, w, image_size, paths, names, names_source, transforms


def run(cfg, prepared) -> int:
    net, w, image_size, paths, names, names_source, transforms = prepared
    k = min(TOPK, net.num_classes)
    _err(f"{cfg.model} ({w.form or 'plain'} form{', EMA weights' if w.ema else ''}) from {cfg.ckpt_path}: "
         f"{len(paths)} image file(s) from {printable(cfg.image_path)}, {image_size}x{image_size}, crop_pct "
         f"{cfg.crop_pct}, {cfg.interpolation}; class names: {names_source}")
    out = tmp = None
    if cfg.output:  # a temporary beside the output, renamed when the run ends: the previous file is never emptied
        from mindcv_ext.checkpoint import make_temp, remove_temp_files

        stale = remove_temp_files(os.path.dirname(os.path.abspath(cfg.output)))  # of killed runs, any name
        if stale:
            _err(f"note: removed {len(stale)} temporary file(s) of killed runs: "
                 f"{', '.join(os.path.basename(p) for p in stale)}")
        tmp = make_temp(cfg.output)
        out = open(tmp, "w", encoding="utf-8")
    skipped: List[Tuple[str, str]] = []

    def on_skip(path, reason):
        skipped.append((path, reason))
        _err(f"skipped {printable(path)}: {reason}")

    for path, reason in cfg.special_files:  # FIFOs, sockets, ...: left out by the finder, counted like the rest
        on_skip(path, reason)

    count, batches, start = 0, 0, time.perf_counter()
    try:
        for index, logits in predict(net, paths, transforms, cfg.batch_size, cfg.num_parallel_workers, on_skip):
            for i, row in zip(index, logits):
                top = top_k(row, names, k)
                # Names recorded in a checkpoint are data: a newline in one would forge a prediction line
                print(f"{printable(paths[i])}: " + " | ".join(
                    f"{printable(t['class']) if t['class'] is not None else '#' + str(t['index'])} ({t['index']}) "
                    f"{t['prob']:.4f}" for t in top))
                if out:
                    # ensure_ascii: a non-UTF-8 file name (surrogate escapes) still makes valid JSON
                    out.write(json.dumps({"path": paths[i], "top5": top}) + "\n")
            count += len(index)
            batches += 1
            sys.stdout.flush()
            if cfg.log_interval and batches % cfg.log_interval == 0:
                total = len(paths) + len(cfg.special_files)
                _err(f"[{count + len(skipped)}/{total}] {count} predicted, {len(skipped)} skipped "
                     f"({count / (time.perf_counter() - start):.1f} img/s)")
        if out:
            out.close()
            if count:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # an ordinary file, not the temporary's owner-only mode
                os.replace(tmp, cfg.output)
                tmp = None
    finally:
        if out:
            out.close()
        if tmp:  # interrupted, failed, or nothing predicted: the previous --output stays as it was
            try:
                os.remove(tmp)
            except OSError:
                pass
    if count == 0:
        _err(f"{PROG}: error: none of the {len(paths)} image file(s) could be read ({len(skipped)} skipped, reasons "
             f"above); check the files, or point --image_path at other images."
             + (f" {cfg.output} was not written." if cfg.output else ""))
        return FAILED
    _err(f"{count} image(s) predicted, {len(skipped)} skipped (unreadable, listed above)"
         + (f"; results in {cfg.output}" if cfg.output else ""))
    return OK


def main(argv=None) -> int:
    state = {}

    def setup():  # everything before the first image: a problem here is the command's, the weights' or the files'
        state["cfg"] = cfg = load_eval_config(argv, prog=PROG, extra=INFER_KEYS)
        for note in cfg.notes:
            _err(f"note: {note}")
        return prepare(cfg)

    # OSError in the work: e.g. the disk filled up under --output. A reader that stops early (`infer.py ... |
    # head`): cli.guarded's quiet 1, and --output is not written.
    return staged(setup, lambda prepared: run(state["cfg"], prepared), PROG,
                  bad_input=(ConfigError, CheckpointError, OSError, ValueError), failed=(OSError,))


if __name__ == "__main__":
    run_tool(main, PROG)  # Ctrl-C / SIGTERM: one line, 130 / 143; exits without MindSpore's shutdown noise
