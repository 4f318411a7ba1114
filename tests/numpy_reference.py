"""An independent NumPy RepMLPNet forward (inference mode) written from the paper's definition, loop by loop.

It shares no code with mindcv_ext: the FC of each partition is applied partition by partition and channel by
channel (channel c uses FC set c mod S), the conv branches are explicit tap sums, BN uses the moving statistics.
At the native resolution this is the authors' computation; for larger inputs it is the intended one (each
partition's FC sees only its own partition).
"""
import math

import numpy as np

EPS = 1e-5
_erf = np.vectorize(math.erf)


def gelu(x, approximate=False):
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def bn(x, p, prefix, axis=1):
    shape = [1] * x.ndim
    shape[axis] = -1
    g, b = p[prefix + ".gamma"].reshape(shape), p[prefix + ".beta"].reshape(shape)
    m, v = p[prefix + ".moving_mean"].reshape(shape), p[prefix + ".moving_variance"].reshape(shape)
    return (x - m) / np.sqrt(v + EPS) * g + b


def patch_conv(x, w):
    """Conv with kernel == stride (the stem and the downsamplings), no padding."""
    n, c, H, W = x.shape
    o, _, k, _ = w.shape
    patches = x.reshape(n, c, H // k, k, W // k, k).transpose(0, 2, 4, 1, 3, 5).reshape(n, H // k, W // k, c * k * k)
    return (patches @ w.reshape(o, -1).T).transpose(0, 3, 1, 2)


def conv1x1(x, w, b=None):
    y = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0])
    return y if b is None else y + b[None, :, None, None]


def tap_conv(img, kernel):
    """Same-padded 2-D conv (cross-correlation) of images (N, h, w) with one odd kernel (k, k), as tap sums."""
    k = kernel.shape[0]
    r = k // 2
    padded = np.pad(img, ((0, 0), (r, r), (r, r)))
    h, w = img.shape[1:]
    out = np.zeros_like(img)
    for a in range(k):
        for b in range(k):
            out += kernel[a, b] * padded[:, a:a + h, b:b + w]
    return out


def repmlp_block(x, p, pre, S, h, w, conv_ks=(1, 3), deploy=False):
    n, C, H, W = x.shape
    pooled = x.mean(axis=(2, 3), keepdims=True)
    hidden = np.maximum(conv1x1(pooled, p[pre + ".gp.fc1.weight"], p[pre + ".gp.fc1.bias"]), 0)
    gate = 1 / (1 + np.exp(-conv1x1(hidden, p[pre + ".gp.fc2.weight"], p[pre + ".gp.fc2.bias"])))
    fc = p[pre + ".fc3.weight"].reshape(S, h * w, h * w)
    out = np.zeros_like(x)
    for i in range(H // h):
        for j in range(W // w):
            part = x[:, :, i * h:(i + 1) * h, j * w:(j + 1) * w]
            for c in range(C):
                s = c % S
                y = part[:, c].reshape(n, h * w) @ fc[s].T
                if deploy:
                    y = y + p[pre + ".fc3.bias"].reshape(S, h * w)[s]
                else:
                    m, v = p[pre + ".fc3_bn.moving_mean"][s], p[pre + ".fc3_bn.moving_variance"][s]
                    y = (y - m) / np.sqrt(v + EPS) * p[pre + ".fc3_bn.gamma"][s] + p[pre + ".fc3_bn.beta"][s]
                y = y.reshape(n, h, w)
                if not deploy:
                    for k in conv_ks:
                        br = f"{pre}.repconv{k}"
                        z = tap_conv(part[:, c], p[br + ".conv.weight"][s, 0])
                        m, v = p[br + ".bn.moving_mean"][s], p[br + ".bn.moving_variance"][s]
                        y = y + (z - m) / np.sqrt(v + EPS) * p[br + ".bn.gamma"][s] + p[br + ".bn.beta"][s]
                out[:, c, i * h:(i + 1) * h, j * w:(j + 1) * w] = y
    return out * gate


def conv_bn(x, p, pre):
    return bn(conv1x1(x, p[pre + ".conv.weight"]), p, pre + ".bn")


def forward(x, p, channels, num_blocks, sharesets, image_size, deploy=False, gelu_approximate=False,
            return_stages=False):
    """Logits (or the per-stage features) of RepMLPNet for params `p` (name -> ndarray, our layout)."""
    x = np.maximum(bn(patch_conv(x, p["conv_embedding.conv.conv.weight"]), p, "conv_embedding.conv.bn"), 0)
    stages = []
    for si, (nb, S) in enumerate(zip(num_blocks, sharesets)):
        if si > 0:
            e = f"embeds.{si - 1}.conv"
            x = np.maximum(bn(patch_conv(x, p[e + ".conv.weight"]), p, e + ".bn"), 0)
        hw = image_size // (4 * 2 ** si)
        for b in range(nb):
            u = f"stages.{si}.{b}"
            x = x + repmlp_block(bn(x, p, u + ".prebn1"), p, u + ".repmlp_block", S, hw, hw, deploy=deploy)
            y = bn(x, p, u + ".prebn2")
            y = gelu(conv_bn(y, p, u + ".ffn_block.ffn_fc1"), gelu_approximate)
            x = x + conv_bn(y, p, u + ".ffn_block.ffn_fc2")
        stages.append(x)
    if return_stages:
        return stages
    pooled = bn(x, p, "head_norm").mean(axis=(2, 3))
    return pooled @ p["head.weight"].T + p["head.bias"]


def equivalent_fc3(p, pre, S, h, w, conv_ks=(1, 3)):
    """Deploy fc3 (weight (S*h*w, h*w), bias (S*h*w,)) built entry by entry from the conv taps (no identity-conv
    trick): output pixel q of set s depends on input pixel r with the fused kernel tap at (r - q + k//2)."""
    hw = h * w
    g, b = p[pre + ".fc3_bn.gamma"], p[pre + ".fc3_bn.beta"]
    m, v = p[pre + ".fc3_bn.moving_mean"], p[pre + ".fc3_bn.moving_variance"]
    t = g / np.sqrt(v + EPS)
    weight = p[pre + ".fc3.weight"].reshape(S, hw, hw) * t[:, None, None]
    bias = np.repeat(b - m * t, hw).reshape(S, hw)
    for k in conv_ks:
        br = f"{pre}.repconv{k}"
        tk = p[br + ".bn.gamma"] / np.sqrt(p[br + ".bn.moving_variance"] + EPS)
        kern = p[br + ".conv.weight"][:, 0] * tk[:, None, None]
        bias = bias + (p[br + ".bn.beta"] - p[br + ".bn.moving_mean"] * tk)[:, None]
        r = k // 2
        for s in range(S):
            for qy in range(h):
                for qx in range(w):
                    for a in range(k):
                        for c in range(k):
                            iy, ix = qy + a - r, qx + c - r
                            if 0 <= iy < h and 0 <= ix < w:
                                weight[s, qy * w + qx, iy * w + ix] += kern[s, a, c]
    return weight.reshape(S * hw, hw), bias.reshape(-1)
