"""Export a RepMLPNet's deploy (re-parameterized) form to MINDIR or ONNX, then check the written file.

    python scripts/export.py --model repmlp_t224 --ckpt_path train.ckpt --file_format MINDIR --output t224.mindir

A train-form checkpoint is re-parameterized on the fly; a deploy-form one is exported as it is. The file is
checked before it gets its final name: it is loaded back (mindspore.load + nn.GraphCell for MINDIR, onnxruntime
for ONNX when installed) and its logits on a random batch are compared with the network's. Shapes are static:
the file takes exactly (--batch_size, C, --image_size, --image_size).
"""
import argparse
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
    p.add_argument("--model", required=True, help="registered model name, e.g. repmlp_t224")
    p.add_argument("--ckpt_path", default="", help="train- or deploy-form checkpoint (.ckpt / .safetensors)")
    p.add_argument("--random_init", type=_common.str2bool, default=False,
                   help="export random weights when no --ckpt_path is given (must be asked for explicitly)")
    p.add_argument("--file_format", required=True, type=str.upper, choices=sorted(EXTENSIONS))
    p.add_argument("--output", default="", help="file to write; the format's extension is added if missing "
                                                "(default: <model>_deploy_b<batch>.<ext> in the current directory)")
    p.add_argument("--batch_size", type=int, default=1, help="static batch size of the exported graph")
    p.add_argument("--image_size", type=int, default=None,
                   help="input height = width (default: the model's native size; multiples of it also work)")
    p.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint's head, else 1000")
    p.add_argument("--gelu_approximate", type=_common.str2bool, default=False,
                   help="tanh GELU: True for mindcv's published t224 weights, False (exact erf) for the authors'")
    p.add_argument("--ema", type=_common.str2bool, default=False, help="export the EMA weights (ema.* keys)")
    p.add_argument("--check", type=_common.str2bool, default=True, help="load the file back and compare logits")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max |file - network| logit difference allowed, relative to max |logit| (default 1e-4)")
    p.add_argument("--device_target", default="CPU", help="MindSpore device used to build and check (default CPU)")
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
    return args


def output_path(args) -> str:
    ext = EXTENSIONS[args.file_format]
    path = args.output or f"{args.model}_deploy_b{args.batch_size}{ext}"
    if not path.lower().endswith(ext):
        path += ext  # what mindspore.export would do; say it so nobody looks for the wrong name
        print(f"note: writing {path} (the {args.file_format} extension was added)")
    from mindcv_ext.checkpoint import CheckpointError, check_output_path
    from mindcv_ext.weights import same_file

    if args.ckpt_path and same_file(args.ckpt_path, path):
        print(f"{PROG}: error: --output {path} is the checkpoint itself; write the export to another file.",
              file=sys.stderr)
        raise SystemExit(BAD_INPUT)
    try:  # before building and exporting: a path that cannot be written is a one-line error
        return check_output_path(path)
    except CheckpointError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(BAD_INPUT) from None


def build_deploy_net(args):
    """The network to export with the checkpoint's weights (or random ones), in eval mode: (net, form, channels).
    A train-form checkpoint gives the train-form network, re-parameterized by the caller."""
    import mindcv

    from mindcv_ext.checkpoint import CheckpointError
    from mindcv_ext.weights import build_model

    if not mindcv.is_model(args.model):
        raise ExportError(f"unknown model {args.model!r}; registered RepMLPNets: {mindcv.list_models('*repmlp*')}")
    if not args.ckpt_path:
        net = mindcv.create_model(args.model, deploy=True, gelu_approximate=args.gelu_approximate,
                                  num_classes=args.num_classes or 1000)
        print(f"{args.model}: random weights")
        net.set_train(False)
        return net, "deploy", 3
    try:
        net, w = build_model(args.model, args.ckpt_path, num_classes=args.num_classes, ema=args.ema,
                             gelu_approximate=args.gelu_approximate)
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    if w.form is None:
        raise ExportError(f"{args.ckpt_path} holds no RepMLPNet blocks (no '...repmlp_block.fc3.*' keys"
                          f"{' under ema.' if args.ema else ''}); is it a {args.model} checkpoint?")
    net.set_train(False)
    print(f"{args.model}: {w.form}-form checkpoint {args.ckpt_path}")
    return net, w.form, w.in_channels or 3


def random_batch(args, net, in_channels):
    import mindspore as ms

    size = args.image_size or net.image_size
    net.check_input((args.batch_size, in_channels, size, size))  # clear message for a bad --image_size
    x = np.random.default_rng(0).standard_normal((args.batch_size, in_channels, size, size)).astype(np.float32)
    return ms.Tensor(x)


def run_file(path: str, fmt: str, x):
    """Logits of the exported file on x, or None when the runtime for the format is not installed."""
    if fmt == "MINDIR":
        import mindspore as ms
        return ms.nn.GraphCell(ms.load(path))(x).asnumpy()
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.asnumpy()})[0]


def compare(name: str, got: np.ndarray, ref: np.ndarray, tolerance: float) -> None:
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    rel = diff / max(float(np.abs(ref).max()), 1e-30)
    print(f"{name}: max |diff| = {diff:.3e}, {rel:.3e} of max |logit| {float(np.abs(ref).max()):.3e} "
          f"(tolerance {tolerance:.0e})")
    if got.shape != ref.shape or not rel <= tolerance:
        raise ExportError(f"{name} differs beyond the tolerance (shape {got.shape} vs {ref.shape}, relative "
                          f"difference {rel:.3e}); nothing written.")


def export_atomically(net, x, fmt: str, final_path: str, check) -> None:
    """Export into a private temporary directory beside the output, check, then rename into place.

    mindspore.export appends the extension itself, makes the file read-only and (for ONNX) chmods the file's
    directory to 0o700, so it never writes in the user's directory directly."""
    import mindspore as ms

    from mindcv_ext.checkpoint import make_temp, remove_temp_files

    directory = os.path.dirname(final_path)
    os.makedirs(directory, exist_ok=True)
    # A killed export leaves its folder (the whole model file): remove those of exports that are over.
    stale = remove_temp_files(directory, os.path.basename(final_path), legacy_export=True)
    if stale:
        print(f"note: removed {len(stale)} temporary folder(s) of killed exports: "
              f"{', '.join(printable(os.path.basename(p)) for p in stale)}")
    tmpdir = make_temp(final_path, directory=True)  # same filesystem: the rename is atomic
    try:
        stem = os.path.join(tmpdir, "model")
        try:
            ms.export(net, x, file_name=stem, file_format=fmt)
        except RuntimeError as e:  # e.g. an op the ONNX exporter cannot write; the first line says which
            raise ExportError(f"mindspore.export to {fmt} failed: {str(e).strip().splitlines()[0]}") from e
        produced = stem + EXTENSIONS[fmt]
        if not os.path.isfile(produced):  # e.g. MindSpore's split save for > 1 GB graphs
            raise ExportError(f"mindspore.export did not write one {EXTENSIONS[fmt]} file (got "
                              f"{sorted(os.listdir(tmpdir))}); this script handles single-file exports only.")
        check(produced)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(produced, 0o666 & ~umask)  # an ordinary file, not MindSpore's owner-read-only one
        os.replace(produced, final_path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def onnx_exportable(net) -> int:
    """Rewrite what MindSpore 2.10's ONNX exporter cannot write into equivalents it can; returns how many exact
    GELUs were swapped.
    - Erf: no mapping ("Can not find key Erf in convert map"); exact GELUs become ErfFreeGELU.
    - a multi-output Split (the partition FC's set shuffle) is written with dangling inputs, and Im2Col (the
      patch convs) not at all; both go back to their Transpose forms (same values)."""
    from mindspore import nn

    from _onnx_ops import ErfFreeGELU
    from mindcv_ext.models.repmlp import PartitionFC, PatchConv

    swapped = 0
    for _, cell in list(net.cells_and_names()):
        if isinstance(cell, PartitionFC):
            cell.split_sets = False
        if isinstance(cell, PatchConv):
            cell.im2col = False
        for name, child in list(cell.name_cells().items()):
            if isinstance(child, nn.GELU) and child.approximate in ("none", False):  # str in 2.10
                setattr(cell, name, ErfFreeGELU())
                swapped += 1
    return swapped


def main(argv=None) -> int:
    args = parse_args(argv)
    final_path = output_path(args)
    import mindspore as ms

    try:  # the network and the batch: a problem here is the command's or the checkpoint's (exit 2)
        ms.set_context(mode=ms.GRAPH_MODE, device_target=args.device_target)
        net, form, in_channels = build_deploy_net(args)
        x = random_batch(args, net, in_channels)
    except (ExportError, OSError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return BAD_INPUT
    try:
        export(args, net, form, x, final_path)
    except (ExportError, OSError) as e:  # a failed check or export: nothing written
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return FAILED
    return OK


def export(args, net, form, x, final_path) -> None:
    import mindcv_ext

    reference = None
    if args.check:
        reference = net(x).asnumpy().astype(np.float64)
    if form == "train":
        mindcv_ext.reparameterize(net)
        if args.check:
            deploy_logits = net(x).asnumpy()
            compare("deploy form vs train form (network)", deploy_logits, reference, args.tolerance)
            reference = deploy_logits.astype(np.float64)

    if args.file_format == "ONNX":
        swapped = onnx_exportable(net)
        if swapped:
            print(f"ONNX: {swapped} exact GELUs written as 0.5*x*(1+erf(x/sqrt 2)) with a polynomial erf "
                  f"(MindSpore's ONNX exporter cannot write Erf); the check below bounds the difference")

    def check(path):
        if not args.check:
            print("--check False: the file was not loaded back")
            return
        got = run_file(path, args.file_format, x)
        if got is None:
            print("onnxruntime is not installed: the ONNX file was NOT checked "
                  "(pip install onnxruntime, or the project's 'onnx' extra)")
            return
        compare(f"{args.file_format} file vs network", got, reference, args.tolerance)

    export_atomically(net, x, args.file_format, final_path, check)
    print(f"wrote {final_path} ({os.path.getsize(final_path) / 2**20:.1f} MiB): {args.model} deploy form, "
          f"input ({', '.join(map(str, x.shape))}) float32")


if __name__ == "__main__":
    run_tool(main, PROG)  # Ctrl-C / SIGTERM: one line, 130 / 143; exits without MindSpore's shutdown noise
