"""Evaluate a RepMLPNet checkpoint: top-1, top-5 and cross-entropy loss on an ImageFolder split.

    python validate.py --model=repmlp_t224 --data_dir /path/to/imagenet --ckpt_path X.ckpt

The checkpoint's keys say whether it is train form or deploy form (re-parameterized); the matching network is
built, and an explicit --deploy that contradicts the file is an error. A missing, unreadable or non-fitting
checkpoint is an error (mindcv's own path would silently evaluate random weights). Preprocessing: resize the
short side to int(image_size / crop_pct), centre crop image_size, ImageNet mean/std; the authors evaluate with
--crop_pct 1.0, mindcv with 0.875. The last line printed is one JSON object with the results.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
from _common import str2bool  # noqa: E402  (shared with the scripts; no heavy imports)


class ValidateError(Exception):
    """A problem the user can fix; printed without a traceback."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered model name, e.g. repmlp_t224 or demo_repmlp")
    p.add_argument("--data_dir", required=True, help="dataset root holding <split>/<class>/<images>")
    p.add_argument("--ckpt_path", required=True, help="train- or deploy-form checkpoint (.ckpt / .safetensors)")
    p.add_argument("--split", "--val_split", dest="split", default="val", help="split directory (default val)")
    p.add_argument("--dataset", default="imagenet", help="only ImageFolder data: imagenet (default) or ''")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--crop_pct", type=float, default=0.875, help="0.875 mindcv (default), 1.0 the authors")
    p.add_argument("--interpolation", default="bilinear", help="resize filter (bilinear, bicubic, nearest, ...)")
    p.add_argument("--image_size", "--image_resize", dest="image_size", type=int, default=None,
                   help="crop size (default: the model's native input size; multiples of it also work)")
    p.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint's head")
    p.add_argument("--deploy", type=str2bool, default=None,
                   help="expect a deploy-form (True) or train-form (False) checkpoint; default: from its keys")
    p.add_argument("--ema", type=str2bool, default=False, help="evaluate the EMA weights (ema.* keys)")
    p.add_argument("--gelu_approximate", type=str2bool, default=False,
                   help="tanh GELU: True for mindcv's published t224 weights, False (exact erf) otherwise")
    p.add_argument("--device_target", default="CPU", choices=["CPU", "GPU", "Ascend"])
    p.add_argument("--mode", type=int, default=0, choices=[0, 1], help="0 graph (default), 1 PyNative")
    p.add_argument("--num_parallel_workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--log_interval", type=int, default=50, help="print running accuracy every N batches (0: off)")
    args = p.parse_args(argv)

    # Everything checkable without MindSpore is checked here, before any model is built or image read.
    if args.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.num_parallel_workers < 1:
        p.error(f"--num_parallel_workers must be >= 1, got {args.num_parallel_workers}")
    if not 0.0 < args.crop_pct <= 1.0:
        p.error(f"--crop_pct must be in (0, 1], got {args.crop_pct} (authors: 1.0, mindcv: 0.875)")
    if args.image_size is not None and args.image_size < 1:
        p.error(f"--image_size must be positive, got {args.image_size}")
    if args.num_classes is not None and args.num_classes < 1:
        p.error(f"--num_classes must be positive, got {args.num_classes}")
    if args.dataset.lower() not in ("imagenet", ""):
        p.error(f"--dataset {args.dataset!r}: validate.py reads ImageFolder data only (imagenet or '')")
    if not os.path.exists(args.ckpt_path):
        p.error(f"checkpoint not found: {args.ckpt_path!r}. Without weights the result would be chance level; "
                f"pass the .ckpt written by train.py (or scripts/reparameterize.py / convert_weights.py).")
    if not os.path.isfile(args.ckpt_path):
        p.error(f"--ckpt_path {args.ckpt_path!r} is not a file; pass the checkpoint file itself")
    from mindspore.dataset.vision import Inter  # the resize filters MindSpore knows (mindcv would fall back silently)

    if not hasattr(Inter, args.interpolation.upper()):
        p.error(f"unknown --interpolation {args.interpolation!r}; use one of "
                f"{', '.join(n.lower() for n in Inter.__members__)}")
    args.interpolation = args.interpolation.lower()
    split_dir = os.path.join(args.data_dir, args.split)
    if not os.path.isdir(split_dir):
        p.error(f"{split_dir!r} not found. --data_dir must hold an ImageFolder tree "
                f"{os.path.join(args.data_dir, args.split, '<class>', '<image>.jpg')}" +
                ("" if os.path.isdir(args.data_dir) else f" (and {args.data_dir!r} does not exist)"))
    return args


def load_weights_for(args):
    """(parameter dict, form, model kwargs) from the checkpoint, with every mismatch turned into an error."""
    import mindcv_ext
    from mindcv_ext.models.repmlp import checkpoint_model_kwargs

    try:
        params = mindcv_ext.load_checkpoint(args.ckpt_path)
    except (ValueError, OSError) as e:
        raise ValidateError(str(e)) from e
    if args.ema:
        ema = {k[len("ema."):]: v for k, v in params.items() if k.startswith("ema.")}
        if not ema:
            raise ValidateError(f"{args.ckpt_path} has no EMA weights (no 'ema.*' keys); run without --ema True.")
        for k, v in ema.items():
            v.name = k  # MindSpore loads by Parameter.name
        params = ema
    elif any(k.startswith("ema.") for k in params):
        print(f"note: {args.ckpt_path} also holds EMA weights; evaluating the raw ones (--ema True for the EMA ones)")
    form = mindcv_ext.checkpoint_form(params)
    if form is None:
        raise ValidateError(f"{args.ckpt_path} holds no RepMLPNet blocks (no '...repmlp_block.fc3.*' keys"
                            f"{' under ema.' if args.ema else ''}); is it a {args.model} checkpoint?")
    if args.deploy is not None and args.deploy != (form == "deploy"):
        raise ValidateError(
            f"--deploy {args.deploy} contradicts {args.ckpt_path}, which is a {form}-form checkpoint "
            + ("(fc3_bn / repconv keys). Drop --deploy, or convert it first with scripts/reparameterize.py."
               if form == "train" else "(fc3 has a bias, no conv branches). Drop --deploy: the form is read from "
                                        "the file."))
    kwargs = checkpoint_model_kwargs(params)
    head = kwargs.get("num_classes")
    if args.num_classes is not None and head is not None and args.num_classes != head:
        raise ValidateError(f"--num_classes {args.num_classes} but {args.ckpt_path} has a {head}-class head; "
                            f"drop --num_classes or pass {head}.")
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if "num_classes" not in kwargs:
        raise ValidateError(f"{args.ckpt_path} has no 'head.weight'; pass --num_classes.")
    return params, form, kwargs


def build_net(args, params, form, kwargs):
    import mindcv

    import mindcv_ext
    from mindcv_ext.models.repmlp import default_cfgs

    if not mindcv.is_model(args.model):
        raise ValidateError(f"unknown model {args.model!r}; registered RepMLPNets: "
                            f"{', '.join(mindcv.list_models('*repmlp*'))}")
    net = mindcv.create_model(args.model, deploy=(form == "deploy"), gelu_approximate=args.gelu_approximate,
                              **kwargs)
    native = default_cfgs.get(args.model, {}).get("input_size", (3, net.image_size, net.image_size))[-1]
    image_size = args.image_size or native
    try:
        net.check_input((1, kwargs.get("in_channels", 3), image_size, image_size))
    except ValueError as e:
        raise ValidateError(f"--image_size {image_size}: {e}") from e
    try:
        mindcv_ext.load_weights(net, params, source=args.ckpt_path)
    except ValueError as e:  # CheckpointError names the missing / unexpected / mis-shaped keys
        raise ValidateError(f"{e}. Is --model {args.model} the variant this checkpoint was trained as?") from e
    net.set_train(False)
    return net, image_size


class Meter:
    """Running top-1 / top-5 counts and summed cross entropy (float64, from the logits)."""

    def __init__(self, num_classes: int):
        self.k = min(5, num_classes)
        self.n = self.top1 = self.top5 = 0
        self.loss = 0.0

    def update(self, logits: np.ndarray, labels: np.ndarray):
        logits = logits.astype(np.float64)
        labels = labels.astype(np.int64)
        order = np.argsort(-logits, axis=1, kind="stable")[:, :self.k]
        self.top1 += int((order[:, 0] == labels).sum())
        self.top5 += int((order == labels[:, None]).any(axis=1).sum())
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self.loss -= float(log_prob[np.arange(len(labels)), labels].sum())
        self.n += len(labels)

    def result(self):
        n = max(self.n, 1)
        return 100.0 * self.top1 / n, 100.0 * self.top5 / n, self.loss / n


def evaluate(net, loader, num_classes: int, log_interval: int) -> Meter:
    import mindspore as ms

    meter = Meter(num_classes)
    steps = loader.get_dataset_size()
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader.create_tuple_iterator(output_numpy=True), 1):
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValidateError(f"label {int(labels.max())} from the dataset is outside the model's {num_classes} "
                                f"classes: the split has more class directories than the checkpoint's head.")
        meter.update(net(ms.Tensor(images)).asnumpy(), labels)
        if log_interval and (i % log_interval == 0 or i == steps):
            top1, top5, loss = meter.result()
            print(f"[{i}/{steps}] top1 {top1:.2f} top5 {top5:.2f} loss {loss:.4f} "
                  f"({meter.n / (time.perf_counter() - start):.1f} img/s)", flush=True)
    return meter


def run(args) -> dict:
    import mindspore as ms

    ms.set_context(mode=args.mode, device_target=args.device_target)
    from mindcv_ext.data import create_eval_loader
    from mindcv_ext.data.loaders import check_image_folder

    params, form, kwargs = load_weights_for(args)
    num_classes = kwargs["num_classes"]
    try:  # class directories against the head, before the (possibly large) network is built
        check_image_folder(args.data_dir, args.split, num_classes)
    except (ValueError, OSError) as e:
        raise ValidateError(str(e)) from e
    net, image_size = build_net(args, params, form, kwargs)
    del params

    try:
        loader, num_samples = create_eval_loader(
            args.data_dir, split=args.split, batch_size=args.batch_size, image_size=image_size,
            crop_pct=args.crop_pct, interpolation=args.interpolation, num_parallel_workers=args.num_parallel_workers,
            num_classes=num_classes)
    except (ValueError, OSError) as e:
        raise ValidateError(str(e)) from e
    print(f"{args.model} ({form} form{', EMA weights' if args.ema else ''}) from {args.ckpt_path}: "
          f"{num_samples} images of {os.path.join(args.data_dir, args.split)}, {image_size}x{image_size}, "
          f"crop_pct {args.crop_pct}, {args.interpolation}", flush=True)
    meter = evaluate(net, loader, num_classes, args.log_interval)
    if meter.n != num_samples:
        raise ValidateError(f"evaluated {meter.n} images but the split has {num_samples}")
    top1, top5, loss = meter.result()
    return dict(model=args.model, checkpoint=os.path.abspath(args.ckpt_path), form=form, ema=args.ema,
                top1=round(top1, 4), top5=round(top5, 4), top5_k=meter.k, loss=round(loss, 6),
                num_samples=meter.n, num_classes=num_classes, split=args.split, crop_pct=args.crop_pct,
                interpolation=args.interpolation, image_size=image_size)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ValidateError as e:
        print(f"validate.py: error: {e}", file=sys.stderr)
        return 1
    print(f"Top-1 {result['top1']:.2f}%  Top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
          f"({result['num_samples']} images)")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip MindSpore 2.10's noisy Cell.__del__ tracebacks at interpreter shutdown
