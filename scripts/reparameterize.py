"""Turn a train-form RepMLPNet checkpoint into a deploy-form one (Locality Injection).

    python scripts/reparameterize.py --model repmlp_t224 --ckpt_path train.ckpt --output deploy.ckpt

The deploy checkpoint loads with mindcv.create_model(name, num_classes=..., deploy=True, checkpoint_path=...) after
`import mindcv_ext`; the script prints that line for the file it wrote. Before writing, the
script checks on a random batch that both forms give the same logits.
"""
import argparse
import os
import sys

import _common  # noqa: F401  (import path + helpers)
import numpy as np

from mindcv_ext.cli import BAD_INPUT, FAILED, OK, printable, run_tool

PROG = "reparameterize.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered model name, e.g. repmlp_t224")
    p.add_argument("--ckpt_path", required=True, help="train-form checkpoint (.ckpt or .safetensors)")
    p.add_argument("--output", required=True, help="deploy checkpoint to write: .ckpt or .safetensors (the format "
                                                   "follows the name)")
    p.add_argument("--num_classes", type=int, default=None, help="default: read from the checkpoint's head")
    p.add_argument("--ema", type=_common.str2bool, default=False, help="convert the EMA weights (ema.* keys)")
    p.add_argument("--check", type=_common.str2bool, default=True,
                   help="compare train/deploy logits on a random batch before writing (default True)")
    p.add_argument("--overwrite", type=_common.str2bool, default=False,
                   help="replace an existing --output this script did not write (default False; a run's training "
                        "state, e.g. latest.ckpt, is never replaced)")
    return p.parse_args(argv)


def _err(text) -> None:
    print(f"{PROG}: error: {printable(text)}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mindcv_ext.checkpoint import CHECKPOINT_SUFFIXES, CheckpointError, check_output_path
    from mindcv_ext.outputs import same_file

    try:  # before loading anything: a path that cannot be written or read back is a one-line error
        if same_file(args.ckpt_path, args.output):
            raise CheckpointError(f"--output {args.output} is the train-form checkpoint itself; write the deploy "
                                  f"form to another file (e.g. {os.path.splitext(args.output)[0]}_deploy.ckpt).")
        check_output_path(args.output, suffixes=CHECKPOINT_SUFFIXES, tool=PROG, overwrite=args.overwrite)
    except CheckpointError as e:
        _err(e)
        return BAD_INPUT
    import mindcv
    import mindspore as ms

    import mindcv_ext
    from mindcv_ext.verify import reparam_error
    from mindcv_ext.weights import build_model, load_hint, read_weights, save_weights

    try:  # everything before the conversion: a problem here is the command's or the file's (exit 2)
        if not mindcv.is_model(args.model):
            raise CheckpointError(f"unknown model {args.model!r}; registered RepMLPNets: "
                                  f"{', '.join(mindcv.list_models('*repmlp*'))}")
        w = read_weights(args.ckpt_path, ema=args.ema)  # read once: inspected here, loaded below
        if w.form == "deploy":
            raise CheckpointError(f"{args.ckpt_path} is already a deploy-form checkpoint: nothing to convert. Load "
                                  f"it with: " + load_hint(args.model, args.ckpt_path, w.num_classes or 1000, True,
                                                           w.in_channels))
        if w.form is None:
            raise CheckpointError(f"{args.ckpt_path} holds no RepMLPNet blocks; is it a {args.model} checkpoint?")
        net, w = build_model(args.model, w, num_classes=args.num_classes)
    except (CheckpointError, OSError, ValueError) as e:  # FileNotFoundError is an OSError
        _err(e)
        return BAD_INPUT
    net.set_train(False)

    if args.check:
        size = net.image_size
        x = ms.Tensor(np.random.default_rng(0).standard_normal((2, w.in_channels or 3, size, size)), ms.float32)
        err = reparam_error(net, x)
        print(f"train vs deploy logits on a random batch: max |diff| / max |logit| = {err:.2e}")
        if not err <= 1e-4:
            _err(f"the deploy form does not reproduce the train form (relative error {err:.2e}); nothing written.")
            return FAILED
    else:
        mindcv_ext.reparameterize(net)
    try:  # the class names travel with the weights; the mark lets a re-run replace this file
        save_weights(net, args.output, w.class_names, tool=PROG)
    except CheckpointError as e:  # a full disk, a read-only folder: the output place's problem (2); nothing changed
        _err(e)
        return BAD_INPUT
    n = sum(p.size for p in net.get_parameters())
    print(f"wrote deploy checkpoint {printable(args.output)} ({n:,} values) for {args.model}"
          + (f", {len(w.class_names)} class names" if w.class_names else "") + ". Load it with:")
    print(load_hint(args.model, args.output, net.num_classes, True, w.in_channels))
    return OK


if __name__ == "__main__":
    run_tool(main, PROG)  # Ctrl-C / SIGTERM: one line, 130 / 143; exits without MindSpore's shutdown noise
