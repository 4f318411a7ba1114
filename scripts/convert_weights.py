"""Convert RepMLPNet weights (the authors' .pth, mmpretrain's .pth, or a mindcv-layout .ckpt) to a MindSpore
checkpoint of this project's model, keeping the source's form (train or deploy).

    python scripts/convert_weights.py --model repmlp_b256 --src RepMLPNet-B256-train.pth --output b256.ckpt

Reading .pth needs torch (pip install "mindcv-ext-repmlp[torch]"); .safetensors, .npz and .ckpt sources do not.
"""
import argparse
import os
import sys

import _common  # noqa: F401  (import path for a source checkout)

from mindcv_ext.cli import BAD_INPUT, FAILED, OK, printable, run_tool

PROG = "convert_weights.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered name, e.g. repmlp_t224, repmlp_b256")
    p.add_argument("--src", required=True,
                   help="source weights: .pth/.pt/.pth.tar/.bin (torch), .safetensors, .npz or .ckpt")
    p.add_argument("--output", required=True, help="output .ckpt, or .safetensors (format chosen by the name)")
    p.add_argument("--num_classes", type=int, default=None,
                   help="classifier size; default: the source's")
    p.add_argument("--overwrite", type=_common.str2bool, default=False,
                   help="replace an existing --output this script did not write (default False; a run's training "
                        "state, e.g. latest.ckpt, is never replaced)")
    args = p.parse_args(argv)
    # Cheap checks first, so a typo fails in a second rather than after loading hundreds of MB.
    if args.num_classes is not None and args.num_classes <= 0:
        p.error(f"--num_classes must be positive, got {args.num_classes}")
    if not os.path.isfile(args.src):
        what = "is a directory" if os.path.isdir(args.src) else "does not exist"
        p.error(f"--src {args.src!r} {what}; pass the weight file (relative paths start at {os.getcwd()!r})")
    from mindcv_ext.outputs import same_file

    if same_file(args.src, args.output):
        p.error("--output is the source file; write to another name")
    from mindcv_ext.checkpoint import CHECKPOINT_SUFFIXES, CheckpointError, check_output_path

    try:  # cheap checks first, so a typo fails in a second rather than after loading hundreds of MB
        check_output_path(args.output, suffixes=CHECKPOINT_SUFFIXES, tool=PROG, overwrite=args.overwrite)
    except CheckpointError as e:  # one line, as every bad input (no usage lines)
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        raise SystemExit(BAD_INPUT) from None
    return p, args


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    import mindcv

    import mindcv_ext  # noqa: F401  (registers our RepMLPNets in mindcv)
    from mindcv_ext.checkpoint import CheckpointError
    from mindcv_ext.weights import build_model, load_hint, read_weights, save_weights

    if not mindcv.is_model(args.model):
        parser.error(f"--model {args.model!r} is not a registered model; RepMLPNets: "
                     f"{', '.join(mindcv.list_models('*repmlp*'))}")
    try:  # reading and fitting the source: a problem here is the file's (exit 2)
        w = read_weights(args.src)
        print("Found " + w.describe())
        # The source's form, class count and in_channels unless --num_classes asks for another head size.
        net, w = build_model(args.model, w, num_classes=args.num_classes, log=print)
    except (CheckpointError, OSError, ValueError) as e:  # FileNotFoundError is an OSError
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return BAD_INPUT
    try:  # the mark lets a re-run of this script replace the file
        save_weights(net, args.output, w.class_names, tool=PROG)
    except CheckpointError as e:  # a full disk, a read-only folder: the output place's problem (2); nothing changed
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return BAD_INPUT
    n = sum(1 for _ in net.get_parameters())
    print(f"Wrote {printable(args.output)}: {n} tensors, {w.form} form. Load it with:")
    print(load_hint(args.model, args.output, net.num_classes, w.form == "deploy", w.in_channels))
    return OK


if __name__ == "__main__":
    run_tool(main, PROG)  # Ctrl-C / SIGTERM: one line, 130 / 143; exits without MindSpore's shutdown noise
