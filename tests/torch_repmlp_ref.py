"""An independent PyTorch RepMLPNet with the authors' module names and forward semantics, written from the facts
in docs/repmlpnet-spec.md. Tests use it to produce checkpoints in the official (and mmpretrain) key layout
and the logits our converted MindSpore model must reproduce.

Deliberately literal: the partition, fc3 + fc3_bn over (-1, S, h, w) and the reshape back follow the
official code path (including its row order), so a port that "fixes" something at the native size shows up.
"""
import re
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

# (channels, blocks, sharesets, image size) per variant, from the spec's table.
VARIANTS = {
    "repmlp_t224": ((64, 128, 256, 512), (2, 2, 6, 2), (1, 4, 16, 128), 224),
    "repmlp_t256": ((64, 128, 256, 512), (2, 2, 6, 2), (1, 4, 16, 128), 256),
    "repmlp_b224": ((96, 192, 384, 768), (2, 2, 12, 2), (1, 4, 32, 128), 224),
    "repmlp_b256": ((96, 192, 384, 768), (2, 2, 12, 2), (1, 4, 32, 128), 256),
    "repmlp_d256": ((80, 160, 320, 640), (2, 2, 18, 2), (1, 4, 16, 128), 256),
    "repmlp_l256": ((96, 192, 384, 768), (2, 2, 18, 2), (1, 4, 32, 256), 256),
}


def conv_bn(cin, cout, k, stride=1, padding=0, groups=1):
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=False),
        bn=nn.BatchNorm2d(cout)))


def conv_bn_relu(cin, cout, k, stride):
    seq = conv_bn(cin, cout, k, stride)
    seq.add_module("relu", nn.ReLU())
    return seq


class GlobalPerceptron(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(c, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, c, 1, bias=True)

    def forward(self, x):
        v = F.adaptive_avg_pool2d(x, 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(v))))


class RepMLPBlock(nn.Module):
    def __init__(self, c, h, w, s, deploy, kernels=(1, 3), reduce=4):
        super().__init__()
        self.c, self.h, self.w, self.s, self.deploy, self.kernels = c, h, w, s, deploy, kernels
        self.gp = GlobalPerceptron(c, c // reduce)
        n = s * h * w
        self.fc3 = nn.Conv2d(n, n, 1, groups=s, bias=deploy)
        if not deploy:
            self.fc3_bn = nn.BatchNorm2d(s)
            for k in kernels:
                self.add_module(f"repconv{k}", conv_bn(s, s, k, padding=k // 2, groups=s))

    def forward(self, x):
        n, c, H, W = x.shape
        hp, wp = H // self.h, W // self.w
        gate = self.gp(x)
        parts = x.reshape(n, c, hp, self.h, wp, self.w).permute(0, 2, 4, 1, 3, 5)  # N, hp, wp, C, h, w
        out = self.fc3(parts.reshape(-1, self.s * self.h * self.w, 1, 1)).reshape(-1, self.s, self.h, self.w)
        if not self.deploy:
            out = self.fc3_bn(out)
        # The authors' inverse: rows read back as (hp, wp, S); exact at the native size (hp = wp = 1).
        out = out.reshape(-1, hp, wp, self.s, self.h, self.w)
        if not self.deploy:
            local_in = parts.reshape(-1, self.s, self.h, self.w)
            local = sum(getattr(self, f"repconv{k}")(local_in) for k in self.kernels)
            out = out + local.reshape(-1, hp, wp, self.s, self.h, self.w)
        out = out.permute(0, 3, 1, 4, 2, 5).reshape(n, c, H, W)
        return out * gate


class FFNBlock(nn.Module):
    def __init__(self, c, expand=4):
        super().__init__()
        self.ffn_fc1 = conv_bn(c, c * expand, 1)
        self.act = nn.GELU()  # exact erf, as the released weights were trained
        self.ffn_fc2 = conv_bn(c * expand, c, 1)

    def forward(self, x):
        return self.ffn_fc2(self.act(self.ffn_fc1(x)))


class RepMLPNetUnit(nn.Module):
    def __init__(self, c, h, w, s, deploy):
        super().__init__()
        self.repmlp_block = RepMLPBlock(c, h, w, s, deploy)
        self.ffn_block = FFNBlock(c)
        self.prebn1 = nn.BatchNorm2d(c)
        self.prebn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = x + self.repmlp_block(self.prebn1(x))
        return y + self.ffn_block(self.prebn2(y))


class RepMLPNet(nn.Module):
    def __init__(self, channels, blocks, sharesets, image_size, num_classes=1000, deploy=False):
        super().__init__()
        sizes = [image_size // (4 * 2 ** i) for i in range(len(channels))]
        self.conv_embedding = conv_bn_relu(3, channels[0], 4, 4)
        self.stages = nn.ModuleList(
            nn.ModuleList(RepMLPNetUnit(c, p, p, s, deploy) for _ in range(b))
            for c, b, s, p in zip(channels, blocks, sharesets, sizes))
        self.embeds = nn.ModuleList(conv_bn_relu(channels[i], channels[i + 1], 2, 2)
                                    for i in range(len(channels) - 1))
        self.head_norm = nn.BatchNorm2d(channels[-1])
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        x = self.conv_embedding(x)
        for i, stage in enumerate(self.stages):
            for unit in stage:
                x = unit(x)
            if i < len(self.embeds):
                x = self.embeds[i](x)
        x = self.head_norm(x)
        return self.head(x.mean(dim=(2, 3)))


def build(variant_or_cfg, num_classes=1000, deploy=False, device=None):
    cfg = VARIANTS[variant_or_cfg] if isinstance(variant_or_cfg, str) else variant_or_cfg
    if device is not None:
        with torch.device(device):
            return RepMLPNet(*cfg, num_classes=num_classes, deploy=deploy)
    return RepMLPNet(*cfg, num_classes=num_classes, deploy=deploy)


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affines everywhere (identity BNs hide mapping bugs), and deploy-form fc3
    biases."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.num_batches_tracked.fill_(1234)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.Linear):
            # Logits O(10) like a trained classifier's, so an absolute tolerance means what it does there.
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# mmpretrain's module names for the same weights (its RepMLPNet backbone + LinearClsHead).
_TO_MMPRETRAIN = [
    (r"conv_embedding\.conv\.(.+)", r"backbone.patch_embed.projection.\1"),
    (r"conv_embedding\.bn\.(.+)", r"backbone.patch_embed.norm.\1"),
    (r"embeds\.(\d+)\.(conv|bn)\.(.+)", r"backbone.downsample_layers.\1.\2.\3"),
    (r"stages\.(\d+)\.(\d+)\.prebn([12])\.(.+)", r"backbone.stages.\1.\2.norm\3.\4"),
    (r"stages\.(\d+)\.(\d+)\.repmlp_block\.gp\.fc([12])\.(.+)", r"backbone.stages.\1.\2.repmlp_block.gp.conv\3.conv.\4"),
    (r"(stages\..+)", r"backbone.\1"),
    (r"head_norm\.(.+)", r"backbone.final_norm.\1"),
    (r"head\.(.+)", r"head.fc.\1"),
]


def to_mmpretrain(state):
    out = OrderedDict()
    for k, v in state.items():
        for pattern, repl in _TO_MMPRETRAIN:
            if re.fullmatch(pattern, k):
                out[re.sub(pattern, repl, k)] = v
                break
        else:
            raise KeyError(k)
    return out
