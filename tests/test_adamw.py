"""Our AdamW (mindcv_ext/training/adamw.py) against mindcv 0.3.0's adamw: same state names, and the same params and
moments after several graph-mode steps from identical params and gradients (weight decay on some groups, an lr
list, layer decay, mindcv's other weight-decay filters, a loss scale)."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn

from mindcv.optim import create_optimizer
from mindcv_ext.training.adamw import AdamW

STEPS = 5
LRS = [0.01, 0.03, 0.02, 0.005, 0.001, 0.0005]  # one per step (dynamic lr), varying


class _Net(nn.Cell):
    """Weights of several ranks, plus BN gamma/beta and biases that norm_and_bias keeps out of weight decay."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, has_bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Dense(8, 5)

    def construct(self, x):
        return self.fc(self.bn(self.conv(x)).mean(axis=(2, 3)))


class _Apply(nn.Cell):
    """The optimizer applied to fed-in gradients, as one graph (like the train step's call)."""

    def __init__(self, opt):
        super().__init__(auto_prefix=False)
        self.opt = opt

    def construct(self, grads):
        return self.opt(grads)


def _run(make_opt, seed, case):
    rng = np.random.default_rng(seed)
    net = _Net()
    for p in net.trainable_params():  # identical params for both optimizers; no zeros
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.5 + 0.1))
    opt = make_opt(net, case)
    step = _Apply(opt)
    grad_rng = np.random.default_rng(seed + 1)
    for _ in range(STEPS):
        # Gradients of several magnitudes, so eps and the bias corrections matter.
        grads = {p.name: (grad_rng.standard_normal(p.shape) * 10.0 ** grad_rng.integers(-6, 1)).astype(np.float32)
                 for p in net.trainable_params()}
        # In the optimizer's parameter order (grouped by layer_decay), as the train step's gradients are.
        step(tuple(ms.Tensor(grads[p.name]) for p in opt.parameters))
    return {p.name: p.asnumpy().copy() for p in opt.get_parameters()}


CASES = {  # weight_decay_filter, layer_decay, loss_scale
    "norm_and_bias": ("norm_and_bias", None, 1.0),  # the finetune recipe's filter: decay on some groups only
    "auto": ("auto", None, 1.0),  # no groups: nn.Optimizer's own decay filter
    "layer_decay": ("norm_and_bias", 0.7, 1.0),  # one lr list per group
    # The Ascend recipes' filter; with a loss scale (train.py passes 1.0, but the scaled path is mindcv's too).
    "disable_loss_scale": ("disable", None, 8.0),
}


def _mindcv(net, case):
    wd_filter, layer_decay, loss_scale = CASES[case]
    return create_optimizer(net, opt="adamw", lr=LRS, weight_decay=0.05, weight_decay_filter=wd_filter,
                            layer_decay=layer_decay, loss_scale=loss_scale, checkpoint_path="")


def _ours(net, case):
    from types import SimpleNamespace

    from mindcv_ext.training import optim
    wd_filter, layer_decay, loss_scale = CASES[case]
    if loss_scale != 1.0:  # build_optimizer always passes 1.0 (the train step unscales)
        from mindcv.optim.optim_factory import init_group_params
        return AdamW(init_group_params(net.trainable_params(), 0.05, wd_filter, {}), learning_rate=LRS,
                     weight_decay=0.0, loss_scale=loss_scale)
    # The config keys build_optimizer reads (train.py's validated config has these and more).
    cfg = SimpleNamespace(opt="adamw", weight_decay=0.05, weight_decay_filter=wd_filter,
                          layer_decay=layer_decay, momentum=0.9, use_nesterov=False, eps=1e-10)
    opt = optim.build_optimizer(cfg, net, LRS)
    assert isinstance(opt, AdamW)
    return opt


@pytest.mark.parametrize("case", list(CASES))
def test_matches_mindcv_adamw(case):
    ms.set_context(mode=ms.GRAPH_MODE)
    theirs = _run(_mindcv, 0, case)
    ours = _run(_ours, 0, case)
    assert list(ours) == list(theirs)  # same state Parameters, same names: checkpoints resume across both
    assert any(k.startswith("adam_m.") for k in ours) and {"beta1_power", "beta2_power", "global_step"} <= set(ours)
    assert int(ours["global_step"].reshape(-1)[0]) == STEPS
    for name in theirs:
        assert ours[name].shape == theirs[name].shape, name
        # The same math, rounded differently (bias corrections folded into lr, eps and decay; the fused kernel's
        # own moment update), so 1e-6 relative to each tensor's scale (measured: <= 1.7e-7).
        scale = max(float(np.abs(theirs[name]).max()), 1e-30)
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-6 * scale, err_msg=name)
    # The steps did something: params moved and both moments are non-zero.
    assert np.abs(ours["adam_m.conv.weight"]).min() > 0 and np.abs(ours["adam_v.fc.weight"]).min() > 0
