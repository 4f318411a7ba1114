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
Exit status (mindcv_ext.cli's table): 0 done; 2 bad input found before the evaluation (an unknown model, a missing
or corrupt checkpoint, bad data: one "validate.py: error:" line); 1 the evaluation failed; 130 / 143 Ctrl-C / SIGTERM.
"""
import json
import os
import sys

from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.cli import OK, printable, run_tool, staged
from mindcv_ext.config import ConfigError
from mindcv_ext.training.config import load_eval_config

PROG = "validate.py"


def prepare(cfg):
    """Every check before the evaluation (the command, the data, the weights), then the network and the loader:
    a problem here is bad input. Returns (net, weights, image_size, loader, num_samples)."""
    import mindcv

    import mindcv_ext  # noqa: F401  (registers the models)
    from mindcv_ext.data import check_images, create_eval_loader
    from mindcv_ext.data.loaders import class_folders
    from mindcv_ext.evaluation import build_eval_model, set_eval_context
    from mindcv_ext.weights import check_class_names, refuse_segmentation_checkpoint

    if not mindcv.is_model(cfg.model):  # before the data checks, which can take seconds
        raise ConfigError(f"unknown model {cfg.model!r}; use one of {', '.join(mindcv.list_models('*repmlp*'))} "
                          f"(or another registered mindcv model).")
    refuse_segmentation_checkpoint(cfg.ckpt_path, "validate_seg.py")
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
    return net, w, image_size, loader, num_samples


def run(cfg, prepared) -> dict:
    from mindcv_ext.evaluation import evaluate

    net, w, image_size, loader, num_samples = prepared
    print(printable(f"{cfg.model} ({w.form or 'plain'} form{', EMA weights' if w.ema else ''}) from {cfg.ckpt_path}: "
                    f"{num_samples} images of {os.path.join(cfg.data_dir, cfg.val_split)}, {image_size}x{image_size}, "
                    f"crop_pct {cfg.crop_pct}, {cfg.interpolation}"), flush=True)
    result = evaluate(net, loader, log_interval=cfg.log_interval, log=lambda s: print(s, flush=True))
    if result["count"] != num_samples:
        raise CheckpointError(f"evaluated {result['count']} images but the split has {num_samples}")
    return dict(model=cfg.model, checkpoint=os.path.abspath(cfg.ckpt_path), form=w.form, ema=w.ema,
                top1=round(result["top1"], 4), top5=round(result["top5"], 4), top5_k=result["top5_k"],
                loss=round(result["loss"], 6), num_samples=result["count"], num_classes=net.num_classes,
                split=cfg.val_split, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, image_size=image_size,
                class_names_checked=w.class_names is not None, config=cfg.config or None)


def main(argv=None) -> int:
    """The exit codes of mindcv_ext.cli: 2 for bad input found before the evaluation (the command, the recipe, the
    weights, the data), 1 when the evaluation itself fails."""
    state = {}

    def setup():
        state["cfg"] = cfg = load_eval_config(argv, prog=PROG)
        for note in cfg.notes:
            print(f"note: {printable(note)}", file=sys.stderr)
        return prepare(cfg)

    def work(prepared) -> int:
        result = run(state["cfg"], prepared)
        print(f"Top-1 {result['top1']:.2f}%  Top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
              f"({result['num_samples']} images)")
        print(json.dumps(result), flush=True)
        return OK

    # mid-run failures: e.g. an image MindSpore refused mid-run
    return staged(setup, work, PROG, bad_input=(ConfigError, CheckpointError, OSError, ValueError),
                  failed=(CheckpointError, OSError, ValueError, RuntimeError))


if __name__ == "__main__":
    run_tool(main, PROG)  # Ctrl-C / SIGTERM: one line, 130 / 143; exits without MindSpore's shutdown noise
