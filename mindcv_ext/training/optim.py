"""Loss, learning-rate schedule, optimizer and loss-scale cell from the config, through mindcv's factories."""
import logging
from typing import List

import mindspore as ms
from mindspore import nn

from mindcv.loss import create_loss
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler

from .config import schedule_notes

__all__ = ["build_loss", "build_lr_schedule", "build_optimizer", "build_loss_scale"]


def build_loss(cfg) -> nn.Cell:
    # mindcv's CrossEntropySmooth takes class indices or the soft labels mixup/cutmix produce; label smoothing is
    # applied here only (the loader gets label_smoothing=0), as in mindcv's train.py.
    return create_loss(name=cfg.loss, reduction=cfg.reduction, label_smoothing=cfg.label_smoothing,
                       aux_factor=cfg.aux_factor)


def build_lr_schedule(cfg, steps_per_epoch: int) -> List[float]:
    """One learning rate per optimizer step for the whole run. The optimizer indexes it with its global_step,
    so restoring global_step on resume restores the position in the schedule."""
    # mindcv warns "warmup_epochs + decay_epochs > num_epochs. Please check and reduce decay_epochs!" on every run
    # shorter than its recipe's schedule; where config.py's note (cfg.notes) already says what the lr does then,
    # that line is filtered out while mindcv builds the schedule.
    covered = bool(schedule_notes(cfg))

    def quiet(record):
        return not (covered and "warmup_epochs + decay_epochs > num_epochs" in record.getMessage())

    mindcv_log = logging.getLogger("mindcv.scheduler.scheduler_factory")
    mindcv_log.addFilter(quiet)
    try:
        lrs = create_scheduler(steps_per_epoch, scheduler=cfg.scheduler, lr=cfg.lr, min_lr=cfg.min_lr,
                               warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_factor,
                               decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
                               milestones=cfg.multi_step_decay_milestones, num_epochs=cfg.epoch_size,
                               num_cycles=cfg.num_cycles, cycle_decay=cfg.cycle_decay,
                               lr_epoch_stair=cfg.lr_epoch_stair)
    finally:
        mindcv_log.removeFilter(quiet)
    need = steps_per_epoch * cfg.epoch_size
    if len(lrs) < need:  # e.g. cosine with decay_epochs shorter than the run: hold the last value
        lrs = list(lrs) + [lrs[-1] if lrs else cfg.lr] * (need - len(lrs))
    return [float(x) for x in lrs[:need]]


def build_optimizer(cfg, network: nn.Cell, lr_schedule: List[float]) -> nn.Optimizer:
    # loss_scale=1: the train step divides the gradients by the loss scale itself (fixed or dynamic alike).
    if cfg.opt.lower() == "adamw":
        # mindcv's adamw (math, state names, param groups) without its ~2.4 GB of broadcasting temporaries on CPU.
        from mindcv_ext.training.adamw import create_adamw
        return create_adamw(network, lr=lr_schedule, weight_decay=cfg.weight_decay,
                            weight_decay_filter=cfg.weight_decay_filter, layer_decay=cfg.layer_decay)
    return create_optimizer(network, opt=cfg.opt, lr=lr_schedule, weight_decay=cfg.weight_decay,
                            momentum=cfg.momentum, nesterov=cfg.use_nesterov,
                            weight_decay_filter=cfg.weight_decay_filter, layer_decay=cfg.layer_decay,
                            loss_scale=1.0, checkpoint_path="", eps=cfg.eps)


def build_loss_scale(cfg):
    """A Tensor (fixed scale, never skips a step) or an update cell (skips steps whose gradients overflow;
    the dynamic one also adapts the scale). MindSpore supports the update cells on Ascend and GPU only."""
    if cfg.loss_scale_type == "dynamic":
        return nn.DynamicLossScaleUpdateCell(loss_scale_value=cfg.loss_scale, scale_factor=2, scale_window=2000)
    if cfg.drop_overflow_update:
        return nn.FixedLossScaleUpdateCell(loss_scale_value=cfg.loss_scale)
    return ms.Tensor(cfg.loss_scale, ms.float32)
