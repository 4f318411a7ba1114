"""Export a RepMLPNet's deploy (re-parameterized) form to MINDIR or ONNX, then check the written file.

    python scripts/export.py --model repmlp_t224 --ckpt_path train.ckpt --file_format MINDIR --output t224.mindir
    python scripts/export.py --ckpt_path seg_best.ckpt --file_format ONNX --image_size 512   # a train_seg.py file

A train-form checkpoint is re-parameterized on the fly; a deploy-form one is exported as it is. A segmentation
checkpoint (train_seg.py's: encoder.* and decode_head.* keys) is recognised from its keys and exported whole
(logits at the input size); --model may then be left out. The file is checked before it gets its final name: it
is loaded back (mindspore.load + nn.GraphCell for MINDIR, onnxruntime for ONNX) and its logits on a random batch
are compared with the network's. Shapes are static: the file takes exactly (--batch_size, C, --image_size,
--image_size); --image_size may be any multiple of the native size. A segmentation checkpoint that records its
training crop is exported at that crop unless --image_size is given: predict_seg.py slides the file's input
over any image, and the crop is also the checkpoint's own default window.

ONNX (needs the `onnx` extra: onnx + onnxruntime) is written for ONNX Runtime and its quantizer: opset 20, every
BatchNormalization folded away, one ONNX Gelu node per FFN, every matmul / conv weight a plain
initializer (scripts/_onnx_ops.py says how). Its metadata_props record what validate.py, infer.py and
predict_seg.py need to run it without flags (model, task, class names, input shape, preprocessing).
An existing output is replaced only if export.py wrote it (ONNX files carry the mark) or with --overwrite True.
"""
import argparse
import importlib.util
import os
import shutil
import sys

import _common  # noqa: F401  (import path + helpers)
import numpy as np

from mindcv_ext.cli import BAD_INPUT, FAILED, OK, printable, run_tool

PROG = "export.py"

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx"}


class ExportError(Exception):
    """A problem the user can fix; printed without a traceback."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="registered model name, e.g. repmlp_t224 (not needed for a "
                                                "segmentation checkpoint: its keys say it)")
    p.add_argument("--ckpt_path", default="", help="train- or deploy-form checkpoint (.ckpt / .safetensors)")
    p.add_argument("--random_init", type=_common.str2bool, default=False,
                   help="export random weights when no --ckpt_path is given (must be asked for explicitly)")
    p.add_argument("--file_format", required=True, type=str.upper, choices=sorted(EXTENSIONS))
    p.add_argument("--output", default="", help="file to write; the format's extension is added if missing "
                                                "(default: <model>_deploy_b<batch>.<ext> in the current directory)")
    p.add_argument("--batch_size", type=int, default=1, help="static batch size of the exported graph")
    p.add_argument("--image_size", type=int, default=None,
                   help="input height = width (default: the model's native size, or a segmentation checkpoint's "
                        "recorded training crop; multiples of the native size also work)")
    p.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint's head, else 1000")
    p.add_argument("--gelu_approximate", type=_common.str2bool, default=False,
                   help="tanh GELU: True for mindcv's published t224 weights, False (exact erf) for the authors'")
    p.add_argument("--ema", type=_common.str2bool, default=False, help="export the EMA weights (ema.* keys)")
    p.add_argument("--check", type=_common.str2bool, default=True, help="load the file back and compare logits")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max |file - network| logit difference allowed, relative to max |logit| (default 1e-4)")
    p.add_argument("--device_target", default="CPU", help="MindSpore device used to build and check (default CPU)")
    p.add_argument("--overwrite", type=_common.str2bool, default=False,
                   help="replace an existing --output that export.py did not write (default False)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    if not args.ckpt_path and not args.random_init:
        p.error("no --ckpt_path given. Exporting random weights is almost always a mistake; pass "
                "--random_init True if that is really what you want (e.g. to test a deployment pipeline).")
    if args.ckpt_path and args.random_init:
        p.error("--ckpt_path and --random_init True contradict each other; pass one of them")
    if args.ckpt_path and not os.path.isfile(args.ckpt_path):
        p.error(f"checkpoint not found: {args.ckpt_path!r}" if not os.path.exists(args.ckpt_path)
                else f"--ckpt_path {args.ckpt_path!r} is not a file")
    if args.image_size is not None and args.image_size < 1:
        p.error("--image_size must be >= 1")
    if not args.model and not args.ckpt_path:
        p.error("--model is needed (e.g. --model repmlp_t224)")
    if args.file_format == "ONNX":
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            p.error(f"ONNX export needs {' and '.join(missing)}: pip install -e \".[onnx]\" (or pip install "
                    f"{' '.join(missing)})")
    return args


def output_path(args) -> str:
    ext = EXTENSIONS[args.file_format]
    path = args.output or f"{args.model or 'model'}_deploy_b{args.batch_size}{ext}"
    if not path.lower().endswith(ext):
        path += ext  # what mindspore.export would do; say it so nobody looks for the wrong name
        print(f"note: writing {path} (the {args.file_format} extension was added)")
    from mindcv_ext.checkpoint import CheckpointError, check_output_path
    from mindcv_ext.outputs import same_file

    if args.ckpt_path and same_file(args.ckpt_path, path):
        print(f"{PROG}: error: --output {path} is the checkpoint itself; write the export to another file.",
              file=sys.stderr)
        raise SystemExit(BAD_INPUT)
    try:  # before building and exporting: a path that cannot be written is a one-line error
        return check_output_path(path, tool=PROG, overwrite=args.overwrite)
    except CheckpointError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(BAD_INPUT) from None


def build_deploy_net(args):
    """The network to export with the checkpoint's weights (or random ones), in eval mode, and what to record
    about it: (net, form, channels, info). A train-form checkpoint gives the train-form network, re-parameterized
    by the caller. info: task, model, class_names, native size."""
    import mindcv

    from mindcv_ext.checkpoint import CheckpointError
    from mindcv_ext.weights import build_model, read_weights

    if args.model and not mindcv.is_model(args.model):
        raise ExportError(f"unknown model {args.model!r}; registered RepMLPNets: {mindcv.list_models('*repmlp*')}")
    if not args.ckpt_path:
        net = mindcv.create_model(args.model, deploy=True, gelu_approximate=args.gelu_approximate,
                                  num_classes=args.num_classes or 1000)
        print(f"{args.model}: random weights")
        net.set_train(False)
        return net, "deploy", 3, dict(task="classification", model=args.model, class_names=None,
                                      native_size=net.image_size)
    try:
        w = read_weights(args.ckpt_path, ema=args.ema)
        if "decode_head.cls.conv_seg.weight" in w.params:
            return _seg_net(args, w)
        if not args.model:
            raise ExportError("--model is needed for a classification checkpoint (e.g. --model repmlp_t224)")
        net, w = build_model(args.model, w, num_classes=args.num_classes, gelu_approximate=args.gelu_approximate)
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    if w.form is None:
        raise ExportError(f"{args.ckpt_path} holds no RepMLPNet blocks (no '...repmlp_block.fc3.*' keys"
                          f"{' under ema.' if args.ema else ''}); is it a {args.model} checkpoint?")
    net.set_train(False)
    print(f"{args.model}: {w.form}-form checkpoint {args.ckpt_path}")
    names = w.class_names if w.class_names and len(w.class_names) == net.num_classes else None
    return net, w.form, w.in_channels or 3, dict(task="classification", model=args.model, class_names=names,
                                                  native_size=net.image_size)


def _seg_net(args, w):
    """A train_seg.py checkpoint: the whole SegModel (encoder + decode head), its form read from the keys."""
    from mindcv_ext.checkpoint import CheckpointError
    from mindcv_ext.seg.model import load_seg_checkpoint, seg_architecture

    arch = seg_architecture(w.params)
    if args.model and args.model != arch["backbone"]:
        raise ExportError(f"{args.ckpt_path} is a segmentation checkpoint on {arch['backbone']}, not {args.model}: "
                          f"use --model {arch['backbone']} or leave --model out")
    if args.num_classes is not None and args.num_classes != arch["num_classes"]:
        raise ExportError(f"--num_classes {args.num_classes} contradicts {args.ckpt_path}'s {arch['num_classes']}-class "
                          f"head; leave it out")
    if args.ema:
        raise ExportError("--ema True: segmentation checkpoints hold no EMA weights")
    try:
        net, w, arch = load_seg_checkpoint(args.ckpt_path, gelu_approximate=args.gelu_approximate)
    except (CheckpointError, ValueError) as e:
        raise ExportError(str(e)) from e
    net.set_train(False)
    net.aux_head = None  # training only; not part of construct
    form = "deploy" if arch["deploy"] else "train"
    name = f"{arch['backbone']}_{arch['head']}"
    print(f"{name}: {form}-form segmentation checkpoint {args.ckpt_path} ({arch['num_classes']} classes)")
    names = w.class_names if w.class_names and len(w.class_names) == arch["num_classes"] else None
    return net, form, w.in_channels or 3, dict(task="segmentation", model=arch["backbone"], head=arch["head"],
                                               class_names=names, native_size=net.native_size,
                                               num_classes=arch["num_classes"], crop_size=arch.get("crop_size"))


def random_batch(args, net, in_channels, info):
    import mindspore as ms

    native = info["native_size"]
    from_crop = args.image_size is None and bool(info.get("crop_size"))
    if from_crop:
        # A segmentation file's input is its sliding window (predict_seg.py slides it over any image), and the
        # checkpoint's own default window is its training crop: the same window, so both predict alike.
        height, width = info["crop_size"]
        what = f"{printable(args.ckpt_path)} records the training crop {height}x{width},"
        fix = f": pass --image_size N (a multiple of {native})"
    else:
        height = width = args.image_size or native
        what, fix = f"--image_size {height} is", f" (e.g. {native} or {2 * native})"
    if height % native or width % native:
        raise ExportError(f"{what} not a multiple of {info['model']}'s native size {native}{fix}")
    if from_crop:
        print(f"input {height}x{width}: the training crop {printable(args.ckpt_path)} records (the checkpoint's "
              f"default evaluation window); --image_size N for N x N")
    if hasattr(net, "check_input"):
        net.check_input((args.batch_size, in_channels, height, width))  # clear message for a bad --image_size
    x = np.random.default_rng(0).standard_normal((args.batch_size, in_channels, height, width)).astype(np.float32)
    return ms.Tensor(x)


def run_file(path: str, fmt: str, x):
    """Logits of the exported file on x."""
    if fmt == "MINDIR":
        import mindspore as ms
        return ms.nn.GraphCell(ms.load(path))(x).asnumpy()
    from mindcv_ext.onnx_runtime import OnnxNet
    return OnnxNet(path)(x.asnumpy())


def compare(name: str, got: np.ndarray, ref: np.ndarray, tolerance: float) -> None:
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    rel = diff / max(float(np.abs(ref).max()), 1e-30)
    print(f"{name}: max |diff| = {diff:.3e}, {rel:.3e} of max |logit| {float(np.abs(ref).max()):.3e} "
          f"(tolerance {tolerance:.0e})")
    if got.shape != ref.shape or not rel <= tolerance:
        raise ExportError(f"{name} differs beyond the tolerance (shape {got.shape} vs {ref.shape}, relative "
                          f"difference {rel:.3e}); nothing written.")


def export_atomically(net, x, fmt: str, final_path: str, check, finish=None) -> None:
    """Export into a private temporary directory beside the output, (ONNX) finish the file there, check it, then
    rename it into place. finish(produced, workdir) -> the path of the file to keep.

    mindspore.export appends the extension itself, makes the file read-only and (for ONNX) chmods the file's
    directory to 0o700, so it never writes in the user's directory directly."""
    import mindspore as ms

    from mindcv_ext.checkpoint import make_temp, remove_temp_files

    directory = os.path.dirname(final_path)
    os.makedirs(directory, exist_ok=True)
    # A killed export leaves its folder (the whole model file); a killed save its file: remove every such
    # temporary of a process that is over in this folder, whatever output it was for (never a live one's).
    stale = remove_temp_files(directory, None, legacy_export=True)
    if stale:
        print(f"note: removed {len(stale)} temporary folder(s) of killed exports: "
              f"{', '.join(printable(os.path.basename(p)) for p in stale)}")
    tmpdir = make_temp(final_path, directory=True)  # same filesystem: the rename is atomic
    try:
        stem = os.path.join(tmpdir, "model")
        try:
            if fmt == "ONNX" and hasattr(ms, "onnx") and hasattr(ms.onnx, "export"):
                ms.onnx.export(net, x, file_name=stem)  # 2.10: ms.export(file_format='ONNX') warns it will go
            else:
                ms.export(net, x, file_name=stem, file_format=fmt)
        except RuntimeError as e:  # e.g. an op the ONNX exporter cannot write; the first line says which
            raise ExportError(f"mindspore.export to {fmt} failed: {str(e).strip().splitlines()[0]}") from e
        produced = stem + EXTENSIONS[fmt]
        if not os.path.isfile(produced):  # e.g. MindSpore's split save for > 1 GB graphs
            raise ExportError(f"mindspore.export did not write one {EXTENSIONS[fmt]} file (got "
                              f"{sorted(os.listdir(tmpdir))}); this script handles single-file exports only.")
        if finish is not None:
            produced = finish(produced, tmpdir)
        check(produced)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(produced, 0o666 & ~umask)  # an ordinary file, not MindSpore's owner-read-only one
        os.replace(produced, final_path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def onnx_metadata(info: dict, x_shape, precision: str = "fp32") -> dict:
    """What validate.py / infer.py / predict_seg.py read from an ONNX file instead of flags (strings only, as
    metadata_props hold). The preprocessing is validate.py's defaults; a recipe's own values still apply there."""
    import json

    from mindcv_ext.config import KEYS

    meta = {"model": info["model"], "task": info["task"], "form": "deploy", "precision": precision,
            "input_shape": json.dumps(list(map(int, x_shape))), "native_size": str(info["native_size"]),
            "preprocessing": json.dumps({"crop_pct": KEYS["crop_pct"][0],
                                         "interpolation": KEYS["interpolation"][0],
                                         "mean": list(KEYS["mean"][0]), "std": list(KEYS["std"][0]),
                                         "scale": "0-255"})}
    if info.get("head"):
        meta["head"] = info["head"]
    if info.get("class_names"):
        meta["class_names"] = json.dumps(list(info["class_names"]))
    return meta


def finish_onnx_file(info, x_shape):
    """The finish step for export_atomically: MindSpore's file -> the deploy file, with metadata and the mark."""
    def finish(produced, workdir):
        import onnx

        from _onnx_ops import finish_onnx
        from mindcv_ext.onnx_runtime import set_metadata

        out = os.path.join(workdir, "deploy.onnx")
        try:
            stats = finish_onnx(produced, out, workdir)
        except (ValueError, onnx.checker.ValidationError) as e:
            raise ExportError(f"ONNX post-processing failed: {e}") from e
        model = onnx.load(out)
        set_metadata(model, onnx_metadata(info, x_shape), tool=PROG)
        onnx.save(model, out)
        ops = stats["ops"]
        print(f"ONNX: opset {stats['opset']}, {sum(ops.values())} nodes "
              f"({', '.join(f'{k} {v}' for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))}); "
              f"{stats['gelus']} Gelu nodes, no BatchNormalization, "
              f"{stats['initializer_bytes'] / 2**20:.1f} MiB of weights")
        return out
    return finish


def main(argv=None) -> int:
    args = parse_args(argv)
    final_path = output_path(args)
    from types import SimpleNamespace

    from mindcv_ext.config import ConfigError
    from mindcv_ext.training.runtime import set_runtime

    try:  # the network and the batch: a problem here is the command's or the checkpoint's (exit 2)
        import mindspore as ms
        set_runtime(SimpleNamespace(mode=ms.GRAPH_MODE, device_target=args.device_target, jit_level=None),
                    "Use --device_target CPU.")
        net, form, in_channels, info = build_deploy_net(args)
        x = random_batch(args, net, in_channels, info)
    except (ExportError, ConfigError, OSError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return BAD_INPUT
    try:
        export(args, net, form, x, final_path, info)
    except (ExportError, OSError) as e:  # a failed check or export: nothing written
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return FAILED
    return OK


def export(args, net, form, x, final_path, info=None, quiet=False, split_local=False) -> None:
    """split_local: ONNX for INT8 (quantize.py), fc3's conv taps apart (_onnx_ops.prepare_for_onnx)."""
    import mindcv_ext

    info = info or dict(task="classification", model=args.model, class_names=None, native_size=x.shape[-1])
    reference = None
    if args.check:
        reference = net(x).asnumpy().astype(np.float64)
    if form == "train":
        mindcv_ext.reparameterize(net)
        if args.check:
            deploy_logits = net(x).asnumpy()
            compare("deploy form vs train form (network)", deploy_logits, reference, args.tolerance)
            reference = deploy_logits.astype(np.float64)

    finish = None
    if args.file_format == "ONNX":
        from _onnx_ops import prepare_for_onnx
        if reference is None:  # the ONNX rewrite changes the network; its reference comes first
            reference = net(x).asnumpy().astype(np.float64)
        prepare_for_onnx(net, x.shape, split_local=split_local)
        if info["task"] == "segmentation":
            import mindcv_ext.seg.model as seg_model

            from _onnx_ops import export_resize
            seg_model.resize = export_resize  # read when the graph is compiled; this process only exports
        finish = finish_onnx_file(info, x.shape)

    def check(path):
        if not args.check:
            print("--check False: the file was not loaded back")
            return
        got = run_file(path, args.file_format, x)
        compare(f"{args.file_format} file vs network", got, reference, args.tolerance)

    export_atomically(net, x, args.file_format, final_path, check, finish)
    if quiet:
        return
    what = "segmentation logits" if info["task"] == "segmentation" else "logits"
    name = f"{info['model']}_{info['head']}" if info.get("head") else info["model"]
    print(f"wrote {final_path} ({os.path.getsize(final_path) / 2**20:.1f} MiB): {name} deploy form, "
          f"input ({', '.join(map(str, x.shape))}) float32 -> {what}")


if __name__ == "__main__":
    run_tool(main, PROG)  # Ctrl-C / SIGTERM: one line, 130 / 143; exits without MindSpore's shutdown noise
