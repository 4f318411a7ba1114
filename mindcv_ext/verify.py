"""Self-checks of the train -> deploy conversion, used by scripts/reparameterize.py, bench/verify_reparam.py
and the tests."""
import numpy as np
import mindspore as ms
from mindspore import nn

from .reparameterize import reparameterize

__all__ = ["perturb_bn", "reparam_error"]


def perturb_bn(net: nn.Cell, seed: int = 0) -> nn.Cell:
    """Give every BN random moving statistics and affine parameters (and non-head biases random values).

    Fresh BNs are identities (mean 0, var 1, gamma 1, beta 0), under which a wrong fusion formula still gives the
    right answer; this makes the check meaningful. Scales stay near 1 so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        name = p.name
        if name.endswith(("moving_mean", "beta")) or (name.endswith("bias") and not name.startswith("head.")):
            value = rng.normal(0.0, 0.2, p.shape)
        elif name.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, p.shape)
        else:
            continue
        p.set_data(ms.Tensor(value.astype(np.float32)))
    return net


def reparam_error(net: nn.Cell, x: ms.Tensor) -> float:
    """Re-parameterize `net` in place and return max |deploy - train| / max |train| of its outputs on `x` (eval)."""
    net.set_train(False)
    before = net(x).asnumpy()
    reparameterize(net)
    after = net(x).asnumpy()
    return float(np.abs(after - before).max() / max(float(np.abs(before).max()), 1e-30))
