"""The compiled train step: forward + loss (mixed precision), scaled backward, gradient all-reduce, overflow
handling, clipping, optimizer update and EMA, in one graph."""
from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from mindcv.utils.amp import auto_mixed_precision

from .ema import EMA

__all__ = ["WithLossCell", "TrainStep", "build_train_step", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss became nan/inf; training stops without writing further checkpoints."""

_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_one(scale, grad):
    return grad * ops.cast(ops.reciprocal(scale), grad.dtype)


class WithLossCell(nn.Cell):
    """network + loss, with the logits cast to float32 first so an fp16 network still gets an fp32 loss."""

    def __init__(self, network: nn.Cell, loss_fn: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn

    def construct(self, images, labels):
        logits = ops.cast(self.network(images), ms.float32)
        return self.loss_fn(logits, ops.cast(labels, ms.float32) if labels.ndim > 1 else labels)


class TrainStep(nn.TrainOneStepWithLossScaleCell):
    """Returns (loss averaged over all ranks, overflow flag).

    scale_sense is a Tensor (fixed scale: every step updates) or a loss-scale update cell (steps whose gradients
    overflow are skipped, EMA included; a dynamic cell also adapts the scale, kept in the `scale_sense` Parameter).
    """

    def __init__(self, net_with_loss: nn.Cell, optimizer: nn.Optimizer, scale_sense, clip_value: Optional[float],
                 ema: Optional[EMA], group_size: int = 1):
        super().__init__(net_with_loss, optimizer, scale_sense)
        self.clip = clip_value is not None
        self.clip_value = float(clip_value or 0.0)
        self.ema = ema
        self.use_ema = ema is not None
        self.group_size = group_size
        self.all_reduce = ops.AllReduce() if group_size > 1 else None

    def construct(self, images, labels):
        loss = self.network(images, labels)
        scale = self.scale_sense
        status = None
        if self.loss_scaling_manager is not None:  # the status would be unused (and pruned, with a warning)
            status, scale = self.start_overflow_check(loss, scale)
        sens = ops.ones_like(loss) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(images, labels, sens)
        grads = self.grad_reducer(grads)  # mean over ranks under data parallelism, identity otherwise
        grads = self.hyper_map(ops.partial(_unscale, scale), grads)

        overflow = ops.zeros((), ms.bool_)
        if self.loss_scaling_manager is not None:
            overflow = self.process_loss_scale(self.get_overflow_status(status, grads))
        if self.clip:
            grads = ops.clip_by_global_norm(grads, self.clip_value)
        if not overflow:
            loss = ops.depend(loss, self.optimizer(grads))
            if self.use_ema:
                loss = ops.depend(loss, self.ema(self.optimizer.global_step))

        # Every rank reports the same (mean) loss, so a non-finite loss stops all ranks at the same step.
        if self.all_reduce is not None:
            loss = self.all_reduce(loss) / self.group_size
        return loss, overflow


def build_train_step(cfg, network: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, scale_sense,
                     group_size: int) -> TrainStep:
    """Casts `network` in place for cfg.amp_level (mindcv's cast lists) and wraps it into a TrainStep."""
    auto_mixed_precision(network, cfg.amp_level, cfg.amp_cast_list)
    ema = EMA(network, cfg.ema_decay) if cfg.ema else None
    step = TrainStep(WithLossCell(network, loss_fn), optimizer, scale_sense,
                     clip_value=cfg.clip_value if cfg.clip_grad else None, ema=ema, group_size=group_size)
    return step.set_train()
