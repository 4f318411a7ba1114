"""Evaluate a checkpoint: top-1, top-5 and cross-entropy loss on an ImageFolder split.

    python validate.py -c configs/repmlp/repmlp_t224_ascend.yaml --data_dir /path/to/imagenet --ckpt_path X.ckpt
    python validate.py --model=repmlp_t224 --data_dir /path/to/imagenet --ckpt_path X.ckpt

As in mindcv, `-c/--config` reads the training recipe (model, num_classes, image_resize, crop_pct, interpolation,
batch_size, data_dir, val_split, device_target, mode, ...; every training key is accepted) and `--key value`
overrides it. The checkpoint's keys say whether it is train or deploy form (re-parameterized); the matching network
is built. A missing, unreadable or non-fitting checkpoint is an error (mindcv's own path would silently evaluate
random weights), and so are class folders that differ from the class names recorded in the checkpoint.
Preprocessing: resize the short side to int(image_size / crop_pct), centre crop, mean/std; the authors evaluate
with --crop_pct 1.0, mindcv with 0.875. The last line printed is one JSON object with the results.
"""
import json
import os
import sys

from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.training.config import ConfigError, load_eval_config


def run(cfg) -> dict:
    from mindcv_ext.data import check_images, create_eval_loader
    from mindcv_ext.data.loaders import class_folders
    from mindcv_ext.evaluation import build_eval_model, evaluate, set_eval_context
    from mindcv_ext.weights import check_class_names

    if not cfg.data_dir:
        raise ConfigError("validate.py needs the data: --data_dir with <val_split>/<class>/<images> (or a recipe "
                          "with data_dir).")
    classes = class_folders(cfg.data_dir, cfg.val_split)  # before the (possibly large) network is built
    # mindcv's Decode copies an image it cannot read into the working directory and stops the run: find such
    # files first (the structural check reads ImageNet's 50,000 val images in a few seconds).
    check_images(cfg.data_dir, splits=[cfg.val_split])
    set_eval_context(cfg)
    net, w, image_size = build_eval_model(cfg)
    num_classes = net.num_classes
    check_class_names(w.class_names, classes, f"{os.path.join(cfg.data_dir, cfg.val_split)} against "
                      f"{cfg.ckpt_path}", "Labels follow the sorted folder names, so every image would be scored "
                      "against the wrong class. Rename the folders to the training classes.")
    if len(classes) > num_classes:
        raise CheckpointError(f"{os.path.join(cfg.data_dir, cfg.val_split)} has {len(classes)} class folders but "
                              f"the checkpoint's head has {num_classes} classes.")
    loader, num_samples = create_eval_loader(
        cfg.data_dir, split=cfg.val_split, batch_size=cfg.batch_size, image_size=image_size, crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation, num_parallel_workers=cfg.num_parallel_workers, num_classes=num_classes,
        mean=cfg.mean, std=cfg.std)
    print(f"{cfg.model} ({w.form or 'plain'} form{', EMA weights' if w.ema else ''}) from {cfg.ckpt_path}: "
          f"{num_samples} images of {os.path.join(cfg.data_dir, cfg.val_split)}, {image_size}x{image_size}, "
          f"crop_pct {cfg.crop_pct}, {cfg.interpolation}", flush=True)
    result = evaluate(net, loader, log_interval=cfg.log_interval, log=lambda s: print(s, flush=True))
    if result["count"] != num_samples:
        raise CheckpointError(f"evaluated {result['count']} images but the split has {num_samples}")
    return dict(model=cfg.model, checkpoint=os.path.abspath(cfg.ckpt_path), form=w.form, ema=w.ema,
                top1=round(result["top1"], 4), top5=round(result["top5"], 4), top5_k=result["top5_k"],
                loss=round(result["loss"], 6), num_samples=result["count"], num_classes=num_classes,
                split=cfg.val_split, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, image_size=image_size,
                class_names_checked=w.class_names is not None, config=cfg.config or None)


def main(argv=None) -> int:
    try:
        cfg = load_eval_config(argv, prog="validate.py")
        for note in cfg.notes:
            print(f"note: {note}", file=sys.stderr)
        result = run(cfg)
    except ConfigError as e:  # the command or recipe is wrong
        print(f"validate.py: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, OSError, ValueError) as e:  # the files are: weights, data
        print(f"validate.py: error: {e}", file=sys.stderr)
        return 1
    print(f"Top-1 {result['top1']:.2f}%  Top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
          f"({result['num_samples']} images)")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as e:  # --help
        code = e.code if isinstance(e.code, int) else 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip MindSpore 2.10's noisy Cell.__del__ tracebacks at interpreter shutdown
