"""Shared test helpers: small RepMLPNets, non-trivial BN statistics, NumPy views of parameters."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import mindspore as ms  # noqa: E402

import mindcv_ext  # noqa: E402,F401  (registers the models)
from mindcv_ext.verify import perturb_bn  # noqa: E402

# A small RepMLPNet with every feature of the real ones: S = 1 and S > 1 stages, several blocks, 4 stages.
SMALL = dict(channels=(8, 16, 32, 64), num_blocks=(1, 2, 1, 1), sharesets=(1, 2, 4, 8), image_size=32)


@pytest.fixture(params=[ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
def ms_mode(request):
    old = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=old)


@pytest.fixture(autouse=True)
def _default_pynative():
    # Each test starts in PyNative unless it asks for ms_mode; keeps tests independent of order.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield


def randomize(net, seed=0):
    """Non-trivial BN statistics / affine parameters, so a fusion bug cannot hide behind identity BNs."""
    return perturb_bn(net, seed)


def params_np(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def images(n, size, seed=1, channels=3):
    return ms.Tensor(np.random.default_rng(seed).standard_normal((n, channels) + tuple(size)).astype(np.float32))


_LARGE = 8 << 20  # bytes: weight files of full-size models; logs and small fixtures stay for a failed test's post-mortem


@pytest.fixture(autouse=True)
def _remove_large_artefacts(request):
    # pytest keeps the temp folders of the last three runs: two full-size t224 tests alone left ~800 MB per run.
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is None or not os.path.isdir(tmp):
        return
    for folder, _, files in os.walk(tmp):
        for name in files:
            path = os.path.join(folder, name)
            try:
                if not os.path.islink(path) and os.path.getsize(path) > _LARGE:
                    os.remove(path)
            except OSError:
                pass


def run_without_mindspore(script: str, *args, cwd, timeout=300):
    """Run a tool as on a serving machine without MindSpore or mindcv (importing either raises ImportError):
    (exit code, stdout, stderr)."""
    import subprocess
    import sys

    code = ("import os, runpy, sys; sys.modules['mindspore'] = sys.modules['mindcv'] = None; "
            "sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0])); "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, script, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr
