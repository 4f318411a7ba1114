"""Evaluate a segmentation checkpoint of train_seg.py: mIoU, per-class IoU / accuracy, pixel accuracy (aAcc).

    python validate_seg.py -c configs/seg/demo_seg_cpu.yaml --ckpt_path outputs/seg_demo/best.ckpt
    python validate_seg.py -c <recipe> --ckpt_path best.ckpt --save_deploy best_deploy.ckpt   # re-parameterize too
    python validate_seg.py -c <recipe> --ckpt_path best.ckpt --eval_mode slide

The model (backbone variant, head, classes, train or deploy form, training crop) is read from the checkpoint
(seg.inference.init_segmentor); the recipe gives the data (dataset, data_dir, val_split) and the evaluation
settings (eval_mode, eval_scale or img_scale, eval_crop or crop_size, eval_stride, mean, std). Without a recipe
images are scored at their own size and a sliding window is the checkpoint's training crop. Next to the model's
scores it prints a trivial baseline: the most frequent labelled class predicted everywhere. The last stdout line
is the result as JSON. Under msrun (distribute: True) each rank evaluates a shard and the confusion matrices are
summed. --save_deploy FILE writes the re-parameterized model (an existing FILE only if this tool wrote it, or with
--overwrite True; never a run's latest.ckpt). Exit status (mindcv_ext.cli): 0 done, 2 bad input found before the
evaluation (one line), 1 a failure during it (one line), 130 / 143 Ctrl-C / SIGTERM.
"""
import json
import os
import time

import mindcv_ext  # noqa: F401
from mindcv_ext import cli
from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.outputs import OutputError
from mindcv_ext.seg.config import load_seg_eval_config
from mindcv_ext.seg.data import DataError, build_seg_eval_loader, check_pairs, list_pairs
from mindcv_ext.seg.demo import ensure_seg_demo
from mindcv_ext.seg.inference import evaluate_seg, init_segmentor, save_deploy
from mindcv_ext.seg.metrics import format_table, majority_baseline, seg_metrics
from mindcv_ext.config import ConfigError
from mindcv_ext.training.runtime import init_context

PROG = "validate_seg.py"


def prepare(argv):
    """Every check before the evaluation (the command, the data, the checkpoint, the output place), then the model
    and the loader: a problem here is bad input (2)."""
    from mindcv_ext.outputs import same_file

    cfg = load_seg_eval_config(argv, PROG)
    rank, group_size = init_context(cfg)
    say = print if rank == 0 else (lambda *a, **k: None)
    for note in cfg.notes:
        say(f"note: {cli.printable(note)}")
    data_dir = ensure_seg_demo(cfg.data_dir) if cfg.dataset == "demo" else cfg.data_dir
    pairs = list_pairs(cfg.layout, data_dir, cfg.val_split)
    if cfg.save_deploy and same_file(cfg.ckpt_path, cfg.save_deploy):
        raise ConfigError(f"save_deploy {cfg.save_deploy} is the checkpoint being read; pick another name.")
    model = init_segmentor(cfg.ckpt_path, reparameterize=cfg.reparameterize or bool(cfg.save_deploy),
                           gelu_approximate=cfg.gelu_approximate, mode=cfg.eval_mode, scale=cfg.eval_scale,
                           crop_size=cfg.eval_crop, stride=cfg.eval_stride, mean=cfg.mean, std=cfg.std)
    arch = model.arch
    if "num_classes" in cfg._given and cfg.num_classes != arch["num_classes"]:
        raise ConfigError(f"--num_classes {cfg.num_classes} but {cfg.ckpt_path} predicts {arch['num_classes']} "
                          f"classes.")
    if cfg.check_data:
        check_pairs(pairs, arch["num_classes"], cfg.reduce_zero_label,
                    workers=max(1, (os.cpu_count() or 1) // group_size), split=cfg.val_split)
    cfg.eval_scale = model.test_cfg["scale"]  # the loader resizes as the model's test_cfg says
    cfg.num_classes = arch["num_classes"]
    loader = build_seg_eval_loader(pairs, cfg, rank, group_size)
    return cfg, say, group_size, data_dir, pairs, model, loader


def work(prepared) -> int:
    cfg, say, group_size, data_dir, pairs, model, loader = prepared
    arch, test = model.arch, model.test_cfg
    num_classes = arch["num_classes"]
    meta = model.dataset_meta
    recipe_names = cfg.class_names if len(cfg.class_names) == num_classes else None
    names = meta["classes"] if meta["recorded"] or not recipe_names else recipe_names
    if cfg.save_deploy:
        save_deploy(model, cfg.save_deploy, PROG)
        say(f"deploy-form checkpoint written: {cli.printable(cfg.save_deploy)}")
    form = "train form" if not arch["deploy"] else \
        "deploy form (re-parameterized here)" if arch.get("reparameterized") else "deploy form"
    size = f"resized to {test['scale'][0]}x{test['scale'][1]}" if test["scale"] else "at their own size"
    say(cli.printable(f"{cfg.ckpt_path}: {arch['backbone']} + {arch['head']}, {num_classes} classes, {form} | "
                      f"{len(pairs)} images in {os.path.dirname(os.path.commonpath([p for p, _ in pairs]) + '/')}"
                      f", {size} | {test['mode']} "
                      f"inference" + (f" (window {test['crop_size'][0]}x{test['crop_size'][1]}, stride "
                                      f"{test['stride'][0]}x{test['stride'][1]})" if test["mode"] == "slide" else "")),
        flush=True)
    all_reduce = None
    if group_size > 1:
        from mindcv.utils import AllReduceSum
        all_reduce = AllReduceSum()
    t0 = time.time()
    try:
        cm = evaluate_seg(model, loader, num_classes, all_reduce=all_reduce, mode=test["mode"],
                          crop_size=test["crop_size"], stride=test["stride"], log=say, log_interval=cfg.log_interval)
    except Exception:
        error = getattr(getattr(loader, "pair_source", None), "error", None)
        if error is not None:  # a pair that turned out bad mid-run (check_data off): its one line, not the pipeline's
            raise error from None
        raise
    result = seg_metrics(cm, names)
    base = majority_baseline(cm, names)
    for line in format_table(result):
        say(cli.printable(line))
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    say(f"mIoU {fmt(result['mIoU'])}  mAcc {fmt(result['mAcc'])}  aAcc {fmt(result['aAcc'])}  "
        f"({len(pairs)} images, {result['pixels']} labelled pixels, {time.time() - t0:.1f} s)")
    say(cli.printable(f"trivial baseline ('{base['class']}' everywhere): mIoU {fmt(base['mIoU'])}  "
                      f"aAcc {fmt(base['aAcc'])}"))
    say(json.dumps({"mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"],
                    "per_class_IoU": {r["class"]: r["IoU"] for r in result["per_class"]},
                    "baseline_mIoU": base["mIoU"], "baseline_aAcc": base["aAcc"], "images": len(pairs),
                    "form": "deploy" if arch["deploy"] else "train", "eval_mode": test["mode"]}), flush=True)
    return cli.OK


def main(argv=None) -> int:
    return cli.staged(lambda: prepare(argv), work, PROG,
                      bad_input=(ConfigError, CheckpointError, OutputError, FileNotFoundError, ValueError),
                      failed=(DataError, CheckpointError, OSError))


def run(argv=None) -> int:
    """main() with the project's exit codes, as the command line gets them (tests call it in-process)."""
    return cli.guarded(lambda: main(argv), PROG)


if __name__ == "__main__":
    cli.run_tool(main, PROG)  # signals: 130 / 143 with one line, also when blocked in native code
