"""Locality Injection: the deploy form computes what the train form computes, for independent references."""
import sys

import mindspore as ms
import numpy as np
import pytest
from conftest import ROOT, SMALL, images, params_np, randomize, rel_err
from mindspore import nn

import mindcv_ext
import numpy_reference as ref
from mindcv_ext.models.repmlp import RepMLPBlock, RepMLPNet


def layout(net):
    return [(p.name, tuple(p.shape)) for p in net.get_parameters()]


@pytest.mark.parametrize("size", [32, 64], ids=["native", "2x2-partitions"])
def test_small_net_train_equals_deploy(ms_mode, size):
    net = randomize(RepMLPNet(**SMALL, num_classes=5))
    net.set_train(False)
    x = images(3, (size, size))
    train_out = net(x).asnumpy()  # in graph mode this also compiles and caches the train-form graph
    assert mindcv_ext.reparameterize(net) is net
    deploy_out = net(x).asnumpy()
    assert rel_err(deploy_out, train_out) <= 1e-5
    assert layout(net) == layout(RepMLPNet(**SMALL, num_classes=5, deploy=True))
    names = [p.name for p in net.get_parameters()]
    assert not any("fc3_bn" in n or "repconv" in n for n in names)
    assert all(b.repmlp_block.deploy for stage in net.stages for b in stage)


def test_equivalent_fc3_matches_entrywise_numpy_construction():
    block = randomize(RepMLPBlock(16, 5, 4, sharesets=4), seed=3)  # non-square partition
    weight, bias = block.get_equivalent_fc3()
    p = {f"blk.{k}": v for k, v in params_np(block).items()}
    want_w, want_b = ref.equivalent_fc3(p, "blk", 4, 5, 4)
    np.testing.assert_allclose(weight.asnumpy().reshape(want_w.shape), want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias.asnumpy(), want_b, rtol=1e-5, atol=1e-6)
    assert weight.shape == (4 * 20, 20, 1, 1)


def test_deploy_checkpoint_reproduces_numpy_reference_of_train_form():
    net = randomize(RepMLPNet(**SMALL, num_classes=4))
    train_params = params_np(net)
    x = images(2, (32, 32), seed=7)
    want = ref.forward(x.asnumpy().astype(np.float64), train_params, SMALL["channels"], SMALL["num_blocks"],
                       SMALL["sharesets"], 32)
    net.set_train(False)
    mindcv_ext.reparameterize(net)
    assert rel_err(net(x).asnumpy(), want) < 1e-5
    # and the NumPy deploy-form reference agrees with the converted weights
    deploy = ref.forward(x.asnumpy().astype(np.float64), params_np(net), SMALL["channels"], SMALL["num_blocks"],
                         SMALL["sharesets"], 32, deploy=True)
    assert rel_err(deploy, want) < 1e-5


def test_split_local_keeps_the_function_and_takes_the_conv_taps_out(ms_mode):
    """RepMLPBlock.split_local (quantize.py's INT8 export): the deploy fc3 becomes a dense FC plus a k x k conv;
    same outputs as the train form, the conv holds the fused branch kernels (a NumPy fusion), and the FC rows
    lose the tap outliers that per-row int8 could not hold."""
    from mindspore import Tensor

    block = randomize(RepMLPBlock(8, 6, 5, sharesets=2), seed=4)  # non-square partition
    # fc3 small beside the conv taps, as in trained RepMLPNets (t224 here: merged row max/std 30-50)
    block.fc3.weight.set_data(Tensor(block.fc3.weight.asnumpy() * 0.05))
    block.set_train(False)
    x = images(3, (6, 5), channels=8, seed=2)
    want = block(x).asnumpy()
    x2 = images(2, (12, 10), channels=8, seed=3)  # 2 x 2 partitions: the conv must not cross their borders
    want2 = block(x2).asnumpy()
    p = params_np(block)
    kernel = np.zeros((2, 3, 3))  # the branches' fused kernels, summed and centred in 3 x 3
    for k in (1, 3):
        bn = f"repconv{k}.bn."
        t = p[bn + "gamma"] / np.sqrt(p[bn + "moving_variance"] + 1e-5)
        r = (3 - k) // 2
        kernel[:, r:r + k, r:r + k] += p[f"repconv{k}.conv.weight"][:, 0] * t[:, None, None]
    mindcv_ext.reparameterize(block)
    merged = block.fc3.weight.asnumpy().reshape(2, 30, 30)
    gain = block.split_local()
    assert rel_err(block(x).asnumpy(), want) <= 1e-5 and rel_err(block(x2).asnumpy(), want2) <= 1e-5
    taps = block.local.weight.asnumpy()[:, 0]  # depthwise over the 8 channels: channel c has set c % 2's taps
    assert taps.shape == (8, 3, 3) and np.abs(taps - np.tile(kernel, (4, 1, 1))).max() <= 0.1 * np.abs(kernel).max()
    dense = block.fc3.weight.asnumpy().reshape(2, 30, 30)
    assert np.abs(dense).max() < 0.1 * np.abs(merged).max() and gain > 1.5, gain
    assert "local.weight" in [q.name for q in block.get_parameters()]
    with pytest.raises(ValueError, match="deploy-form"):
        block.split_local()  # already split


def test_pass_converts_any_opted_in_cell_and_is_idempotent():
    class Doubler(nn.Cell):  # a toy re-parameterizable block: train form x + x, deploy form 2 * x
        def __init__(self):
            super().__init__()
            self.deploy = False
            self.calls = 0

        def construct(self, x):
            return x * 2 if self.deploy else x + x

        def switch_to_deploy(self):
            self.calls += 1
            self.deploy = True

    toy = Doubler()
    block = randomize(RepMLPBlock(8, 4, 4, sharesets=2))
    wrapper = nn.SequentialCell([nn.SequentialCell([toy]), block, nn.ReLU()])
    mindcv_ext.reparameterize(wrapper)
    mindcv_ext.reparameterize(wrapper)
    assert toy.deploy and toy.calls == 1
    assert block.deploy and not hasattr(block, "fc3_bn")


def test_graph_mode_recompiles_after_conversion():
    """GRAPH_MODE caches compiled graphs; after the pass the net must run the deploy structure, not the cached
    train graph (which has no fc3.bias and would ignore it)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = randomize(RepMLPNet(**SMALL, num_classes=5))
    net.set_train(False)
    x = images(2, (32, 32))
    net(x)
    mindcv_ext.reparameterize(net)
    out = net(x).asnumpy()
    # If the stale train graph ran, the new fc3.bias Parameters would be ignored: shifting them must matter.
    for p in net.get_parameters():
        if p.name.endswith("fc3.bias"):
            p.set_data(p.value() + 1.0)
    assert np.abs(net(x).asnumpy() - out).max() > 1e-3


@pytest.mark.slow
def test_full_t224_in_graph_mode():
    sys.path.insert(0, f"{ROOT}/bench")
    from verify_reparam import check

    for mode in ("graph",):  # what validate.py / export run; PyNative is checked at small size above
        r = check("repmlp_t224", mode)
        assert r["rel_err"] <= 1e-5, r
        assert r["same_layout_as_deploy"], r
