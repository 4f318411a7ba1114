"""mindcv_ext.models.fused_gelu: the FFN's BN + exact GELU as one kernel for MindSpore CPU inference, against
float64 erf and against the plain network (non-trivial BN statistics), and the promise that it leaves nothing in
the working directory."""
import math
import os

import numpy as np
import pytest

import mindspore as ms
import mindcv

from conftest import randomize
from mindcv_ext.models.fused_gelu import _in_directory, fuse_for_cpu, fused_gelu_unavailable

pytestmark = pytest.mark.skipif(fused_gelu_unavailable() is not None, reason=str(fused_gelu_unavailable()))


@pytest.fixture(scope="module")
def quiet_cwd(tmp_path_factory):
    """A fresh working directory and a fresh kernel cache (a warm cache would skip the compile that writes), one
    for the module: MindSpore's kernel build server starts once per process and keeps the cache path and working
    directory it started with."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("fused")
    work, cache = root / "work", root / "cache"
    work.mkdir()
    cache.mkdir()
    mp.chdir(work)
    mp.setenv("MS_COMPILER_CACHE_PATH", str(cache))
    mp.delenv("AKG_WHITE_LIST_PATH", raising=False)
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield work
    ms.set_context(mode=old)
    mp.undo()


@pytest.fixture(autouse=True)
def _graph_mode(quiet_cwd):
    ms.set_context(mode=ms.GRAPH_MODE)  # conftest resets every test to PyNative


def test_fused_network_same_logits_and_nothing_written(quiet_cwd, capfd):
    # First in the module: the kernel build server starts here, inside fuse_for_cpu, as in a tool.
    net = randomize(mindcv.create_model("demo_repmlp", num_classes=7, deploy=True), seed=4)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32))
    plain = net(x).asnumpy()
    assert fuse_for_cpu(net, x) == 5  # one FFN per unit: demo_repmlp has 1 + 1 + 2 + 1 units
    fused = net(x).asnumpy()  # recompiled: a stale graph would return `plain` exactly
    assert not np.array_equal(fused, plain)
    np.testing.assert_allclose(fused, plain, rtol=0, atol=2e-5 * np.abs(plain).max())
    assert list(quiet_cwd.iterdir()) == []  # AKG's log and kernels went to the cache
    assert "tiling repo path" not in capfd.readouterr().out  # AKG's stdout line, silenced


def test_fused_bn_gelu_is_the_exact_gelu_of_the_affine(quiet_cwd):
    from mindcv_ext.models.fused_gelu import bn_gelu_kernel

    class BNGelu(ms.nn.Cell):
        def __init__(self):
            super().__init__()
            self.op = bn_gelu_kernel()

        def construct(self, x, scale, shift):
            return self.op(x, scale, shift)

    rng = np.random.default_rng(0)
    x = np.linspace(-9, 9, 4 * 16 * 50 * 50).astype(np.float32).reshape(4, 16, 50, 50)
    scale = np.ones(16, np.float32)
    scale[8:] = rng.uniform(0.5, 1.5, 8)  # the first half: the GELU alone over [-9, 9]
    shift = np.zeros(16, np.float32)
    shift[8:] = rng.normal(0, 0.5, 8)
    with _in_directory(os.environ["MS_COMPILER_CACHE_PATH"]):  # where fuse_for_cpu compiles, see the next test
        got = BNGelu()(ms.Tensor(x), ms.Tensor(scale), ms.Tensor(shift)).asnumpy().astype(np.float64)
    v = x.astype(np.float64) * scale[None, :, None, None] + shift[None, :, None, None]
    exact = np.vectorize(lambda t: 0.5 * t * (1 + math.erf(t / math.sqrt(2))))(v)
    err = np.abs(got - exact)
    # The plain formula's own error on this range is ~4e-7 (fp32 rounding of x / sqrt 2 and erf).
    assert err.max() < 1.5e-6, err.max()
    assert np.all(err <= 1e-6 + 2e-7 * np.abs(exact))
