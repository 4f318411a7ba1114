"""Semantic segmentation with a RepMLPNet encoder: UPerNet (as in the paper) or Semantic FPN decode heads.

    model, encoder_weights = create_seg_model("repmlp_t256", head="upernet", num_classes=19,
                                              checkpoint_path="RepMLPNet-T256-train.pth")  # any format weights.py reads

The encoder is the classification network built with `features_only=True` (strides 4, 8, 16, 32); its weights
go through mindcv_ext.weights (strict; the classifier and head_norm of a classification file are left out, with
a note). Inputs must be multiples of the variant's native size in height and width (the partitions stay correct
above it); seg/inference.py (init_segmentor, inference_segmentor) pads any image to that.

Parameter names: `encoder.*` (the RepMLPNet's own names under it), `decode_head.*`, `aux_head.*`. Not
`backbone.*`: that prefix is how mindcv_ext.weights recognises mmpretrain files.

Metadata: every segmentation checkpoint train_seg.py writes (best, latest, periodic), and the deploy form
validate_seg.py --save_deploy writes, records scalars beside the weights (seg_metadata): `gelu_approximate`
(0: exact erf GELU in the encoder, 1: tanh), `crop_h` and `crop_w` (the training crop). load_seg_checkpoint reads
them: the GELU flavour needs no flag (a contradicting one is refused), and the returned architecture dict holds
`gelu_approximate` and `crop_size` ((h, w), or None for a file written before the crop was recorded).

SyncBN: create_seg_model(sync_bn=True) builds every BatchNorm2d (encoder and heads) as nn.SyncBatchNorm, as
mmseg's UPerNet configs do (norm_cfg SyncBN); the parameter names stay the same, so the checkpoints load into the
plain-BN model inference builds.

The decode heads follow mmsegmentation's UPerHead / FPN + FPNHead / FCNHead (conv + BN + ReLU units, bilinear
resizing with align_corners False, dropout 0.1 before the 1x1 classifier). The encoder is re-parameterized by
the generic pass (mindcv_ext.reparameterize); the heads have nothing to fuse and stay as they are.
"""
from typing import Dict, Optional, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops

__all__ = ["ConvModule", "UPerHead", "FPNHead", "FCNHead", "SegModel", "SegWithLoss", "create_seg_model",
           "seg_architecture", "seg_metadata", "load_seg_checkpoint", "HEADS", "METADATA_KEYS", "use_sync_bn",
           "SYNC_BN_O2_FP32"]

HEADS = ("upernet", "fpn")
METADATA_KEYS = ("gelu_approximate", "crop_h", "crop_w")  # also in weights.TRAINING_STATE_SCALARS: not weights


def seg_metadata(gelu_approximate: bool, crop_size: Optional[Sequence[int]]) -> Dict[str, int]:
    """The metadata scalars of a segmentation checkpoint (see the module docstring)."""
    meta = {"gelu_approximate": int(bool(gelu_approximate))}
    if crop_size:
        meta.update(crop_h=int(crop_size[0]), crop_w=int(crop_size[1]))
    return meta


def resize(x, size, mode="bilinear"):
    return ops.interpolate(x, size=tuple(size), mode=mode, align_corners=False if mode == "bilinear" else None)


class Conv2d(nn.Conv2d):
    """A stride-1 'same' nn.Conv2d (same parameters, same result). On the CPU backend a k x k kernel (k > 1) runs as
    Im2Col + one batched matmul, far faster than MindSpore's CPU Conv2d forward + backward (docs/performance.md).
    Elsewhere (Ascend, GPU; Im2Col is an AI CPU kernel on Ascend) the plain Conv2d runs, as PatchConv does in the
    encoder."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, has_bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, pad_mode="pad", padding=kernel_size // 2,
                         has_bias=has_bias)
        self.k = kernel_size
        self.im2col = kernel_size > 1 and ms.get_context("device_target") == "CPU"
        self.bmm = ops.BatchMatMul()

    def construct(self, x):
        if not self.im2col:
            y = self.conv2d(x, self.weight)
        else:
            n, c, h, w = x.shape
            o, k = self.out_channels, self.k
            cols = ops.unfold(x, k, padding=k // 2)  # (n, c*k*k, h*w), channel-major like the weight
            weight = ops.broadcast_to(self.weight.reshape(o, c * k * k), (n, o, c * k * k))
            y = self.bmm(weight, cols).reshape(n, o, h, w)
        if self.has_bias:
            y = ops.bias_add(y, self.bias)
        return y


class ConvModule(nn.Cell):
    """Conv (no bias) + BatchNorm + ReLU, mmcv's ConvModule with norm and activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class _Classifier(nn.Cell):
    """Dropout + 1x1 conv with bias: the per-pixel class logits (mmseg's cls_seg)."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, has_bias=True)

    def construct(self, x):
        return self.conv_seg(self.dropout(x))


class UPerHead(nn.Cell):
    """UPerNet (Xiao et al. 2018): a pyramid pooling module on the last stage, an FPN over all stages, the FPN
    outputs fused at stride 4. Output: logits at the first feature map's size (stride 4)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.pools = nn.CellList([nn.AdaptiveAvgPool2d(s) for s in pool_scales])
        self.psp_modules = nn.CellList([ConvModule(in_channels[-1], channels, 1) for _ in pool_scales])
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.CellList([ConvModule(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.CellList([ConvModule(channels, channels, 3) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.cls = _Classifier(channels, num_classes, dropout)

    def psp_forward(self, x):
        outs = (x,)
        for pool, conv in zip(self.pools, self.psp_modules):
            outs = outs + (resize(conv(pool(x)), x.shape[2:]),)
        return self.bottleneck(ops.concat(outs, axis=1))

    def construct(self, feats):
        n = len(feats)
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(feats[n - 1]))
        for i in range(n - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        outs.append(laterals[n - 1])
        size = outs[0].shape[2:]
        fused = [outs[0]] + [resize(o, size) for o in outs[1:]]
        return self.cls(self.fpn_bottleneck(ops.concat(fused, axis=1)))


class FPNHead(nn.Cell):
    """Semantic FPN (Kirillov et al. 2019), mmseg's FPN neck + FPNHead: 1x1 laterals (with bias), nearest top-down,
    3x3 FPN convs; each level goes through 3x3 ConvModules with bilinear x2 upsampling until stride 4, summed."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, neck_channels: int = 256, channels: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.lateral_convs = nn.CellList([nn.Conv2d(c, neck_channels, 1, has_bias=True) for c in in_channels])
        self.fpn_convs = nn.CellList([Conv2d(neck_channels, neck_channels, 3, has_bias=True) for _ in in_channels])
        heads = []
        for i in range(len(in_channels)):
            layers = [ConvModule(neck_channels if k == 0 else channels, channels, 3) for k in range(max(i, 1))]
            heads.append(nn.CellList(layers))
        self.scale_heads = nn.CellList(heads)
        self.cls = _Classifier(channels, num_classes, dropout)

    def construct(self, feats):
        n = len(feats)
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:], mode="nearest")
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        size = outs[0].shape[2:]
        total = None
        for i, layers in enumerate(self.scale_heads):
            x = outs[i]
            for layer in layers:
                x = layer(x)
                if i > 0:
                    x = resize(x, (x.shape[2] * 2, x.shape[3] * 2))
            x = resize(x, size)  # a no-op when the strides divide evenly
            total = x if total is None else total + x
        return self.cls(total)


class FCNHead(nn.Cell):
    """The auxiliary head (mmseg's FCNHead, one 3x3 ConvModule) on one stage; training only."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, in_index: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.in_index = in_index
        self.convs = ConvModule(in_channels, channels, 3)
        self.cls = _Classifier(channels, num_classes, dropout)

    def construct(self, feats):
        return self.cls(self.convs(feats[self.in_index]))


class SegModel(nn.Cell):
    """encoder (a features_only RepMLPNet) + decode head (+ optional auxiliary head).

    construct(images) -> logits (N, num_classes, H, W) at the input size, as mmseg's inference returns them."""

    def __init__(self, encoder: nn.Cell, decode_head: nn.Cell, aux_head: Optional[nn.Cell] = None,
                 num_classes: int = 0, head: str = "upernet"):
        super().__init__()
        self.encoder = encoder
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.head = head
        self.name = f"{getattr(encoder, 'name', 'encoder')}_{head}"

    @property
    def native_size(self) -> int:
        """Height and width of inputs must be multiples of this (the encoder's partition size x 32)."""
        return self.encoder.image_size

    @property
    def deploy(self) -> bool:
        return bool(getattr(self.encoder, "deploy", False))

    def forward_train(self, images):
        """(decode logits at stride 4, auxiliary logits at its stage's stride or None)."""
        feats = self.encoder(images)
        aux = self.aux_head(feats) if self.aux_head is not None else None
        return self.decode_head(feats), aux

    def construct(self, images):
        return resize(self.decode_head(self.encoder(images)), images.shape[2:])


def cross_entropy(logits, labels, ignore_index: int):
    """Mean per-pixel cross entropy over the pixels whose label is not ignore_index (mmseg's avg_non_ignore).
    logits (N, C, H, W) float, labels (N, H, W) int32."""
    logp = ops.log_softmax(logits.astype(ms.float32), axis=1)
    valid = labels != ignore_index
    safe = ops.where(valid, labels, ops.zeros_like(labels))
    onehot = ops.one_hot(safe, logits.shape[1], ops.ones((), ms.float32), ops.zeros((), ms.float32), axis=1)
    picked = (logp * onehot).sum(axis=1)
    validf = valid.astype(ms.float32)
    return -(picked * validf).sum() / ops.maximum(validf.sum(), ops.ones((), ms.float32))


class SegWithLoss(nn.Cell):
    """model + loss for the train step: logits resized (bilinear) to the label size as mmseg does; the auxiliary
    head's loss is added with aux_weight (0.4 in mmseg's UPerNet configs)."""

    def __init__(self, model: SegModel, ignore_index: int = 255, aux_weight: float = 0.4):
        super().__init__(auto_prefix=False)
        self.model = model
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.use_aux = model.aux_head is not None

    def construct(self, images, labels):
        labels = labels.astype(ms.int32)
        logits, aux = self.model.forward_train(images)
        size = labels.shape[1:]
        loss = cross_entropy(resize(logits.astype(ms.float32), size), labels, self.ignore_index)
        if self.use_aux:
            loss = loss + self.aux_weight * cross_entropy(resize(aux.astype(ms.float32), size), labels,
                                                          self.ignore_index)
        return loss


def _build(backbone: str, head: str, num_classes: int, channels: Optional[int], aux: bool, deploy: bool,
           dropout: float, aux_channels: int = 256, encoder=None, **backbone_kwargs) -> SegModel:
    import mindcv

    from .. import models  # noqa: F401  (registers the RepMLPNets)

    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    if encoder is None:
        encoder = mindcv.create_model(backbone, features_only=True, deploy=deploy, **backbone_kwargs)
    chs = list(encoder.out_channels)
    if len(chs) != 4:
        raise ValueError(f"the decode heads take the 4 stages of {backbone}; out_indices gave {len(chs)}")
    if head == "upernet":
        decode = UPerHead(chs, num_classes, channels=channels or 512, dropout=dropout)
    else:
        channels = channels or 128  # mmseg's Semantic FPN: a 256-channel neck, 128-channel scale heads
        decode = FPNHead(chs, num_classes, neck_channels=2 * channels, channels=channels, dropout=dropout)
    aux_head = FCNHead(chs[2], num_classes, channels=aux_channels, dropout=dropout) if aux else None
    return SegModel(encoder, decode, aux_head, num_classes=num_classes, head=head)


def use_sync_bn(model: nn.Cell) -> int:
    """Replace every nn.BatchNorm2d in `model` by an nn.SyncBatchNorm with the same values and parameter names
    (mmseg's SyncBN). Across the devices of a data-parallel run on Ascend/GPU it normalizes with the global batch's
    statistics; in a single process it is a plain BatchNorm. Returns how many were replaced."""
    count = 0
    for _, cell in list(model.cells_and_names()):
        for name, child in list(cell.name_cells().items()):
            if type(child) is not nn.BatchNorm2d:  # noqa: E721  (subclasses may differ in what they compute)
                continue
            sync = nn.SyncBatchNorm(child.num_features, eps=child.eps, momentum=1.0 - child.momentum)
            cell.insert_child_to_cell(name, sync)
            for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
                old, new = getattr(child, attr), getattr(sync, attr)
                new.set_data(old.data)
                new.name = old.name  # the full name (encoder.stages...): checkpoints stay the same
            count += 1
    return count


# mindcv's amp O2 keeps the cells of this list in fp32; its default names nn.BatchNorm2d, of which SyncBatchNorm is
# no subclass, so a sync_bn model needs this list (mindcv evaluates it, with `nn` = mindspore.nn).
SYNC_BN_O2_FP32 = "[nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.SyncBatchNorm]"


def create_seg_model(backbone: str, head: str = "upernet", num_classes: int = 19, checkpoint_path: str = "",
                     channels: Optional[int] = None, aux: bool = False, aux_channels: int = 256,
                     deploy: bool = False, dropout: float = 0.1, log=None, sync_bn: bool = False,
                     **backbone_kwargs) -> Tuple[SegModel, object]:
    """A SegModel with a fresh head. `checkpoint_path`: encoder weights of any format and layout that
    mindcv_ext.weights reads (classification checkpoints: the classifier and head_norm are left out, one note).
    The encoder takes the file's form (train/deploy). Returns (model, the encoder's Weights or None).

    channels: the decode head's width (UPerNet 512, FPN 128 by default, as mmseg); aux: an FCN auxiliary head
    of aux_channels on the third stage (training only); sync_bn: SyncBatchNorm everywhere (use_sync_bn)."""
    from ..weights import build_model

    weights = None
    encoder = None
    form = backbone_kwargs.pop("form", None)  # "train": refuse a deploy-form file (training needs the branches)
    if checkpoint_path:
        encoder, weights = build_model(backbone, checkpoint_path, features_only=True, form=form, **backbone_kwargs)
        dropped = [k for k in weights.params if k.startswith(("head.", "head_norm."))]
        if dropped and log is not None:
            log(f"encoder weights from {checkpoint_path}: {len(dropped)} classifier keys (head, head_norm) left "
                f"out; everything else loaded strictly")
    model = _build(backbone, head, num_classes, channels, aux, deploy, dropout, aux_channels, encoder=encoder,
                   **backbone_kwargs)
    if sync_bn:
        use_sync_bn(model)
    return model, weights


# ------------------------------------------------------------------------------------------- seg checkpoints

def seg_architecture(params: Dict) -> Dict:
    """What SegModel a checkpoint written by train_seg.py holds, read off its keys and shapes: backbone, head,
    num_classes, channels, aux, deploy. Raises ValueError if it is not one."""
    from ..models.repmlp import checkpoint_form, checkpoint_variant

    enc = {k[len("encoder."):]: v for k, v in params.items() if k.startswith("encoder.")}
    cls = params.get("decode_head.cls.conv_seg.weight")
    if not enc or cls is None:
        sample = ", ".join(list(params)[:4])
        raise ValueError(f"not a segmentation checkpoint of this project (no encoder.* and "
                         f"decode_head.cls.conv_seg.weight keys; first keys: {sample}). Encoder-only weights go to "
                         f"train_seg.py as --backbone_ckpt.")
    variant = checkpoint_variant(enc)
    if variant is None:
        raise ValueError("its encoder.* weights match no registered RepMLPNet variant")
    head = "upernet" if any(k.startswith("decode_head.psp_modules.") for k in params) else "fpn"
    aux = params.get("aux_head.convs.conv.weight")
    return dict(backbone=variant, head=head, num_classes=int(cls.shape[0]), channels=int(cls.shape[1]),
                aux=aux is not None, aux_channels=int(aux.shape[0]) if aux is not None else 256,
                deploy=checkpoint_form(enc) == "deploy")


def load_seg_checkpoint(path: str, log=None, gelu_approximate: Optional[bool] = None,
                        **backbone_kwargs) -> Tuple[SegModel, object, Dict]:
    """Build the SegModel a train_seg.py checkpoint (train or deploy form, any format weights.py reads) holds and
    load it strictly. Returns (model, Weights, architecture dict with the recorded gelu_approximate and
    crop_size). `gelu_approximate`: None reads it from the file (False for files that do not record it); a value
    that contradicts the record is refused."""
    from ..checkpoint import CheckpointError
    from ..weights import load_into, read_weights

    w = read_weights(path)
    try:
        arch = seg_architecture(w.params)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    recorded = w.scalar("gelu_approximate")
    if recorded is not None and gelu_approximate is not None and bool(recorded) != bool(gelu_approximate):
        flavour = "tanh (approximate)" if recorded else "exact (erf)"
        raise CheckpointError(f"{path} records that its encoder was trained with {flavour} GELU, but "
                              f"gelu_approximate is {bool(gelu_approximate)}; leave gelu_approximate out (the file "
                              f"says which).")
    arch["gelu_approximate"] = bool(recorded if recorded is not None else gelu_approximate)
    crop = (w.scalar("crop_h"), w.scalar("crop_w"))
    arch["crop_size"] = (int(crop[0]), int(crop[1])) if None not in crop else None
    model = _build(arch["backbone"], arch["head"], arch["num_classes"], arch["channels"], arch["aux"],
                   arch["deploy"], 0.1, arch["aux_channels"], gelu_approximate=arch["gelu_approximate"],
                   **backbone_kwargs)
    load_into(model, w, log=log)
    return model, w, arch
