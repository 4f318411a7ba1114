"""mindcv 0.3.0's `adamw` (same math, state and param groups) on MindSpore's fused AdamWeightDecay kernel.

mindcv's AdamW multiplies and divides every parameter by (1,)-shaped hyperparameter tensors (beta1, 1 - beta1,
the bias corrections, eps, weight decay, lr). MindSpore's CPU graph runtime (2.10) does not reuse the memory of
binary ops that broadcast implicitly, so those ops kept parameter-sized buffers alive: ~2.4 GB of a repmlp_t224
training step. Broadcasting the scalars explicitly (BroadcastTo before each op) was measured and was worse. The
fused kernel updates param, m and v in place, with no temporaries; it has no bias correction, so mindcv's bias
corrections are folded into its lr, eps and weight decay (see _adamw_update): the same formula, rounded
differently (after 5 steps, params and moments agree with mindcv's within 2e-7 of each tensor's largest
magnitude; tests/test_adamw.py).

The class subclasses mindcv's AdamW, so its state Parameters (adam_m.*, adam_v.*, beta1_power, beta2_power,
global_step, learning_rate) keep mindcv's names and shapes: checkpoints of either optimizer resume with the other.
"""
from mindspore import ops

from mindcv.optim.adamw import AdamW as _MindcvAdamW
from mindcv.optim.optim_factory import init_group_params, param_groups_layer_decay

try:
    from mindspore import jit
except ImportError:  # older MindSpore, as in mindcv
    from mindspore import ms_function as jit

__all__ = ["AdamW", "create_adamw"]

_update = ops.MultitypeFuncGraph("adamw_update")
_fused = ops.AdamWeightDecay()


# The type list must match the arguments one for one: with one too many or too few, hyper_map silently skipped
# the update (params unchanged, no error) while this was written; tests/test_adamw.py compares against mindcv.
@_update.register(*(["Tensor"] * 10), "Bool", "Bool")
def _adamw_update(beta1, beta2, eps_f, scale, lr, weight_decay, param, m, v, gradient, decay_flag, optim_filter):
    """One parameter's in-place update; scale = sqrt(1 - beta2^t) / (1 - beta1^t), eps_f = eps sqrt(1 - beta2^t)."""
    if optim_filter:
        # mindcv: p -= lr (wd p + m_hat / (eps + sqrt(v_hat))), m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t).
        # Multiplying the fraction through by sqrt(1 - beta2^t) gives the kernel's form
        # p -= lr_f (m / (sqrt(v) + eps_f) + wd_f p) with lr_f = lr scale, wd_f = wd / scale.
        lr_f = lr * scale
        wd_f = weight_decay / scale if decay_flag else ops.zeros_like(scale)
        return ops.depend(param, _fused(param, m, v, lr_f, beta1, beta2, eps_f, wd_f,
                                        ops.cast(gradient, param.dtype)))
    return gradient


_unscale = ops.MultitypeFuncGraph("adamw_unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(reciprocal_scale, grad):
    return ops.mul(grad, ops.cast(reciprocal_scale, grad.dtype))  # as mindcv (only used when loss_scale != 1)


class AdamW(_MindcvAdamW):
    """mindcv.optim.adamw.AdamW (same arguments, state and update formula) with an in-place fused update."""

    def __init__(self, params, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 loss_scale=1.0, clip=False):
        super().__init__(params, learning_rate=learning_rate, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay, loss_scale=loss_scale, clip=clip)
        # mindcv multiplies every gradient by a 1.0 tensor when loss_scale is 1 (an identity, but a broadcasting
        # Mul per parameter); skip it then.
        self.unscale = float(loss_scale) != 1.0

    @jit  # as mindcv's: the update is one graph in PyNative mode too
    def construct(self, gradients):
        lr = self.get_lr()
        if self.unscale:
            gradients = self.hyper_map(ops.partial(_unscale, self.reciprocal_scale), gradients)
        if self.clip:
            gradients = ops.clip_by_global_norm(gradients, 5.0, None)

        beta1_power = self.beta1_power * self.beta1
        self.beta1_power = beta1_power
        beta2_power = self.beta2_power * self.beta2
        self.beta2_power = beta2_power
        # Scalars, once per step: the bias corrections folded into lr, eps and weight decay (see _adamw_update).
        sqrt_bias2 = ops.sqrt(1.0 - beta2_power)
        scale = sqrt_bias2 / (1.0 - beta1_power)
        eps_f = self.eps * sqrt_bias2
        b1, b2 = self.beta1, self.beta2
        if self.is_group:
            if self.is_group_lr:
                result = self.hyper_map(ops.partial(_update, b1, b2, eps_f, scale),
                                        lr, self.weight_decay, self.parameters, self.moments1, self.moments2,
                                        gradients, self.decay_flags, self.optim_filter)
            else:
                result = self.hyper_map(ops.partial(_update, b1, b2, eps_f, scale, lr),
                                        self.weight_decay, self.parameters, self.moments1, self.moments2,
                                        gradients, self.decay_flags, self.optim_filter)
        else:
            result = self.hyper_map(ops.partial(_update, b1, b2, eps_f, scale, lr, self.weight_decay),
                                    self.parameters, self.moments1, self.moments2, gradients, self.decay_flags,
                                    self.optim_filter)
        if self.use_parallel:
            self.broadcast_params(result)
        return result


def create_adamw(network, lr, weight_decay: float, weight_decay_filter: str, layer_decay=None) -> AdamW:
    """What mindcv.optim.create_optimizer(network, opt="adamw", ..., loss_scale=1.0) builds, with our AdamW: the
    param groups come from mindcv's own helpers, branch for branch as in create_optimizer 0.3.0 (which passes
    adamw no eps, so it is mindcv's default 1e-8)."""
    no_weight_decay = network.no_weight_decay() if hasattr(network, "no_weight_decay") else {}
    params = network.trainable_params()
    if weight_decay_filter == "auto":  # no groups: nn.Optimizer's own filter (no decay on BN gamma/beta)
        pass
    elif layer_decay is not None:
        params = param_groups_layer_decay(network, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                                          no_weight_decay_list=no_weight_decay)
        weight_decay = 0.0
    else:
        params = init_group_params(params, weight_decay, weight_decay_filter, no_weight_decay)
        weight_decay = 0.0
    return AdamW(params, learning_rate=lr, weight_decay=weight_decay, loss_scale=1.0)
