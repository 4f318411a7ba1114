"""Train RepMLPNet (or any mindcv model) from a YAML recipe with mindcv's config keys.

    python train.py --config configs/repmlp/repmlp_demo_cpu.yaml                     # CPU demo, built-in data
    python train.py --config configs/repmlp/repmlp_t224_ascend.yaml --data_dir /data/imagenet --distribute False
    msrun --worker_num 8 --local_worker_num 8 python train.py --config configs/repmlp/repmlp_t224_ascend.yaml
    python train.py --config <same recipe> --ckpt_path <ckpt_save_dir>/latest.ckpt --resume_opt True

`python train.py --help` lists the keys. Everything goes to ckpt_save_dir: latest.ckpt (every epoch, full state),
<model>-<epoch>_<steps>.ckpt (every ckpt_save_interval epochs, keep_checkpoint_max of them), best.ckpt (the
evaluated weights with the best val top-1: EMA weights when ema is on), metrics.jsonl, curves.png, train.log.

Steps are run one by one from Python rather than sunk to the device (dataset_sink_mode is accepted and ignored):
the loss is checked after every step, and at ~0.5 s per RepMLPNet step on Ascend the launch overhead is small.
"""
import contextlib
import difflib
import math
import os
import time

import mindcv_ext  # noqa: F401  (registers repmlp_* and demo_repmlp with mindcv)
from mindcv_ext import cli
from mindcv.models import create_model, is_model, list_models
from mindcv.utils import AllReduceSum
from mindcv_ext.checkpoint import CheckpointError, describe_nonfinite, save_checkpoint
from mindcv_ext.training.ckpt_manager import CheckpointManager, restore_training_state
from mindcv_ext.config import ConfigError
from mindcv_ext.training.config import load_config
from mindcv_ext.training.console import Progress, format_duration, setup_logging
from mindcv_ext.evaluation import evaluate
from mindcv_ext.data import check_images
from mindcv_ext.training.loaders import (build_eval_loader, build_train_loader, check_save_dir_outside_data,
                                         prepare_data_dir, train_class_names)
from mindcv_ext.weights import build_model, check_class_names, recorded_class_names
from mindcv_ext.training.metrics import MetricsLog, plot_curves
from mindcv_ext.training.optim import build_loss, build_loss_scale, build_lr_schedule, build_optimizer
from mindcv_ext.training.run_end import RunEnd
from mindcv_ext.training.runner import Runner, check_run_folder, claim_run_folder, diverged, script_exit
from mindcv_ext.training.runtime import init_context
from mindcv_ext.training.step import NonFiniteLossError, build_train_step


def main(argv=None) -> int:
    # ---- configuration and runtime ------------------------------------------------------------------------------
    cfg = load_config(argv)
    if not is_model(cfg.model):
        close = difflib.get_close_matches(cfg.model, list_models(), n=4, cutoff=0.4)
        raise ConfigError(f"Unknown model {cfg.model!r}. Close registered names: {', '.join(close) or 'none'} "
                          f"(RepMLPNet: repmlp_t224, repmlp_t256, repmlp_b224, repmlp_b256, repmlp_d256, "
                          f"repmlp_l256, demo_repmlp).")
    _check_model_fits(cfg)
    resuming = bool(cfg.ckpt_path) and cfg.resume_opt
    if cfg.ckpt_path and not os.path.isfile(cfg.ckpt_path):
        raise ConfigError(_missing_weights_message(cfg, resuming))
    resume_from = cfg.ckpt_path if resuming else ""  # the checkpoint this run continues
    check_run_folder(RUN, cfg.ckpt_save_dir, resume_from)
    check_save_dir_outside_data(cfg)  # before the run directory is created
    rank, group_size = init_context(cfg)
    is_main = rank == 0
    claim_run_folder(RUN, cfg.ckpt_save_dir, resume_from, rank, group_size)  # one live run per ckpt_save_dir
    log = setup_logging(cfg.ckpt_save_dir, rank, group_size)
    for note in cfg.notes:
        log.warning(note)

    # ---- data ---------------------------------------------------------------------------------------------------
    data_dir = prepare_data_dir(cfg)
    if cfg.check_data:
        t0 = time.time()
        # Every rank checks (they must agree on stopping); with several ranks each gets a share of the CPUs.
        try:
            n = check_images(data_dir, workers=None if group_size == 1 else max(1, (os.cpu_count() or 1) // group_size))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        log.info(f"check_data: {n} files under {data_dir} checked, none that MindSpore's decoder would refuse "
                 f"({time.time() - t0:.1f} s)")
    class_names = train_class_names(cfg, data_dir)  # label order; val must name the same classes
    if resuming:  # the run's labels must mean what they meant before the interruption
        check_class_names(recorded_class_names(cfg.ckpt_path), class_names,
                          f"{os.path.join(data_dir, cfg.train_split)} against {cfg.ckpt_path}",
                          "A resumed run must read the classes it was trained on; to train on these, fine-tune "
                          "instead: --ckpt_path <its best.ckpt> without --resume_opt.")
    num_classes = cfg.num_classes or len(class_names)
    if num_classes < len(class_names):
        raise ConfigError(f"num_classes is {num_classes} but {data_dir}/{cfg.train_split} has {len(class_names)} "
                          f"class folders; set num_classes: {len(class_names)} (or None to count them).")
    train_loader, train_samples = build_train_loader(cfg, data_dir, num_classes, rank, group_size)
    steps_per_epoch = train_loader.get_dataset_size()
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than this rank's {train_samples} train samples "
                          f"(drop_remainder drops them all); lower batch_size.")
    val_loader = build_eval_loader(cfg, data_dir, num_classes, rank, group_size)[0] if cfg.val_while_train else None
    if group_size > 1:
        print(f"rank {rank}/{group_size}: {train_samples} train samples in this shard, {steps_per_epoch} steps "
              f"per epoch", flush=True)

    # ---- model, loss, optimizer, train step ---------------------------------------------------------------------
    # `import mindcv_ext` made create_model's checkpoint loading strict (mindcv's skips a missing file and only
    # warns about missing keys). A resumed run loads its checkpoint below, with the training state.
    # Fine-tuning: --ckpt_path is any weight file scripts/convert_weights.py reads (train form); a classifier of
    # another class count is replaced by a fresh one, everything else must fit. pretrained does the same.
    model_kwargs = dict(in_channels=cfg.in_channels, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    if cfg.ckpt_path and not resuming:
        network, init = build_model(cfg.model, cfg.ckpt_path, num_classes=num_classes, new_head=True, form="train",
                                    log=log.info, **model_kwargs)
        log.info("initial weights: " + init.describe().replace("\n", "\n    "))
        if init.class_names and len(init.class_names) == num_classes and init.class_names != class_names:
            log.warning(cli.printable(f"{cfg.ckpt_path} was trained on classes {init.class_names[:5]}... and its "
                                      f"head is kept, but this data's folders are {class_names[:5]}...: labels follow "
                                      f"the folder order."))
    else:  # a resumed run loads its checkpoint below, with the training state
        network = create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained, **model_kwargs)
    lr_schedule = build_lr_schedule(cfg, steps_per_epoch)
    optimizer = build_optimizer(cfg, network, lr_schedule)
    train_step = build_train_step(cfg, network, build_loss(cfg), optimizer, build_loss_scale(cfg), group_size)

    # ---- resume -------------------------------------------------------------------------------------------------
    start_epoch, best_acc = 0, -1.0
    if resuming:
        state = restore_training_state(cfg.ckpt_path, train_step, network, ema=train_step.ema,
                                       restore_loss_scale=cfg.loss_scale_type == "dynamic",
                                       steps_per_epoch=steps_per_epoch)
        start_epoch, best_acc = state["epoch"], state["best_acc"]
        if state["moved_step"]:
            old_step, old_spe, new_step = state["moved_step"]
            log.info(f"{cfg.ckpt_path} was trained with {old_spe or 'another number of'} steps per epoch, this run "
                     f"has {steps_per_epoch} (batch_size, data or device count changed): the lr schedule continues "
                     f"after epoch {start_epoch}, optimizer step {old_step} -> {new_step}")
        _check_schedule_room(optimizer, lr_schedule, start_epoch, steps_per_epoch, cfg)
        log.info(f"resumed from {cfg.ckpt_path}: {start_epoch} epochs done, optimizer step "
                 f"{int(optimizer.global_step.asnumpy().reshape(-1)[0])}, best top-1 {best_acc:.2f}"
                 + (" (EMA restarted from the weights: the checkpoint has none)" if state["ema_restarted"] else ""))
    ckpts = CheckpointManager(cfg.ckpt_save_dir, cfg.model, steps_per_epoch, cfg.keep_checkpoint_max,
                              cfg.ckpt_save_policy, enabled=is_main, class_names=class_names)
    metrics = MetricsLog(os.path.join(cfg.ckpt_save_dir, "metrics.jsonl"), enabled=is_main)
    for row in metrics.start(start_epoch if resuming else None):
        if row.get("kind") == "epoch" and row.get("val_top1") is not None:
            ckpts.val_top1[row["epoch"]] = row["val_top1"]
    plot_path = os.path.join(cfg.ckpt_save_dir, "curves.png")

    num_params = sum(p.size for p in network.trainable_params())
    log.info(f"model {cfg.model}: {num_params / 1e6:.2f}M trainable parameters, {num_classes} classes | "
             f"data {data_dir} ({cfg.dataset}): {train_samples * group_size} train samples, {steps_per_epoch} "
             f"steps/epoch, batch {cfg.batch_size} x {group_size} device(s) | {cfg.opt} lr {cfg.lr} "
             f"{cfg.scheduler} warmup {cfg.warmup_epochs} | amp {cfg.amp_level}, loss scale {cfg.loss_scale} "
             f"({cfg.loss_scale_type}) | ema {cfg.ema} | mode {cfg.mode} on {cfg.device_target}")
    if start_epoch >= cfg.epoch_size:
        log.info(f"all {cfg.epoch_size} epochs are done already; nothing to train.")
        return cli.OK

    # ---- train --------------------------------------------------------------------------------------------------
    all_reduce = AllReduceSum() if group_size > 1 else None
    rank_local_params = [p for p in network.get_parameters() if not p.requires_grad]
    if train_step.ema is not None:
        rank_local_params += [a for a, w in zip(train_step.ema.averages, train_step.ema.weights) if not w.requires_grad]
    progress = Progress(cfg.epoch_size, steps_per_epoch, cfg.batch_size * group_size, enabled=is_main)
    batches = train_loader.create_tuple_iterator(num_epochs=cfg.epoch_size - start_epoch)
    may_skip = cfg.loss_scale_type == "dynamic" or cfg.drop_overflow_update  # steps that overflow are skipped
    runner = Runner(RUN, train_step, progress, log.info, graph_mode=cfg.mode == 0)
    skipped_steps, run_start = 0, time.time()
    for epoch in range(start_epoch + 1, cfg.epoch_size + 1):
        epoch_start, loss_sum, window, step = time.time(), 0.0, [], 0
        for step, (images, labels) in enumerate(batches, 1):
            loss, overflow = runner.step(images, labels)
            if not math.isfinite(loss):
                raise NonFiniteLossError(_nonfinite_message(loss, epoch, step, cfg, ckpts))
            if may_skip:
                skipped_steps += int(bool(overflow.asnumpy()))
            loss_sum += loss
            window.append(loss)
            # The lr this step used: the optimizer read lr_schedule[global_step] and then counted the step.
            lr = lr_schedule[min(max(_optimizer_step(optimizer) - 1, 0), len(lr_schedule) - 1)]
            evals_left = _evals_left(cfg, epoch) if val_loader is not None else 0
            progress.draw(epoch, step, loss, lr, evals_left)
            if step % cfg.log_interval == 0 or step == steps_per_epoch:
                eta = progress.eta(epoch, step, evals_left)
                progress.clear()
                log.info(f"epoch {epoch}/{cfg.epoch_size} step {step}/{steps_per_epoch} | loss "
                         f"{sum(window) / len(window):.4f} | lr {lr:.4e} | {progress.img_per_s():.1f} img/s | "
                         f"ETA {format_duration(eta) if eta is not None else '?'}")
                metrics.append({"kind": "step", "epoch": epoch, "step": step,
                                "global_step": (epoch - 1) * steps_per_epoch + step,
                                "loss": sum(window) / len(window), "lr": lr, "img_s": progress.img_per_s()})
                window = []
        progress.clear()
        if step != steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} ended after {step} of {steps_per_epoch} steps: the data pipeline "
                               f"stopped early (see the MindSpore messages above).")
        runner.end_epoch(rank_local_params, all_reduce, group_size,
                         lambda bad: _nonfinite_message(None, epoch, step, cfg, ckpts, bad))
        row = {"kind": "epoch", "epoch": epoch, "train_loss": loss_sum / steps_per_epoch, "lr": lr,
               "time_s": time.time() - epoch_start, "img_s": progress.img_per_s()}
        if val_loader is not None and (epoch % cfg.val_interval == 0 or epoch == cfg.epoch_size):
            eval_start = time.time()
            log.info(f"validating on {_sample_count(val_loader, group_size)} images...")
            with (train_step.ema.swapped_in() if train_step.ema is not None else contextlib.nullcontext()):
                result = runner.evaluate(lambda: evaluate(network, val_loader, all_reduce))
                if result["top1"] > best_acc:
                    best_acc = result["top1"]
                    ckpts.save_best(network, epoch, best_acc)  # while swapped in: the evaluated weights
            progress.eval_seconds = time.time() - eval_start
            row.update(val_top1=result["top1"], val_top5=result["top5"], val_loss=result["loss"])
            ckpts.val_top1[epoch] = result["top1"]
            log.info(f"epoch {epoch}/{cfg.epoch_size} | train loss {row['train_loss']:.4f} | val top-1 "
                     f"{result['top1']:.2f} top-5 {result['top5']:.2f} loss {result['loss']:.4f} "
                     f"({result['count']} images{', EMA weights' if cfg.ema else ''}) | best {best_acc:.2f} | "
                     f"{row['time_s']:.0f} s")
        else:
            log.info(f"epoch {epoch}/{cfg.epoch_size} | train loss {row['train_loss']:.4f} | {row['time_s']:.0f} s")
        # Metrics row first, then the checkpoint: a kill in between resumes from the previous checkpoint and the
        # row is dropped and redone (MetricsLog.start), so no epoch is ever listed twice or missing.
        metrics.append(row)
        ckpts.save_epoch(train_step, epoch, best_acc,
                         periodic=epoch % cfg.ckpt_save_interval == 0 or epoch == cfg.epoch_size)
        if is_main:
            plot_curves(metrics.rows(), plot_path)

    if cfg.save_rank_weights:
        save_checkpoint(network, os.path.join(cfg.ckpt_save_dir, f"rank_{rank}_final.ckpt"))
    log.info(f"done: {cfg.epoch_size - start_epoch} epoch(s) in {format_duration(time.time() - run_start)}"
             + (f", best val top-1 {best_acc:.2f} ({ckpts.best_path})" if val_loader is not None else "")
             + (f", {skipped_steps} step(s) skipped on overflow" if skipped_steps else "")
             + f"; metrics {metrics.path}, plot {plot_path}")
    return cli.OK


def _check_model_fits(cfg) -> None:
    """Model settings that would stop the run only after its directory was made (pages of compile output, or a
    traceback from create_model): refuse them before any work."""
    from types import SimpleNamespace

    from mindcv_ext.evaluation import native_image_size
    from mindcv_ext.models.repmlp import RepMLPNet, default_cfgs

    if cfg.in_channels != 3:
        raise ConfigError(f"in_channels {cfg.in_channels}: train.py reads images as RGB (3 channels) and normalizes "
                          f"3 of them (mean, std); set in_channels: 3.")
    if cfg.model not in default_cfgs:
        return  # another mindcv model: its sizes and weights are its own
    if cfg.pretrained and not default_cfgs[cfg.model]["url"]:
        published = ", ".join(name for name, c in default_cfgs.items() if c["url"])
        raise ConfigError(f"pretrained: True, but there are no published MindSpore weights for {cfg.model} (only "
                          f"for {published}). Convert the authors' release with scripts/convert_weights.py and pass "
                          f"--ckpt_path <file>, or set pretrained: False.")
    # A RepMLPNet takes only multiples of the size its FCs are built for; graph mode would stop while compiling
    # the first step. The model's check_input states the rule (validate.py / infer.py / export.py call it on the
    # built network; building one here would cost seconds and memory for the large variants).
    size = native_image_size(cfg.model)
    try:
        RepMLPNet.check_input(SimpleNamespace(name=cfg.model, image_size=size),
                              (cfg.batch_size, cfg.in_channels, cfg.image_resize, cfg.image_resize))
    except ValueError as e:
        where = f" (from {cfg.config})" if "image_resize" not in cfg._given and cfg.config else ""
        raise ConfigError(f"image_resize {cfg.image_resize}{where} does not fit {cfg.model}: {e} For {cfg.model} "
                          f"pass --image_resize {size}.") from None


def _missing_weights_message(cfg, resuming: bool) -> str:
    where = f"ckpt_path {cfg.ckpt_path!r}" + ("" if "ckpt_path" in cfg._given or not cfg.config else
                                               f" (from {cfg.config})")
    missing = f"{where} is not a file (relative paths start at {os.getcwd()})."
    if resuming:
        return f"{missing} To resume a run, pass its <ckpt_save_dir>/latest.ckpt."
    # A fine-tuning recipe names a file the user has not got yet: say where starting weights come from.
    return (f"{missing} It names the weights to start from: the authors' RepMLPNet-*-train.pth "
            f"(github.com/DingXiaoH/RepMLP, links in its README), mindcv's published repmlp_t224 weights "
            f"(--ckpt_path \"\" --pretrained True), or any file scripts/convert_weights.py reads; pass it with "
            f"--ckpt_path FILE (or --ckpt_path \"\" to train from scratch).")


def _evals_left(cfg, epoch: int) -> int:
    later = [e for e in range(epoch, cfg.epoch_size + 1) if e % cfg.val_interval == 0 or e == cfg.epoch_size]
    return len(later)


def _nonfinite_message(loss, epoch, step, cfg, ckpts, bad=None) -> str:
    what = (f"Loss became {loss} at epoch {epoch}, step {step}" if bad is None else
            f"The weights became non-finite during epoch {epoch} while the loss stayed finite "
            f"({describe_nonfinite(bad)})")
    return diverged(what, ckpts.latest_path, f"end of epoch {epoch - 1}",
                    f"a lower lr (now {cfg.lr}), a longer warmup (warmup_epochs {cfg.warmup_epochs}), clip_grad: "
                    f"True, or amp_level O0 / loss_scale_type dynamic if fp16 overflowed")


RUN = RunEnd("train", "train.py")  # how the run ends: exit codes, the error line, the run directory let go once


def _optimizer_step(optimizer) -> int:
    return int(optimizer.global_step.asnumpy().reshape(-1)[0])


def _check_schedule_room(optimizer, lr_schedule, start_epoch: int, steps_per_epoch: int, cfg) -> None:
    """Refuse before any work if the optimizer would index past the per-step lr table (MindSpore would stop with
    a C++ Gather error mid-epoch)."""
    position, left = _optimizer_step(optimizer), (cfg.epoch_size - start_epoch) * steps_per_epoch
    if position + left > len(lr_schedule):
        raise CheckpointError(f"{cfg.ckpt_path} is at optimizer step {position}, but the lr schedule of this run has "
                              f"{len(lr_schedule)} steps ({cfg.epoch_size} epochs x {steps_per_epoch}) and "
                              f"{left} are still to run. The checkpoint does not belong to this recipe; resume it "
                              f"with the recipe it was trained with.")


def _sample_count(loader, group_size: int) -> int:
    """Images in an eval loader over all ranks (its source dataset's size; batches x batch size if unknown)."""
    source = loader
    while getattr(source, "children", None):
        source = source.children[0]
    try:
        return source.get_dataset_size() * group_size
    except Exception:  # noqa: BLE001  (only for a log line)
        return loader.get_dataset_size() * loader.get_batch_size() * group_size


if __name__ == "__main__":
    script_exit(RUN, main)  # signals, the exit-code table, an exit without MindSpore's teardown noise
