"""RepMLPNet (Ding et al., "RepMLPNet: Hierarchical Vision MLP with Re-parameterized Locality", CVPR 2022).

Each RepMLP block applies a per-partition FC ("fc3", weights shared by channels c with the same c mod S) and,
while training, parallel depthwise conv branches on the same partitions ("Locality Injection"). The branches are
merged into fc3 afterwards (`RepMLPBlock.switch_to_deploy`, driven by `mindcv_ext.reparameterize`).

Parameter names and shapes follow mindcv's released checkpoint (repmlp_t224-8dbedd00.ckpt), so mindcv-trained
weights load as they are. Two deliberate differences from every public port:
- partitions are put back in the right order, so inputs larger than the native size (a multiple of it) give
  each partition's FC its own partition only; at the native size the output equals the authors';
- fc3 runs as a (batched) matmul on the partition rows instead of a grouped 1x1 convolution: same weights,
  far faster on CPU, and the dense-matmul shape Ascend's cube units want.
"""
import math
import re
from typing import Dict, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, initializer

from mindcv.models.layers import DropPath
from mindcv.models.registry import register_model

__all__ = ["RepMLPNet", "RepMLPBlock", "RepMLPNetUnit", "ARCHS", "default_cfgs", "checkpoint_form",
           "checkpoint_model_kwargs", "checkpoint_architecture", "checkpoint_variant"]


def _cfg(url="", image_size=224, **kwargs):
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, image_size, image_size),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "first_conv": "conv_embedding.conv.conv",
        "classifier": "head",
        **kwargs,
    }


# mindcv's published t224 weights were trained with MindSpore's default (tanh-approximated) GELU.
_MINDCV_T224 = "https://download.mindspore.cn/toolkits/mindcv/repmlp/repmlp_t224-8dbedd00.ckpt"
default_cfgs = {
    "repmlp_t224": _cfg(url=_MINDCV_T224, gelu_approximate=True, top1=76.71),
    "repmlp_t256": _cfg(image_size=256),
    "repmlp_b224": _cfg(),
    "repmlp_b256": _cfg(image_size=256),
    "repmlp_d256": _cfg(image_size=256),
    "repmlp_l256": _cfg(image_size=256),
    "demo_repmlp": _cfg(image_size=64),
}

# Architecture per variant. Partition size per stage = image_size / (4 * 2**stage), i.e. the whole feature map
# at the native resolution.
ARCHS = {
    "repmlp_t224": dict(channels=(64, 128, 256, 512), num_blocks=(2, 2, 6, 2), sharesets=(1, 4, 16, 128), image_size=224),
    "repmlp_t256": dict(channels=(64, 128, 256, 512), num_blocks=(2, 2, 6, 2), sharesets=(1, 4, 16, 128), image_size=256),
    "repmlp_b224": dict(channels=(96, 192, 384, 768), num_blocks=(2, 2, 12, 2), sharesets=(1, 4, 32, 128), image_size=224),
    "repmlp_b256": dict(channels=(96, 192, 384, 768), num_blocks=(2, 2, 12, 2), sharesets=(1, 4, 32, 128), image_size=256),
    "repmlp_d256": dict(channels=(80, 160, 320, 640), num_blocks=(2, 2, 18, 2), sharesets=(1, 4, 16, 128), image_size=256),
    "repmlp_l256": dict(channels=(96, 192, 384, 768), num_blocks=(2, 2, 18, 2), sharesets=(1, 4, 32, 256), image_size=256),
    # Not from the paper: a small model for the CPU demo and fast tests (64x64 inputs).
    "demo_repmlp": dict(channels=(16, 32, 64, 128), num_blocks=(1, 1, 2, 1), sharesets=(1, 2, 4, 8), image_size=64),
}


class PatchConv(nn.Cell):
    """A Conv2d whose stride equals its kernel size k > 1, without padding (the stem, the downsamplings), computed
    as one GEMM over the unfolded patches. Keeps Conv2d's weight layout (out, in, k, k).

    Why: MindSpore's CPU Conv2d ran the 4x4/4 stem and the 2x2/2 downsamplings at batch 8 in 0.6-1.0 s each (most
    of a t224 forward); this takes a few ms. Two layouts, picked by which holds less memory on MindSpore's CPU
    backend, whose Transpose keeps a buffer about the size of its tensor for the life of the compiled graph (see
    PartitionFC.apply):
    - patches as columns per image (Im2Col, `ops.unfold`), times the weight broadcast over the batch: the result
      is NCHW already, no Transpose. Used while the weight is at most two images' worth of patch values
      (out_channels <= 2 * output pixels: the stem and the first two downsamplings of every variant).
    - otherwise (the last downsampling, whose weight is large): one GEMM with the patches as rows, between two
      Transposes; broadcasting that weight over the batch would cost more than the Transposes hold.
    Measured at batch 8, forward and backward: as fast or faster, 15-35 MiB less each where Im2Col is used.
    export.py turns Im2Col off for ONNX (MindSpore 2.10's exporter cannot write it); other backends never use it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.k, self.out_channels = kernel_size, out_channels
        # The distribution of PyTorch's and MindSpore's default conv init.
        self.weight = Parameter(initializer(HeUniform(negative_slope=math.sqrt(5)),
                                            (out_channels, in_channels, kernel_size, kernel_size), ms.float32),
                                name="weight")
        self.matmul = ops.MatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul()
        # Im2Col only on the CPU backend, whose Transpose it works around. On Ascend, MindSpore runs Im2Col (and its
        # Col2Im backward) as AI CPU kernels (mindspore/ops/_op_impl/aicpu/im2col.py), while Transpose + one GEMM
        # stay on the AI Cores; on GPU Transpose holds nothing either. export.py also turns it off for ONNX.
        self.im2col = ms.get_context("device_target") == "CPU"

    def construct(self, x):
        n, c, h, w = x.shape
        k, o = self.k, self.out_channels
        ho, wo = h // k, w // k
        weight = self.weight.reshape(o, c * k * k)  # channel-major patches, like the (out, in, k, k) weight
        if self.im2col and o <= 2 * ho * wo:
            cols = ops.unfold(x, k, stride=k)  # (n, c*k*k, ho*wo), channel-major
            return self.bmm(ops.broadcast_to(weight, (n, o, c * k * k)), cols).reshape(n, o, ho, wo)
        rows = x.reshape(n, c, ho, k, wo, k).transpose(0, 2, 4, 1, 3, 5).reshape(n * ho * wo, c * k * k)
        return self.matmul(rows, weight).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)


class ConvBN(nn.Cell):
    """Conv without bias + BatchNorm2d, the unit every fusion works on. Stride == kernel > 1 convs use PatchConv;
    1x1 convs stay Conv2d (measured on CPU: as fast as a matmul or faster, forward and backward)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, group=1):
        super().__init__()
        if stride == kernel_size > 1 and padding == 0 and group == 1:
            self.conv = PatchConv(in_channels, out_channels, kernel_size)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad",
                                  padding=padding, group=group, has_bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def construct(self, x):
        return self.bn(self.conv(x))

    def fused_kernel_bias(self) -> Tuple[Tensor, Tensor]:
        """Kernel and bias of the conv with the BN's inference statistics folded in."""
        return fuse_bn(self.conv.weight, self.bn)


class ConvBNReLU(nn.Cell):
    # Nested as conv.{conv,bn} to keep mindcv's checkpoint names (conv_embedding.conv.conv.weight).
    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        self.conv = ConvBN(in_channels, out_channels, kernel_size, stride)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.conv(x))


def fuse_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """Fold an inference-mode BN into the preceding bias-free kernel. If the kernel has k times as many output
    rows as the BN has channels (fc3: S*h*w rows, S channels), each channel's scale covers k consecutive rows."""
    t = bn.gamma / ops.sqrt(bn.moving_variance + bn.eps)
    bias = bn.beta - bn.moving_mean * t
    repeat = kernel.shape[0] // t.shape[0]
    if repeat > 1:
        t = t.reshape(-1, 1).tile((1, repeat)).reshape(-1)
        bias = bias.reshape(-1, 1).tile((1, repeat)).reshape(-1)
    return kernel * t.reshape((-1,) + (1,) * (kernel.ndim - 1)), bias


def conv_tap_index(h: int, w: int, k: int) -> np.ndarray:
    """(h*w out, h*w in) int32: which tap a*k + b of a zero-padded k x k conv over an h x w image connects output
    pixel (y, x) to input pixel (y + a - k//2, x + b - k//2); k*k where no tap does. Gathering a kernel padded
    with one zero through it gives the conv's (h*w, h*w) FC matrix, exactly (each entry is one tap or 0)."""
    r = k // 2
    index = np.full((h * w, h * w), k * k, np.int32)
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for a in range(k):
        for b in range(k):
            iy, ix = ys + a - r, xs + b - r
            inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            index[(ys * w + xs)[inside], (iy * w + ix)[inside]] = a * k + b
    return index


class TapMatrix(nn.Cell):
    """(S, k, k) kernels of S one-channel k x k convs (zero padding) -> their (S, h*w, h*w) FC matrices, gathered
    through conv_tap_index: exact, each entry is one tap or 0.

    Own backward: d kernel[s, t] sums d matrix[s] over the positions of tap t, read through a (k*k, h*w) position
    table (each tap sits at most once per output pixel) with a 0/1 mask for the padding. Autodiff of a Gather along
    axis 1 transposes the (S, h*w, h*w) gradient to (h*w, h*w, S) for its UnsortedSegmentSum, and MindSpore's CPU
    Transpose keeps a buffer of that size for the life of the graph. Measured, training step at batch 8: l256
    6968 -> 6593 MiB peak (~20 MiB per stage-2 block), t224 2435 -> 2375, same speed. Same gradient (the sums run
    in another order); on Ascend a small Gather and a sum instead of a Transpose and an UnsortedSegmentSum."""

    def __init__(self, h: int, w: int, k: int):
        super().__init__()
        index = conv_tap_index(h, w, k)
        flat = index.reshape(-1)
        positions = np.zeros((k * k, h * w), np.int32)
        mask = np.zeros((k * k, h * w), np.float32)
        for tap in range(k * k):
            where = np.flatnonzero(flat == tap)
            positions[tap, :where.size], mask[tap, :where.size] = where, 1.0
        self.index, self.positions, self.mask = Tensor(index), Tensor(positions), Tensor(mask)
        # Recomputed in the backward (fc3's batched matmul needs the matrix there) rather than kept.
        self.gather = ops.Gather().recompute()

    def construct(self, kernel):
        s = kernel.shape[0]
        kernel = kernel.reshape(s, -1)
        kernel = ops.concat((kernel, ops.zeros((s, 1), kernel.dtype)), axis=1)  # index k*k: no tap
        return self.gather(kernel, self.index, 1)

    def bprop(self, kernel, out, dout):
        # Summed and returned in fp32, the dtype of the kernel Parameter (AMP keeps Parameters fp32). Under AMP
        # (the cell cast to fp16) graph mode hands the returned dtype to the Parameter's gradient unconverted:
        # returning kernel.dtype (fp16 there) gave fp32 Parameters fp16 gradients. PyNative casts either way.
        s = dout.shape[0]
        picked = ops.gather(dout.reshape(s, -1), self.positions, 1).astype(ms.float32)  # (S, k*k, h*w)
        summed = (picked * ops.broadcast_to(self.mask, picked.shape)).sum(axis=2)
        return (summed.reshape(kernel.shape),)


class PartitionFC(nn.Cell):
    """fc3: S independent (h*w -> h*w) FCs over rows of shape (S, h, w), as one matmul (S == 1) or a batched
    matmul over S. Keeps the grouped-1x1-conv weight shape (S*h*w, h*w, 1, 1) of the released checkpoints."""

    def __init__(self, sharesets: int, h: int, w: int, has_bias: bool = False):
        super().__init__()
        self.s, self.h, self.w = sharesets, h, w
        hw = h * w
        # Same distribution as a PyTorch/MindSpore conv default init with fan_in = h*w.
        self.weight = Parameter(initializer(HeUniform(negative_slope=math.sqrt(5)), (sharesets * hw, hw, 1, 1),
                                            ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (sharesets * hw,), ms.float32), name="bias") if has_bias else None
        self.matmul = ops.MatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul(transpose_b=True)
        self.split_sets = sharesets <= 32  # how apply() moves the sets; export.py turns it off for ONNX
        # The weight in matmul shape. A Reshape is a copy on MindSpore's CPU backend (Ascend and GPU graphs elide
        # it as a no-op node; not measured here), and autodiff keeps that copy from the forward to the backward:
        # 78 MB for t224's two stage-0 fc3s. Marked for recomputation, the backward makes its own copy when it
        # needs one. Same values.
        self.as_matrix = ops.Reshape().recompute()

    def matrix(self):
        """The weight as S (h*w, h*w) matrices (one matrix if S == 1)."""
        hw = self.h * self.w
        return self.as_matrix(self.weight, (hw, hw) if self.s == 1 else (self.s, hw, hw))

    def construct(self, x):
        m = x.shape[0]
        hw = self.h * self.w
        if self.s == 1:
            y = self.matmul(x.reshape(m, hw), self.matrix())
        else:
            y = self.apply(x, (self.matrix(),))[0]
        if self.bias is not None:
            # BiasAdd, not a broadcasting Add (see _scale for why).
            y = ops.bias_add(y.reshape(m, self.s * hw), self.bias)
        return y.reshape(m, self.s, self.h, self.w)

    def apply(self, x, weights):
        """x (M, S, h, w), weights a tuple of (S, n, h*w) with S > 1 -> a tuple of (M, S, n): set s's rows times
        each weight[s] transposed. The rows are moved once for all weights.

        The sets go to the front and back again with Split + Concat rather than Transpose while S <= 32: MindSpore's
        CPU Transpose keeps a buffer about the size of its tensor for the life of the compiled graph (forward and
        backward: ~50 MiB per image of a t224 training step, all Transposes together), Split and Concat do not,
        and they were as fast or faster (measured at S = 4, 16, 32, forward and backward). At S = 128 (the last
        stage, small tensors) the S-way split was slower and no leaner. Both are plain copies on Ascend.
        MindSpore 2.10's ONNX exporter cannot write a multi-output Split, so export.py uses the Transposes."""
        m, hw = x.shape[0], self.h * self.w
        rows = x.reshape(m, self.s, hw)
        outs = ()
        if not self.split_sets:
            rows = rows.transpose(1, 0, 2)
            for weight in weights:
                outs = outs + (self.bmm(rows, weight).transpose(1, 0, 2),)
            return outs
        rows = ops.concat(ops.split(rows, 1, axis=1), axis=0).reshape(self.s, m, hw)  # (S, M, hw): a GEMM per set
        for weight in weights:
            y = self.bmm(rows, weight)  # (S, M, n)
            outs = outs + (ops.concat(ops.split(y, 1, axis=0), axis=2).reshape(m, self.s, -1),)
        return outs

    def add_bias(self, value: Tensor):
        """Give a bias-free fc3 its deploy-form bias, named after the weight so checkpoint names stay right."""
        prefix = self.weight.name[: -len("weight")]
        self.bias = Parameter(value, name=prefix + "bias")


def _scale(x, gate):
    """x * gate with gate (N, C, 1, 1), broadcast explicitly first.

    Why: MindSpore's CPU graph runtime (2.10) does not reuse the memory around binary ops that broadcast
    implicitly (Mul / Add / RealDiv of differently shaped tensors): x * gate kept a copy per layer alive and was
    slower than BroadcastTo + Mul (bench/memory_probe.py; figures in docs/performance.md).
    Same products, exactly. On Ascend a broadcast Mul would be as good; the explicit form costs it nothing much."""
    return x * ops.broadcast_to(gate, x.shape)


def spatial_mean(x):
    """(N, C, H, W) -> (N, C, 1, 1) mean, as a matmul with a ones vector.

    Why: MindSpore's CPU ReduceMean and its backward (a Tile) are slow; the matmul takes a fraction of their time
    both ways (docs/performance.md). The sum of ones is exact
    in any dtype; the 1/(H*W) is a Python float, so fp16 under AMP is not scaled by a rounded constant."""
    n, c, h, w = x.shape
    total = ops.matmul(x.reshape(n * c, h * w), ops.ones((h * w, 1), x.dtype))
    return (total * (1.0 / (h * w))).reshape(n, c, 1, 1)


class GlobalPerceptron(nn.Cell):
    """Channel attention from the globally pooled input (squeeze-excitation with sigmoid)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, has_bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, has_bias=True)
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()

    def construct(self, x):
        return self.sigmoid(self.fc2(self.relu(self.fc1(spatial_mean(x)))))


class RepMLPBlock(nn.Cell):
    """Global perceptron x (partition FC + local conv branches). `switch_to_deploy` folds the branches and BNs
    into fc3, after which the block computes the same function with one FC."""

    def __init__(self, channels: int, h: int, w: int, sharesets: int, reparam_conv_k: Sequence[int] = (1, 3),
                 gp_reduce: int = 4, deploy: bool = False):
        super().__init__()
        if channels % sharesets:
            raise ValueError(f"channels ({channels}) must be a multiple of the number of sharesets ({sharesets})")
        self.channels, self.h, self.w, self.s = channels, h, w, sharesets
        self.reparam_conv_k = tuple(reparam_conv_k)
        self.deploy = deploy
        self.gp = GlobalPerceptron(channels, channels // gp_reduce)
        self.fc3 = PartitionFC(sharesets, h, w, has_bias=deploy)
        if not deploy:
            self.fc3_bn = nn.BatchNorm2d(sharesets)
            for k in self.reparam_conv_k:
                setattr(self, f"repconv{k}", ConvBN(sharesets, sharesets, k, padding=k // 2, group=sharesets))
        # Attribute names, not a CellList: the checkpoint names are repmlp_block.repconv{k}.*
        self.branch_names = tuple(f"repconv{k}" for k in self.reparam_conv_k)
        # Grouped k x k convs (S > 1) run at ~0.5 GFLOP/s on MindSpore's CPU kernels and are weak on Ascend's cube
        # units too. Such a branch is computed instead as a batched matmul beside fc3's, on the same rows, with its
        # (h*w, h*w) matrix gathered each step from the kernel through a constant tap index (TapMatrix): the same
        # function and gradients, exactly. (An index, not a (k*k, (h*w)**2) 0/1 basis to multiply: t224's bases
        # were 53 MB of constants, its indexes are 6 MB.) (branch, TapMatrix attribute) pairs; the other branches
        # run as convs.
        self.matmul_branches = ()
        if not deploy and sharesets > 1:
            for k in self.reparam_conv_k:
                if k > 1:
                    setattr(self, f"taps{k}", TapMatrix(h, w, k))
                    self.matmul_branches += ((f"repconv{k}", f"taps{k}"),)
        in_matmul = [branch for branch, _ in self.matmul_branches]
        self.conv_branches = () if deploy else tuple(n for n in self.branch_names if n not in in_matmul)
        self.local = None  # deploy form only: fc3's conv taps kept apart (split_local), for INT8

    def construct(self, x):
        n, c, H, W = x.shape
        hp, wp = H // self.h, W // self.w
        gate = self.gp(x)
        # Rows of (S, h, w) ordered (n, partition row, partition col, c // S). At the native size there is one
        # partition and this is a free reshape.
        if hp == 1 and wp == 1:
            rows = x.reshape(-1, self.s, self.h, self.w)
        else:
            rows = x.reshape(n, c, hp, self.h, wp, self.w).transpose(0, 2, 4, 1, 3, 5).reshape(-1, self.s, self.h, self.w)
        if self.deploy:
            out = self.fc3(rows)
            if self.local is not None:  # a depthwise conv over the channels of each partition
                out = out + self.local(rows.reshape(-1, c, self.h, self.w)).reshape(rows.shape)
        elif self.matmul_branches:
            out = self._fc3_and_matmul_branches(rows)
        else:
            out = self.fc3_bn(self.fc3(rows))
        for name in self.conv_branches:
            out = out + getattr(self, name)(rows)
        if hp == 1 and wp == 1:
            out = out.reshape(n, c, H, W)
        else:
            # The exact inverse of the partitioning above (the authors' code mixes partitions here when hp*wp > 1).
            out = out.reshape(n, hp, wp, c, self.h, self.w).transpose(0, 3, 1, 4, 2, 5).reshape(n, c, H, W)
        return _scale(out, gate)

    def _fc3_and_matmul_branches(self, rows):
        m = rows.shape[0]
        mats = (self.fc3.matrix(),)
        for name, taps in self.matmul_branches:
            mats = mats + (getattr(self, taps)(getattr(self, name).conv.weight),)  # (S, hw, hw)
        ys = self.fc3.apply(rows, mats)  # (M, S, hw) each
        out = self.fc3_bn(ys[0].reshape(m, self.s, self.h, self.w))
        for i, (name, _) in enumerate(self.matmul_branches):
            out = out + getattr(self, name).bn(ys[i + 1].reshape(m, self.s, self.h, self.w))
        return out

    def get_equivalent_fc3(self) -> Tuple[Tensor, Tensor]:
        """(weight (S*h*w, h*w, 1, 1), bias (S*h*w,)) of the single FC equal to fc3 + fc3_bn + conv branches in
        inference mode. Built from differentiable ops, so it can also drive quantization-aware training."""
        if self.deploy:
            return self.fc3.weight.value(), self.fc3.bias.value()
        weight, bias = fuse_bn(self.fc3.weight, self.fc3_bn)
        if not self.reparam_conv_k:
            return weight, bias
        kmax = max(self.reparam_conv_k)
        kernel, kbias = 0, 0
        for k, name in zip(self.reparam_conv_k, self.branch_names):
            kb_w, kb_b = getattr(self, name).fused_kernel_bias()
            pad = (kmax - k) // 2
            kernel = kernel + (ops.pad(kb_w, (pad, pad, pad, pad)) if pad else kb_w)
            kbias = kbias + kb_b
        # A conv is linear: its FC matrix is its response to each one-hot input pixel.
        hw = self.h * self.w
        eye = ops.eye(hw, hw, ms.float32).reshape(hw, 1, self.h, self.w).tile((1, self.s, 1, 1))
        response = ops.conv2d(eye, kernel, pad_mode="pad", padding=kmax // 2, groups=self.s)  # (in px, S, h, w)
        conv_weight = response.reshape(hw, self.s * hw).transpose(1, 0).reshape(self.s * hw, hw, 1, 1)
        conv_bias = kbias.reshape(-1, 1).tile((1, hw)).reshape(-1)
        return weight + conv_weight, bias + conv_bias

    def split_local(self) -> float:
        """Deploy form only: fc3 = dense FC + a grouped k x k conv (k the largest branch), exactly, in place.

        Why: merging the conv branches adds each kernel tap to one entry per row of fc3's matrix, so every row
        holds up to k*k entries an order of magnitude above the rest (t224 trained here: row max/std 30-50 in
        stage 0). A per-row int8 scale set by those taps rounds the dense FC to a few levels. The taps are
        translation-invariant: each tap's median over the rows (the dense FC's own entries there are as small
        as elsewhere) is taken out of the matrix into `local`, and the remainder holds no outliers (t224: max/std
        2-3). Any estimate keeps the function: the matrix loses exactly the conv's FC form (conv_tap_index) that
        `local` adds back. `local` is a depthwise conv over the C channels of each partition (channel c is set
        c % S), not a conv of S groups over the rows: in ONNX Runtime the latter ran 512 one-channel images per
        t224 stage-0 block and took a third of an INT8 run. Returns the largest row max/std before over after."""
        if not self.deploy or self.local is not None or not self.reparam_conv_k:
            raise ValueError("split_local needs a deploy-form block not yet split, with conv branches")
        k, hw = max(self.reparam_conv_k), self.h * self.w
        weight = self.fc3.weight.asnumpy().astype(np.float64).reshape(self.s, hw, hw)
        index = conv_tap_index(self.h, self.w, k)
        taps = np.zeros((self.s, k * k + 1))  # the last column: "no tap", stays 0
        for t in range(k * k):
            taps[:, t] = np.median(weight[:, index == t], axis=1)
        dense = weight - taps[:, index]
        ratio = lambda m: float((np.abs(m).max(-1) / np.maximum(m.std(-1), 1e-30)).max())  # noqa: E731
        gain = ratio(weight) / max(ratio(dense), 1e-30)
        self.fc3.weight.set_data(Tensor(dense.reshape(self.s * hw, hw, 1, 1).astype(np.float32)))
        c = self.channels
        local = nn.Conv2d(c, c, k, pad_mode="pad", padding=k // 2, group=c, has_bias=False)
        kernels = np.tile(taps[:, :-1].reshape(self.s, 1, k, k), (c // self.s, 1, 1, 1))  # channel c: set c % S
        local.weight.set_data(Tensor(kernels.astype(np.float32)))
        self.local = local
        # Named after fc3 once attached (attaching renames a new Cell's parameters): <block>.local.weight
        self.local.weight.name = self.fc3.weight.name[: -len("fc3.weight")] + "local.weight"
        return gain

    def switch_to_deploy(self):
        """Re-parameterization protocol (see mindcv_ext.reparameterize): become the deploy form in place."""
        if self.deploy:
            return
        weight, bias = self.get_equivalent_fc3()
        self.fc3.weight.set_data(weight)
        self.fc3.add_bias(bias)
        del self.fc3_bn
        for name in self.branch_names:
            delattr(self, name)
        for _, taps in self.matmul_branches:
            delattr(self, taps)
        self.matmul_branches, self.conv_branches = (), ()
        self.deploy = True


class GELU(nn.GELU):
    """Exact (erf) GELU, x * (1 + erf(x / sqrt 2)) / 2, lean in memory under MindSpore's CPU graph mode.

    Why not nn.GELU(approximate=False): ops.gelu's exact form is composed of RealDiv, Erf, Add and Mul.
    - The CPU graph runtime (2.10) does not reuse the buffers around that RealDiv by a 0-d tensor (like other
      implicitly broadcasting binary ops): measured on 8 stacked GELUs at (N, 64, 56, 56), ~26 MiB per image kept
      alive, ~2 with x * (1/sqrt 2) (bench/memory_probe.py). This was half of RepMLPNet's inference memory.
    - Autodiff of the composite keeps x/sqrt 2, erf and 1 + erf for the backward: two extra FFN-wide (4C)
      activations per block. The backward below keeps only x and recomputes the rest (one Erf, one Exp).
    Same forward up to the rounding of x/sqrt 2 (1 ulp); gradient dout * (Phi(x) + x * phi(x)), the exact
    derivative. Still an nn.GELU with approximate 'none', so export.py's ONNX swap finds it."""

    def __init__(self):
        super().__init__(approximate=False)

    def construct(self, x):
        return x * (ops.erf(x * _INV_SQRT2) + 1.0) * 0.5

    def bprop(self, x, out, dout):
        cdf = (ops.erf(x * _INV_SQRT2) + 1.0) * 0.5
        pdf = ops.exp(x * x * -0.5) * _INV_SQRT_2PI
        return (dout * (cdf + x * pdf),)


_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


class FFNBlock(nn.Cell):
    def __init__(self, channels: int, expand: int = 4, gelu_approximate: bool = False):
        super().__init__()
        self.ffn_fc1 = ConvBN(channels, channels * expand, 1)
        self.ffn_fc2 = ConvBN(channels * expand, channels, 1)
        # tanh: MindSpore's fused GeLU kernel (mindcv's published t224 weights); exact: the lean cell above.
        self.act = nn.GELU(approximate=True) if gelu_approximate else GELU()
        # ffn_fc1's BN and the exact GELU as one CPU kernel, set by fused_gelu.fuse_for_cpu (inference in
        # MindSpore only; exports never see it).
        self.bn_gelu = None

    def construct(self, x):
        if self.bn_gelu is not None and x.dtype == ms.float32:
            bn = self.ffn_fc1.bn  # inference BN as a per-channel affine, as fuse_bn folds it
            scale = bn.gamma / ops.sqrt(bn.moving_variance + bn.eps)
            return self.ffn_fc2(self.bn_gelu(self.ffn_fc1.conv(x), scale, bn.beta - bn.moving_mean * scale))
        return self.ffn_fc2(self.act(self.ffn_fc1(x)))


class RepMLPNetUnit(nn.Cell):
    """Pre-norm residual pair: x + RepMLPBlock(BN(x)), then + FFN(BN(.))."""

    def __init__(self, channels, h, w, sharesets, reparam_conv_k=(1, 3), gp_reduce=4, ffn_expand=4,
                 deploy=False, gelu_approximate=False, drop_path=0.0):
        super().__init__()
        self.prebn1 = nn.BatchNorm2d(channels)
        self.repmlp_block = RepMLPBlock(channels, h, w, sharesets, reparam_conv_k, gp_reduce, deploy)
        self.prebn2 = nn.BatchNorm2d(channels)
        self.ffn_block = FFNBlock(channels, ffn_expand, gelu_approximate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def construct(self, x):
        x = x + self.drop_path(self.repmlp_block(self.prebn1(x)))
        return x + self.drop_path(self.ffn_block(self.prebn2(x)))


class RepMLPNet(nn.Cell):
    r"""RepMLPNet backbone + classifier.

    Args:
        channels, num_blocks, sharesets: per stage (4 stages in the paper).
        image_size: the resolution the FC sizes are built for; stage i partitions are image_size / (4 * 2**i).
            Inputs must have height and width that are multiples of it.
        num_classes, in_channels: classifier outputs and image channels.
        deploy: build the re-parameterized form (fc3 with bias, no conv branches, no fc3_bn).
        gelu_approximate: tanh GELU instead of the exact erf one the authors trained with.
        drop_rate: dropout before the classifier. drop_path_rate: stochastic depth, linear over the blocks.
        features_only: return the per-stage feature maps (strides 4, 8, 16, 32) instead of logits; the
            classifier is not built. out_indices picks the stages.
    """

    def __init__(self, channels: Sequence[int] = (64, 128, 256, 512), num_blocks: Sequence[int] = (2, 2, 6, 2),
                 sharesets: Sequence[int] = (1, 4, 16, 128), image_size: int = 224, num_classes: int = 1000,
                 in_channels: int = 3, patch_size: int = 4, reparam_conv_k: Sequence[int] = (1, 3),
                 gp_reduce: int = 4, ffn_expand: int = 4, deploy: bool = False, gelu_approximate: bool = False,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3), name: str = "RepMLPNet"):
        super().__init__()
        num_stages = len(channels)
        if not len(num_blocks) == len(sharesets) == num_stages:
            raise ValueError("channels, num_blocks and sharesets need one entry per stage")
        last_stride = patch_size * 2 ** (num_stages - 1)
        if image_size % last_stride:
            raise ValueError(f"image_size {image_size} must be a multiple of {last_stride} "
                             f"(patch {patch_size}, {num_stages - 1} downsamplings)")
        if not 0.0 <= drop_rate < 1.0 or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_rate and drop_path_rate must be in [0, 1); got {drop_rate}, {drop_path_rate}")
        self.name = name
        self.image_size = image_size
        self.deploy = deploy
        self.num_classes = num_classes
        self.partition_sizes = [image_size // (patch_size * 2 ** i) for i in range(num_stages)]
        self.feature_info = [dict(chs=c, reduction=patch_size * 2 ** i, name=f"stages.{i}")
                             for i, c in enumerate(channels)]

        self.conv_embedding = ConvBNReLU(in_channels, channels[0], patch_size, patch_size)
        total_blocks, done = sum(num_blocks), 0
        stages, embeds = [], []
        for i, (c, n, s, p) in enumerate(zip(channels, num_blocks, sharesets, self.partition_sizes)):
            blocks = []
            for _ in range(n):
                dp = drop_path_rate * done / max(total_blocks - 1, 1)
                blocks.append(RepMLPNetUnit(c, p, p, s, reparam_conv_k, gp_reduce, ffn_expand, deploy,
                                            gelu_approximate, dp))
                done += 1
            stages.append(nn.CellList(blocks))
            if i < num_stages - 1:
                embeds.append(ConvBNReLU(c, channels[i + 1], 2, 2))
        self.stages = nn.CellList(stages)
        self.embeds = nn.CellList(embeds)

        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        if features_only:
            bad = [i for i in self.out_indices if not 0 <= i < num_stages]
            if bad or not self.out_indices:
                raise ValueError(f"out_indices must be stage indices in 0..{num_stages - 1}; got {list(out_indices)}")
        else:
            self.head_norm = nn.BatchNorm2d(channels[-1])
            self.dropout = nn.Dropout(p=drop_rate) if drop_rate > 0 else nn.Identity()
            self.head = nn.Dense(channels[-1], num_classes)

    @property
    def out_channels(self):
        return [self.feature_info[i]["chs"] for i in self.out_indices]

    def switch_to_deploy(self):
        # The blocks convert themselves; this only records that the whole net is in deploy form.
        self.deploy = True

    def check_input(self, shape):
        """Raise if the network cannot take an input of this shape. Shapes are static in graph mode, so this
        runs while the graph is built, before anything executes."""
        m = self.image_size
        if len(shape) != 4 or shape[2] % m != 0 or shape[3] % m != 0 or shape[2] == 0 or shape[3] == 0:
            raise ValueError(f"{self.name} takes (N, C, H, W) images with H and W multiples of {m} "
                             f"(e.g. {m}x{m}, {2 * m}x{2 * m}, {m}x{2 * m}); got shape {tuple(shape)}. Resize or "
                             f"crop to a multiple of {m}, or use the variant built for your resolution.")

    def __call__(self, *args, **kwargs):
        # Called directly from Python (not inlined into a bigger graph): reject a bad size before compiling.
        if args and isinstance(args[0], Tensor):
            self.check_input(args[0].shape)
        return super().__call__(*args, **kwargs)

    def forward_stages(self, x):
        self.check_input(x.shape)  # inlined into an outer graph (e.g. a train step): raised while it is built
        x = self.conv_embedding(x)
        outs = ()
        for i in range(len(self.stages)):
            if i > 0:
                x = self.embeds[i - 1](x)
            for block in self.stages[i]:
                x = block(x)
            outs = outs + (x,)
        return outs

    def forward_features(self, x):
        return self.forward_stages(x)[-1]

    def forward_head(self, x):
        x = spatial_mean(self.head_norm(x))
        return self.head(self.dropout(x.reshape(x.shape[0], -1)))

    def construct(self, x):
        feats = self.forward_stages(x)
        if self.features_only:
            outs = ()
            for i in self.out_indices:
                outs = outs + (feats[i],)
            return outs
        return self.forward_head(feats[-1])


def checkpoint_form(param_dict: Dict) -> Optional[str]:
    """'train' or 'deploy' for a RepMLPNet checkpoint in our (mindcv) layout, None if it holds no RepMLP block.
    Raises ValueError for a file that mixes the two forms (it fits neither network)."""
    keys = list(param_dict)
    train = [k for k in keys if ".repmlp_block.fc3_bn." in k or ".repmlp_block.repconv" in k]
    deploy = [k for k in keys if k.endswith(".repmlp_block.fc3.bias")]
    if train and deploy:
        raise ValueError(f"The checkpoint mixes train-form keys ({train[0]}, ...) with deploy-form keys "
                         f"({deploy[0]}, ...): it is neither form. Re-export it from one model.")
    if train:
        return "train"
    if deploy or any(k.endswith(".repmlp_block.fc3.weight") for k in keys):
        return "deploy"  # a bias-free fc3 without conv branches is still the deploy layout
    return None


def checkpoint_model_kwargs(param_dict: Dict) -> Dict:
    """num_classes / in_channels a RepMLPNet checkpoint was saved with (for building the matching net)."""
    kwargs = {}
    if "head.weight" in param_dict:
        kwargs["num_classes"] = int(param_dict["head.weight"].shape[0])
    if "conv_embedding.conv.conv.weight" in param_dict:
        kwargs["in_channels"] = int(param_dict["conv_embedding.conv.conv.weight"].shape[1])
    return kwargs


def checkpoint_architecture(param_dict: Dict):
    """(channels, blocks, partition sizes, sharesets) per stage, read off the shapes of a checkpoint in our layout;
    None if they are incomplete."""
    stages: Dict[int, Dict[int, Tuple[int, int]]] = {}
    channels: Dict[int, int] = {}
    for k, v in param_dict.items():
        m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.repmlp_block\.fc3\.weight", k)
        if m and len(v.shape) == 4 and v.shape[1]:
            rows, hw = int(v.shape[0]), int(v.shape[1])
            stages.setdefault(int(m.group(1)), {})[int(m.group(2))] = (round(hw ** 0.5), rows // hw)
        m = re.fullmatch(r"stages\.(\d+)\.0\.prebn1\.gamma", k)
        if m:
            channels[int(m.group(1))] = int(v.shape[0])
    n = len(stages)
    if n == 0 or sorted(stages) != list(range(n)) or sorted(channels) != list(range(n)):
        return None
    return (tuple(channels[i] for i in range(n)), tuple(len(stages[i]) for i in range(n)),
            tuple(stages[i][0][0] for i in range(n)), tuple(stages[i][0][1] for i in range(n)))


def checkpoint_variant(param_dict: Dict) -> Optional[str]:
    """The registered variant whose architecture a checkpoint's shapes match, if any."""
    arch = checkpoint_architecture(param_dict)
    for name, a in ARCHS.items():
        sizes = tuple(a["image_size"] // (4 * 2 ** i) for i in range(len(a["channels"])))
        if arch == (tuple(a["channels"]), tuple(a["num_blocks"]), sizes, tuple(a["sharesets"])):
            return name
    return None


# mindcv's released checkpoint carries an unused stem conv.
MINDCV_EXTRA_KEYS = ("conv2d.weight", "conv2d.bias")


_CREATE_ARGS = ("pretrained", "num_classes", "in_channels", "deploy", "gelu_approximate", "drop_rate",
                "drop_path_rate", "features_only", "out_indices", "image_size")


def _create(variant: str, pretrained=False, num_classes=1000, in_channels=3, deploy=False,
            gelu_approximate=None, drop_rate=0.0, drop_path_rate=0.0, features_only=False,
            out_indices=(0, 1, 2, 3), image_size=None, **kwargs):
    if kwargs:
        raise TypeError(f"{variant}() got unexpected argument(s) {sorted(kwargs)}; it accepts {list(_CREATE_ARGS)}")
    arch = dict(ARCHS[variant])
    cfg = default_cfgs[variant]
    if image_size is not None and image_size != arch["image_size"]:
        raise ValueError(f"{variant} is built for {arch['image_size']}x{arch['image_size']} (its FC sizes depend on "
                         f"it); got image_size={image_size}. Inputs may be any multiple of {arch['image_size']}; for "
                         f"256-pixel FCs use a *256 variant.")
    if pretrained and not cfg["url"]:
        raise ValueError(f"No published MindSpore weights for {variant}. Convert the authors' release with "
                         f"scripts/convert_weights.py and pass checkpoint_path=... instead.")
    if gelu_approximate is None:
        gelu_approximate = bool(pretrained and cfg.get("gelu_approximate", False))
    model = RepMLPNet(**arch, num_classes=num_classes, in_channels=in_channels, deploy=deploy,
                      gelu_approximate=gelu_approximate, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                      name=variant)
    if pretrained:
        if deploy:
            raise ValueError(f"Published {variant} weights are train form: create with deploy=False, then "
                             f"mindcv_ext.reparameterize(net).")
        from ..weights import load_pretrained  # strict, with a fresh head for another num_classes
        load_pretrained(model, cfg)
    if features_only:
        # Rebuilding without the classifier keeps the loaded weights: parameters are shared Cell by Cell.
        feat = RepMLPNet(**arch, in_channels=in_channels, deploy=deploy, gelu_approximate=gelu_approximate,
                         drop_path_rate=drop_path_rate, features_only=True, out_indices=out_indices, name=variant)
        if pretrained:
            own = {p.name: p for p in model.get_parameters()}
            for p in feat.get_parameters():
                p.set_data(own[p.name].value())
        model = feat
    return model


@register_model
def repmlp_t224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> RepMLPNet:
    """RepMLPNet-T224 (38.3M params, 2.8 GFLOPs)."""
    return _create("repmlp_t224", pretrained, num_classes, in_channels, **kwargs)


@register_model
def repmlp_t256(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> RepMLPNet:
    """RepMLPNet-T256 (58.7M params, 4.2 GFLOPs)."""
    return _create("repmlp_t256", pretrained, num_classes, in_channels, **kwargs)


@register_model
def repmlp_b224(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> RepMLPNet:
    """RepMLPNet-B224 (68.2M params, 6.7 GFLOPs)."""
    return _create("repmlp_b224", pretrained, num_classes, in_channels, **kwargs)


@register_model
def repmlp_b256(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> RepMLPNet:
    """RepMLPNet-B256 (96.5M params, 9.6 GFLOPs)."""
    return _create("repmlp_b256", pretrained, num_classes, in_channels, **kwargs)


@register_model
def repmlp_d256(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> RepMLPNet:
    """RepMLPNet-D256 (86.9M params, 8.6 GFLOPs)."""
    return _create("repmlp_d256", pretrained, num_classes, in_channels, **kwargs)


@register_model
def repmlp_l256(pretrained: bool = False, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> RepMLPNet:
    """RepMLPNet-L256 (117.7M params, 11.5 GFLOPs)."""
    return _create("repmlp_l256", pretrained, num_classes, in_channels, **kwargs)


@register_model
def demo_repmlp(pretrained: bool = False, num_classes: int = 10, in_channels: int = 3, **kwargs) -> RepMLPNet:
    """A small RepMLPNet for 64x64 inputs (not from the paper): the CPU demo and fast tests."""
    return _create("demo_repmlp", pretrained, num_classes, in_channels, **kwargs)
