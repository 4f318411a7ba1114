"""Train a RepMLPNet + UPerNet / Semantic FPN segmentation model from a YAML recipe (iteration-based, mmseg style).

    python train_seg.py --config configs/seg/demo_seg_cpu.yaml                      # CPU demo, generated data
    msrun --worker_num 8 --local_worker_num 8 python train_seg.py \
        --config configs/seg/repmlp_t256_upernet_cityscapes_ascend.yaml --data_dir /data/cityscapes \
        --backbone_ckpt RepMLPNet-T256-train.pth
    python train_seg.py --config <same recipe> --ckpt_path <ckpt_save_dir>/latest.ckpt --resume_opt True

`python train_seg.py --help` lists the keys. Every val_interval iterations: BN statistics averaged over ranks,
weights checked finite, evaluation on the val split (mIoU; best.ckpt keeps the best), latest.ckpt written
atomically with the optimizer state (a killed run resumes from it), and a periodic
<backbone>_<head>-<n>_<val_interval>.ckpt. metrics.jsonl and train.log go to ckpt_save_dir as well.
"""
import math
import os
import time

import mindcv_ext  # noqa: F401  (registers the RepMLPNets)
from mindcv_ext.checkpoint import CheckpointError, describe_nonfinite
from mindcv_ext.seg.config import load_seg_config
from mindcv_ext.seg.data import (DataError, build_seg_eval_loader, build_seg_train_loader, check_pairs, list_pairs,
                                  read_image, rescale_size)
from mindcv_ext.seg.demo import ensure_seg_demo
from mindcv_ext.seg.inference import evaluate_seg
from mindcv_ext.seg.metrics import format_table, seg_metrics
from mindcv_ext.seg.model import SYNC_BN_O2_FP32, SegWithLoss, create_seg_model, seg_metadata
from mindcv_ext.training.ckpt_manager import CheckpointManager, restore_training_state
from mindcv_ext.training.console import Progress, format_duration, setup_logging
from mindcv_ext.training.metrics import MetricsLog, plot_curves
from mindcv_ext.training.optim import build_loss_scale, build_optimizer
from mindcv_ext.training.run_end import RunEnd
from mindcv_ext.training.runner import Runner, check_run_folder, claim_run_folder, diverged, script_exit
from mindcv_ext.training.runtime import init_context
from mindcv_ext.training.step import NonFiniteLossError, TrainStep

RUN = RunEnd("train", "train_seg.py")  # how the run ends: exit codes, the error line, the run directory let go once


def poly_schedule(cfg):
    """One lr per iteration: mmseg's PolyLR ((lr - min_lr) * (1 - i / total) ** power + min_lr), times a linear
    warmup factor from warmup_ratio to 1 over the first warmup_iters."""
    lrs = []
    for i in range(cfg.total_iters):
        lr = (cfg.lr - cfg.min_lr) * (1 - i / cfg.total_iters) ** cfg.power + cfg.min_lr
        if i < cfg.warmup_iters:
            lr *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * i / cfg.warmup_iters
        lrs.append(float(lr))
    return lrs


def main(argv=None) -> int:
    cfg = load_seg_config(argv)
    resuming = bool(cfg.ckpt_path)
    resume_from = cfg.ckpt_path  # train_seg.py's ckpt_path only continues a run ("" for a fresh start)
    check_run_folder(RUN, cfg.ckpt_save_dir, resume_from)
    rank, group_size = init_context(cfg)
    claim_run_folder(RUN, cfg.ckpt_save_dir, resume_from, rank, group_size)  # one live run per ckpt_save_dir
    log = setup_logging(cfg.ckpt_save_dir, rank, group_size)
    for note in cfg.notes:
        log.warning(note)

    # ---- data (every pair checked before any model is built) ------------------------------------------------
    data_dir = ensure_seg_demo(cfg.data_dir) if cfg.dataset == "demo" else cfg.data_dir
    train_pairs = list_pairs(cfg.layout, data_dir, cfg.train_split)
    val_pairs = list_pairs(cfg.layout, data_dir, cfg.val_split) if cfg.val_while_train else []
    if cfg.check_data:
        t0 = time.time()
        workers = max(1, (os.cpu_count() or 1) // group_size)
        n = sum(check_pairs(pairs, cfg.num_classes, cfg.reduce_zero_label, workers=workers, split=split)
                for pairs, split in ((train_pairs, cfg.train_split), (val_pairs, cfg.val_split)) if pairs)
        log.info(f"check_data: {n} image/label pairs under {data_dir} read, all consistent ({time.time() - t0:.1f} s)")
    _check_crop_fits(cfg, train_pairs[0][0])
    loader, shard = build_seg_train_loader(train_pairs, cfg, rank, group_size)
    val_loader = build_seg_eval_loader(val_pairs, cfg, rank, group_size) if val_pairs else None

    # ---- model, optimizer, train step ---------------------------------------------------------------------------
    sync_bn = cfg.sync_bn
    if sync_bn and group_size > 1 and cfg.device_target == "CPU":  # MindSpore's SyncBatchNorm: Ascend and GPU only
        log.warning("sync_bn: MindSpore's SyncBatchNorm runs on Ascend and GPU only; on CPU each rank normalizes "
                    "with its own batch (plain BatchNorm; the statistics are averaged at every evaluation).")
        sync_bn = False
    model, init = create_seg_model(cfg.backbone, cfg.head, cfg.num_classes,
                                   checkpoint_path="" if resuming else cfg.backbone_ckpt, channels=cfg.head_channels,
                                   aux=cfg.aux_head, aux_channels=cfg.aux_channels, dropout=cfg.dropout,
                                   log=log.info, form="train", gelu_approximate=cfg.gelu_approximate,
                                   drop_path_rate=cfg.drop_path_rate or 0.0, sync_bn=sync_bn)
    if init is not None:
        log.info("encoder weights: " + init.describe().replace("\n", "\n    "))
    elif not resuming:
        log.warning("no backbone_ckpt: the encoder starts from random weights (the paper starts from ImageNet "
                    "weights; pass --backbone_ckpt for a meaningful Cityscapes run)")
    lrs = poly_schedule(cfg)
    optimizer = build_optimizer(cfg, model, lrs)
    from mindcv.utils.amp import auto_mixed_precision
    cast_list = cfg.amp_cast_list
    if sync_bn and cfg.amp_level == "O2" and cast_list is None:
        cast_list = SYNC_BN_O2_FP32  # BatchNorm in fp32 under O2, SyncBatchNorm included
    auto_mixed_precision(model, cfg.amp_level, cast_list)
    train_step = TrainStep(SegWithLoss(model, 255, cfg.aux_weight), optimizer, build_loss_scale(cfg),
                           clip_value=cfg.clip_value if cfg.clip_grad else None, ema=None,
                           group_size=group_size).set_train()

    chunks = cfg.total_iters // cfg.val_interval  # an "epoch" of the checkpoint files = val_interval iterations
    start_chunk, best = 0, -1.0
    if resuming:
        state = restore_training_state(cfg.ckpt_path, train_step, model, restore_loss_scale=cfg.loss_scale_type ==
                                       "dynamic", steps_per_epoch=cfg.val_interval)
        start_chunk, best = state["epoch"], state["best_acc"]
        if state["moved_step"]:  # iterations, not epochs: another val_interval would skip or repeat some
            old_step, old_interval, _ = state["moved_step"]
            raise CheckpointError(f"{cfg.ckpt_path} was written with val_interval {old_interval or 'another value'} "
                                  f"(at iteration {old_step}); resume with the same --val_interval.")
        step_now = int(optimizer.global_step.asnumpy().reshape(-1)[0])
        _check_recorded(cfg, state["scalars"], step_now, log)
        if step_now + (chunks - start_chunk) * cfg.val_interval > len(lrs):
            raise CheckpointError(f"{cfg.ckpt_path} is at iteration {step_now}; this recipe's schedule has "
                                  f"{len(lrs)}. Resume with the recipe the run was trained with.")
        log.info(f"resumed from {cfg.ckpt_path}: {start_chunk * cfg.val_interval} iterations done, best mIoU "
                 f"{best:.2f}")
    # Every file records the encoder's GELU flavour and the crop (evaluation reads them) and the schedule's length.
    ckpts = CheckpointManager(cfg.ckpt_save_dir, f"{cfg.backbone}_{cfg.head}", cfg.val_interval,
                              cfg.keep_checkpoint_max, enabled=rank == 0, class_names=cfg.class_names,
                              metadata={**seg_metadata(cfg.gelu_approximate, cfg.crop_size),
                                        "total_iters": cfg.total_iters})
    metrics = MetricsLog(os.path.join(cfg.ckpt_save_dir, "metrics.jsonl"), enabled=rank == 0)
    metrics.start(start_chunk if resuming else None)
    plot_path = os.path.join(cfg.ckpt_save_dir, "curves.png")
    params = sum(p.size for p in model.trainable_params())
    log.info(f"model {cfg.backbone} + {cfg.head}: {params / 1e6:.2f}M trainable parameters, {cfg.num_classes} "
             f"classes | data {data_dir} ({cfg.dataset}): {len(train_pairs)} train / {len(val_pairs)} val images, "
             f"crop {cfg.crop_size[0]}x{cfg.crop_size[1]}, batch {cfg.batch_size} x {group_size} device(s) | "
             f"{cfg.opt} lr {cfg.lr} poly {cfg.power}, warmup {cfg.warmup_iters} | {cfg.total_iters} iterations, "
             f"eval every {cfg.val_interval} ({cfg.eval_mode}) | amp {cfg.amp_level} | mode {cfg.mode} on "
             f"{cfg.device_target}")
    if start_chunk >= chunks:
        log.info(f"all {cfg.total_iters} iterations are done already; nothing to train.")
        return 0

    # ---- train ----------------------------------------------------------------------------------------------------
    from mindcv.utils import AllReduceSum
    all_reduce = AllReduceSum() if group_size > 1 else None
    rank_local = [p for p in model.get_parameters() if not p.requires_grad]  # BN statistics
    progress = Progress(chunks, cfg.val_interval, cfg.batch_size * group_size, enabled=rank == 0)
    batches = loader.create_tuple_iterator(num_epochs=1)
    runner = Runner(RUN, train_step, progress, log.info, graph_mode=cfg.mode == 0)
    run_start = time.time()
    for chunk in range(start_chunk + 1, chunks + 1):
        chunk_start, loss_sum, window = time.time(), 0.0, []
        for step in range(1, cfg.val_interval + 1):
            loss, _ = runner.step(*_next_batch(batches, loader))
            iteration = (chunk - 1) * cfg.val_interval + step
            if not math.isfinite(loss):
                raise NonFiniteLossError(_diverged(f"Loss became {loss} at iteration {iteration}", chunk, cfg))
            loss_sum += loss
            window.append(loss)
            lr = lrs[iteration - 1]
            progress.draw(chunk, step, loss, lr, 0)
            if iteration % cfg.log_interval == 0 or step == cfg.val_interval:
                progress.clear()
                eta = progress.eta(chunk, step, 0)
                log.info(f"iter {iteration}/{cfg.total_iters} | loss {sum(window) / len(window):.4f} | lr {lr:.3e} | "
                         f"{progress.img_per_s():.1f} img/s | ETA {format_duration(eta) if eta else '?'}")
                metrics.append({"kind": "step", "epoch": chunk, "step": step, "global_step": iteration,
                                "loss": sum(window) / len(window), "lr": lr, "img_s": progress.img_per_s()})
                window = []
        runner.end_epoch(rank_local, all_reduce, group_size, lambda bad: _diverged(
            f"The weights became non-finite ({describe_nonfinite(bad)})", chunk, cfg))
        iteration = chunk * cfg.val_interval
        row = {"kind": "epoch", "epoch": chunk, "iteration": iteration, "train_loss": loss_sum / cfg.val_interval,
               "lr": lr, "time_s": time.time() - chunk_start}
        if val_loader is not None:
            t0 = time.time()
            try:
                cm = runner.evaluate(lambda: evaluate_seg(model, val_loader, cfg.num_classes, all_reduce=all_reduce,
                                                          mode=cfg.eval_mode, crop_size=cfg.eval_crop,
                                                          stride=cfg.eval_stride))
            except Exception:  # noqa: BLE001  (a bad val pair met with check_data off: name it)
                _raise_bad_pair(val_loader)
                raise
            model.set_train(True)
            result = seg_metrics(cm, cfg.class_names)
            row.update(val_mIoU=result["mIoU"], val_mAcc=result["mAcc"], val_aAcc=result["aAcc"],
                       val_per_class_IoU={r["class"]: r["IoU"] for r in result["per_class"]})
            miou = result["mIoU"]
            if miou is None:  # no labelled val pixel (check_data off): nothing scored, so best.ckpt is not chosen
                log.warning(f"iter {iteration}: no pixel of the {len(val_pairs)} val labels is labelled (all "
                            f"{255}, the ignore index): no mIoU, best.ckpt not updated")
            else:
                if miou > best:
                    best = miou
                    ckpts.save_best(model, chunk, best)
                log.info(f"iter {iteration}: val mIoU {miou:.2f} mAcc {result['mAcc'] or 0:.2f} aAcc "
                         f"{result['aAcc'] or 0:.2f} ({len(val_pairs)} images, {time.time() - t0:.0f} s) | best "
                         f"{best:.2f}")
        metrics.append(row)
        ckpts.save_epoch(train_step, chunk, best, periodic=True)
        if rank == 0:
            plot_curves(metrics.rows(), plot_path, scores=(("val mIoU", "val_mIoU"), ("val mAcc", "val_mAcc")),
                        score_title="mIoU / mAcc (%)", lr=True, x_label="iteration", x_scale=cfg.val_interval)
    if val_loader is not None:
        for line in format_table(result):
            log.info(line)
    log.info(f"done: {cfg.total_iters - start_chunk * cfg.val_interval} iterations in "
             f"{format_duration(time.time() - run_start)}"
             + (f", best val mIoU {best:.2f} ({ckpts.best_path})" if val_loader is not None else "")
             + f"; latest {ckpts.latest_path}, metrics {metrics.path}, plot {plot_path}")
    return 0


def _check_crop_fits(cfg, first_image: str) -> None:
    """A crop larger than the training images even at the largest rescale is padding wherever it falls: refuse
    it before work (mmseg would pad every batch without a word)."""
    h, w = read_image(first_image).shape[:2]
    top = (int(cfg.img_scale[0] * cfg.ratio_range[1]), int(cfg.img_scale[1] * cfg.ratio_range[1]))
    big_w, big_h = rescale_size(w, h, top)
    if cfg.crop_size[0] > big_h or cfg.crop_size[1] > big_w:
        raise DataError(f"crop_size {list(cfg.crop_size)} (h, w) does not fit the training images: {first_image} "
                        f"({w}x{h}) is at most {big_w}x{big_h} after the largest rescale (img_scale "
                        f"{list(cfg.img_scale)} x ratio {cfg.ratio_range[1]}), so every crop would be part padding. "
                        f"Lower crop_size or raise img_scale (the dataset's recipe in configs/seg/ sets both).")


def _check_recorded(cfg, recorded: dict, step: int, log) -> None:
    """A resumed run keeps the encoder it was started with; another total_iters (training longer or shorter) is
    said, with what it does to the lr."""
    gelu = recorded.get("gelu_approximate")
    if gelu is not None and bool(gelu) != cfg.gelu_approximate:
        raise CheckpointError(f"{cfg.ckpt_path} was trained with gelu_approximate {bool(gelu)}; resume with "
                              f"--gelu_approximate {bool(gelu)}.")
    total = recorded.get("total_iters")
    if total is not None and int(total) != cfg.total_iters and step < cfg.total_iters:
        from types import SimpleNamespace
        before = poly_schedule(SimpleNamespace(**{**vars(cfg), "total_iters": int(total)}))
        now = poly_schedule(cfg)[step]
        log.warning(f"{cfg.ckpt_path} was trained for total_iters {int(total)}, this run has {cfg.total_iters}: the "
                    f"poly lr schedule is recomputed over {cfg.total_iters} iterations, so the lr at iteration "
                    f"{step} is {now:.3e} instead of {before[min(step, len(before) - 1)]:.3e}. Pass --total_iters "
                    f"{int(total)} to keep the run's schedule.")


def _next_batch(batches, loader):
    try:
        return next(batches)
    except Exception:  # noqa: BLE001  (MindSpore wraps a bad pair's DataError in pages of pipeline traceback)
        _raise_bad_pair(loader)
        raise


def _raise_bad_pair(loader) -> None:
    """The data pipeline stopped on a bad image/label pair (check_data off): that pair's one line instead."""
    error = getattr(getattr(loader, "pair_source", None), "error", None)
    if error is not None:
        raise DataError(f"{error}; then {RUN.resume_hint()}.") from None


def _diverged(what: str, chunk: int, cfg) -> str:
    return diverged(what, RUN.latest, f"iteration {(chunk - 1) * cfg.val_interval}",
                    f"a lower lr (now {cfg.lr}), a longer warmup (warmup_iters {cfg.warmup_iters}), clip_grad: True, "
                    f"or amp_level O0 if fp16 overflowed")


def run(argv=None) -> int:
    """main() with the project's exit codes; what the command line runs (tests call it too)."""
    RUN.reset(argv)
    return RUN.run(lambda: main(argv))


if __name__ == "__main__":
    script_exit(RUN, main)  # signals, the exit-code table, an exit without MindSpore's teardown noise
