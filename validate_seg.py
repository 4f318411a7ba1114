"""Evaluate a segmentation checkpoint of train_seg.py: mIoU, per-class IoU / accuracy, pixel accuracy (aAcc).

    python validate_seg.py -c configs/seg/demo_seg_cpu.yaml --ckpt_path outputs/seg_demo/best.ckpt
    python validate_seg.py -c <recipe> --ckpt_path best.ckpt --save_deploy best_deploy.ckpt   # re-parameterize too
    python validate_seg.py -c <recipe> --ckpt_path best.ckpt --eval_mode slide

The model (backbone variant, head, classes, train or deploy form) is read from the checkpoint; the recipe gives
the data (dataset, data_dir, val_split) and the evaluation settings (eval_mode, eval_scale, eval_crop,
eval_stride, mean, std). Next to the model's scores it prints a trivial baseline: the most frequent labelled class
predicted everywhere. The last stdout line is the result as JSON. Under msrun (distribute: True) each rank
evaluates a shard and the confusion matrices are summed.
"""
import json
import os
import time

import mindcv_ext  # noqa: F401
from mindcv_ext import cli
from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.seg.config import load_seg_eval_config
from mindcv_ext.seg.data import build_seg_eval_loader, check_pairs, list_pairs
from mindcv_ext.seg.demo import ensure_seg_demo
from mindcv_ext.seg.inference import evaluate_seg
from mindcv_ext.seg.metrics import format_table, majority_baseline, seg_metrics
from mindcv_ext.seg.model import load_for_inference
from mindcv_ext.training.config import ConfigError
from mindcv_ext.training.runtime import init_context


def main(argv=None) -> int:
    cfg = load_seg_eval_config(argv, "validate_seg.py")
    rank, group_size = init_context(cfg)
    say = print if rank == 0 else (lambda *a, **k: None)
    for note in cfg.notes:
        say(f"note: {note}")
    data_dir = ensure_seg_demo(cfg.data_dir) if cfg.dataset == "demo" else cfg.data_dir
    pairs = list_pairs(cfg.layout, data_dir, cfg.val_split)
    model, names, arch = load_for_inference(cfg, say)
    if "num_classes" in cfg._given and cfg.num_classes != arch["num_classes"]:
        raise ConfigError(f"--num_classes {cfg.num_classes} but {cfg.ckpt_path} predicts {arch['num_classes']} "
                          f"classes.")
    num_classes = arch["num_classes"]
    names = names or (cfg.class_names if len(cfg.class_names) == num_classes else [str(i) for i in range(num_classes)])
    if cfg.check_data:
        check_pairs(pairs, num_classes, cfg.reduce_zero_label, workers=max(1, (os.cpu_count() or 1) // group_size))
    if cfg.eval_mode == "slide" and (cfg.eval_crop[0] % model.native_size or cfg.eval_crop[1] % model.native_size):
        raise ConfigError(f"eval_crop {list(cfg.eval_crop)} must be multiples of {arch['backbone']}'s native size "
                          f"{model.native_size}.")
    form = "train form" if not arch["deploy"] else \
        "deploy form (re-parameterized here)" if arch.get("reparameterized") else "deploy form"
    say(f"{cfg.ckpt_path}: {arch['backbone']} + {arch['head']}, {num_classes} classes, {form} | {len(pairs)} images "
        f"in {os.path.join(data_dir, cfg.val_split)} | {cfg.eval_mode} inference"
        + (f" (window {cfg.eval_crop[0]}x{cfg.eval_crop[1]}, stride {cfg.eval_stride[0]}x{cfg.eval_stride[1]})"
           if cfg.eval_mode == "slide" else ""), flush=True)
    all_reduce = None
    if group_size > 1:
        from mindcv.utils import AllReduceSum
        all_reduce = AllReduceSum()
    t0 = time.time()
    loader = build_seg_eval_loader(pairs, cfg, rank, group_size)
    cm = evaluate_seg(model, loader, num_classes, all_reduce=all_reduce, mode=cfg.eval_mode, crop_size=cfg.eval_crop,
                      stride=cfg.eval_stride, log=say, log_interval=cfg.log_interval)
    result = seg_metrics(cm, names)
    base = majority_baseline(cm, names)
    for line in format_table(result):
        say(line)
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    say(f"mIoU {fmt(result['mIoU'])}  mAcc {fmt(result['mAcc'])}  aAcc {fmt(result['aAcc'])}  "
        f"({len(pairs)} images, {result['pixels']} labelled pixels, {time.time() - t0:.1f} s)")
    say(f"trivial baseline ('{base['class']}' everywhere): mIoU {fmt(base['mIoU'])}  aAcc {fmt(base['aAcc'])}")
    say(json.dumps({"mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"],
                    "per_class_IoU": {r["class"]: r["IoU"] for r in result["per_class"]},
                    "baseline_mIoU": base["mIoU"], "baseline_aAcc": base["aAcc"], "images": len(pairs),
                    "form": "deploy" if arch["deploy"] else "train", "eval_mode": cfg.eval_mode}), flush=True)
    return 0


def run(argv=None) -> int:
    """main() with the project's exit codes; what the command line runs (tests call it too)."""
    return cli.guarded(lambda: main(argv), "validate_seg.py",
                       bad_input=(ConfigError, CheckpointError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    cli.run_tool(run, "validate_seg.py")  # signals: 130 / 143 with one line, also when blocked in native code
