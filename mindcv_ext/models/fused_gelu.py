"""The FFN's BatchNorm + exact GELU as ONE fused CPU kernel, for inference in MindSpore (opt-in: `fuse_for_cpu`).

Why: on MindSpore's CPU backend (2.10) the exact GELU, x * (1 + erf(x / sqrt 2)) / 2, is five element-wise kernels,
and its Erf kernel is slow: the GELUs were about a quarter of a t224 deploy forward (bench/profile_model.py; the
figures are in docs/performance.md), and the BatchNorm before them (ffn_fc1.bn, the widest BN) another pass.
Written in MindSpore's Hybrid DSL and compiled by AKG (shipped with MindSpore's CPU package), BN + GELU is one
pass, a fraction of the Erf kernel's time alone. erf is evaluated as
the rational approximation Eigen/XLA use for float32 (x * P(x^2) / Q(x^2) on x clamped to [-4, 4]), within 1e-6 of
the exact GELU (tests/test_model.py checks it against float64).

Opt-in, not built into the model, because a Custom op cannot go into a MINDIR or ONNX file that other runtimes
(MindSpore Lite, Ascend, ONNX Runtime) can run: export.py must see the plain BN and GELU. Only float32 inputs take
the kernel; under AMP (fp16) the FFN keeps the plain ops.

AKG writes its compiled kernels under $MS_COMPILER_CACHE_PATH (default: the current directory) and a
`dsa_transfrom.log` into the current directory while compiling. fuse_for_cpu sets a default cache under the user's
cache directory and compiles the network there itself, so that running a tool leaves nothing where it was started.
The first use on a machine compiles (a few seconds per tensor shape); later runs load the cache.
"""
import contextlib
import os

import mindspore as ms
from mindspore import ops

__all__ = ["fuse_for_cpu", "fused_gelu_unavailable", "bn_gelu_kernel"]


def _bn_gelu(x, scale, shift):
    """gelu(x * scale[c] + shift[c]) on (N, C, H, W), in MindSpore's Hybrid DSL."""
    y = output_tensor(x.shape, x.dtype)  # noqa: F821  (Hybrid DSL built-in)
    for i0 in range(x.shape[0]):
        for i1 in range(x.shape[1]):
            for i2 in range(x.shape[2]):
                for i3 in range(x.shape[3]):
                    v = x[i0, i1, i2, i3] * scale[i1] + shift[i1]
                    # erf(v / sqrt 2), rational approximation on [-4, 4] (erf(4) = 1 - 1.5e-8 in float32).
                    # One name per intermediate: the DSL mis-evaluated a re-assigned accumulator.
                    a = min(max(v * 0.7071067811865476, -4.0), 4.0)
                    s = a * a
                    p1 = s * -2.72614225801306e-10 + 2.77068142495902e-08
                    p2 = p1 * s - 2.10102402082508e-06
                    p3 = p2 * s - 5.69250639462346e-05
                    p4 = p3 * s - 7.34990630326855e-04
                    p5 = p4 * s - 2.95459980854025e-03
                    p6 = p5 * s - 1.60960333262415e-02
                    q1 = s * -1.45660718464996e-05 - 2.13374055278905e-04
                    q2 = q1 * s - 1.68282697438203e-03
                    q3 = q2 * s - 7.37332916720468e-03
                    q4 = q3 * s - 1.42647390514189e-02
                    y[i0, i1, i2, i3] = v * 0.5 * (1.0 + a * p6 / q4)
    return y


def fused_gelu_unavailable():
    """None if the fused kernel can be used in this process, else why not."""
    target = ms.get_context("device_target")
    if target != "CPU":
        return f"device_target is {target}; the fused GELU is for MindSpore's CPU backend"
    akg = os.path.join(os.path.dirname(ms.__file__), "lib", "plugin", "cpu", "libakg.so")
    if not os.path.isfile(akg):
        return f"this MindSpore has no AKG compiler for CPU ({akg} is missing)"
    return None


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mindcv_ext", f"akg-mindspore-{ms.__version__}")


@contextlib.contextmanager
def _in_directory(path):
    # AKG's compiler writes a log into the working directory; the caller's must stay clean. Process-wide, so only
    # around a compile that fuse_for_cpu starts itself.
    here = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(here)


def bn_gelu_kernel():
    """The Custom op: (x (N, C, H, W) float32, scale (C,), shift (C,)) -> gelu(x * scale + shift), exact GELU."""
    return ops.Custom(ops.kernel(_bn_gelu), out_shape=lambda x, s, t: x, out_dtype=lambda x, s, t: x,
                      func_type="hybrid")


def fuse_for_cpu(net, example) -> int:
    """Give every FFN of `net` with an exact GELU the fused BN + GELU CPU kernel and compile `net` for `example` (the
    input Tensor it will be called with: graph mode compiles per input shape), in place; returns how many FFNs.
    For running in MindSpore only: export the network without it. Raises RuntimeError with the reason where it
    cannot be used."""
    from ..reparameterize import _invalidate_compiled_graphs
    from .repmlp import GELU, FFNBlock

    why = fused_gelu_unavailable()
    if why:
        raise RuntimeError(f"fuse_for_cpu: {why}")
    os.environ.setdefault("MS_COMPILER_CACHE_PATH", _cache_dir())
    os.makedirs(os.environ["MS_COMPILER_CACHE_PATH"], exist_ok=True)
    # AKG prints a line to stdout unless its own tiling file (inside the MindSpore package) is under this path.
    os.environ.setdefault("AKG_WHITE_LIST_PATH", os.path.dirname(ms.__file__))
    kernel = bn_gelu_kernel()
    count = 0
    for _, cell in net.cells_and_names():
        if isinstance(cell, FFNBlock) and isinstance(cell.act, GELU):
            cell.bn_gelu = kernel
            count += 1
    _invalidate_compiled_graphs(net)  # a graph compiled before would keep the plain GELUs
    with _in_directory(os.environ["MS_COMPILER_CACHE_PATH"]):
        net.compile(example)
    return count
