"""The segmentation model: output shapes above the native size (square and not), the CPU conv path, the loss,
the encoder's strict weight loading, train-form == deploy-form masks, and sliding-window inference."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

import mindcv
from mindcv_ext.checkpoint import CheckpointError, save_checkpoint
from mindcv_ext.reparameterize import reparameterize
from mindcv_ext.seg.inference import infer_logits
from mindcv_ext.seg.model import Conv2d, create_seg_model, cross_entropy, load_seg_checkpoint
from mindcv_ext.verify import perturb_bn


def _x(n, h, w, seed=0):
    return ms.Tensor(np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32))


@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_logits_at_input_size_above_the_native_size(head):
    model, _ = create_seg_model("demo_repmlp", head=head, num_classes=5, channels=8)
    model.set_train(False)
    for h, w in [(64, 64), (64, 192), (128, 64)]:  # native 64: 1x1, 1x3 and 2x1 partitions
        out = model(_x(1, h, w))
        assert out.shape == (1, 5, h, w)
        assert np.isfinite(out.asnumpy()).all()
    with pytest.raises(ValueError, match="multiples of 64"):
        model(_x(1, 64, 96))


def test_cpu_conv_path_equals_conv2d():
    conv = Conv2d(6, 4, 3, has_bias=True)
    conv.bias.set_data(ms.Tensor(np.random.default_rng(1).standard_normal(4).astype(np.float32)))
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 6, 7, 9)).astype(np.float32))
    assert conv.im2col
    fast = conv(x).asnumpy()
    conv.im2col = False
    ref = conv(x).asnumpy()
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)


def test_cross_entropy_ignores_255_like_a_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 3, 5)).astype(np.int32)
    labels[0, 0] = 255
    got = float(cross_entropy(ms.Tensor(logits), ms.Tensor(labels), 255).asnumpy())
    total, count = 0.0, 0
    for n in range(2):
        for i in range(3):
            for j in range(5):
                if labels[n, i, j] != 255:
                    z = logits[n, :, i, j].astype(np.float64)
                    total += np.log(np.exp(z).sum()) - z[labels[n, i, j]]
                    count += 1
    assert got == pytest.approx(total / count, rel=1e-5)


def test_encoder_weights_load_strictly_from_a_classification_file(tmp_path):
    cls = mindcv.create_model("demo_repmlp", num_classes=10)
    perturb_bn(cls, 3)
    path = str(tmp_path / "cls.ckpt")
    save_checkpoint(cls, path)
    notes = []
    model, w = create_seg_model("demo_repmlp", num_classes=4, channels=8, checkpoint_path=path, log=notes.append,
                                form="train")
    assert w is not None and any("classifier keys" in n for n in notes)
    ref = {p.name: p.asnumpy() for p in cls.get_parameters()}
    enc = {p.name[len("encoder."):]: p.asnumpy() for p in model.get_parameters() if p.name.startswith("encoder.")}
    assert set(enc) == set(ref) - {"head.weight", "head.bias", "head_norm.gamma", "head_norm.beta",
                                   "head_norm.moving_mean", "head_norm.moving_variance"}
    for k, v in enc.items():
        np.testing.assert_array_equal(v, ref[k])
    # the same weights as .npz (another format, same loader)
    npz = str(tmp_path / "cls.npz")
    np.savez(npz, **ref)
    model2, _ = create_seg_model("demo_repmlp", num_classes=4, channels=8, checkpoint_path=npz)
    np.testing.assert_array_equal(model2.encoder.conv_embedding.conv.conv.weight.asnumpy(),
                                  ref["conv_embedding.conv.conv.weight"])
    # a file missing a key is refused, naming it
    del ref["stages.0.0.prebn1.gamma"]
    np.savez(npz, **ref)
    with pytest.raises(CheckpointError, match="prebn1.gamma"):
        create_seg_model("demo_repmlp", num_classes=4, channels=8, checkpoint_path=npz)


@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_deploy_form_gives_the_same_masks(head, tmp_path):
    ms.set_seed(0)  # random weights: how many pixels have a clear winner depends on them, not on the code
    np.random.seed(0)
    model, _ = create_seg_model("demo_repmlp", head=head, num_classes=6, channels=8, aux=True, aux_channels=8)
    perturb_bn(model, 5)  # every BN of encoder and heads non-trivial
    model.set_train(False)
    x = _x(2, 64, 128, seed=4)
    before = model(x).asnumpy()
    path = str(tmp_path / "seg.ckpt")
    save_checkpoint(model, path)
    reparameterize(model)
    assert model.deploy and not any(".fc3_bn." in p.name for p in model.get_parameters())
    after = model(x).asnumpy()
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
    top2 = np.sort(before, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    np.testing.assert_array_equal(after.argmax(1)[clear], before.argmax(1)[clear])
    assert clear.mean() > 0.95  # the masks are compared on nearly every pixel
    # round trip through files: the train-form file rebuilds the same model; its deploy form saved and re-read
    loaded, _, arch = load_seg_checkpoint(path)
    assert arch == dict(backbone="demo_repmlp", head=head, num_classes=6, channels=8, aux=True, aux_channels=8,
                        deploy=False, gelu_approximate=False, crop_size=None)  # a file without the metadata
    loaded.set_train(False)
    np.testing.assert_allclose(loaded(x).asnumpy(), before, rtol=1e-5, atol=1e-5)
    dpath = str(tmp_path / "seg_deploy.ckpt")
    save_checkpoint(model, dpath)
    deployed, _, arch = load_seg_checkpoint(dpath)
    assert arch["deploy"]
    deployed.set_train(False)
    np.testing.assert_allclose(deployed(x).asnumpy(), after, rtol=1e-5, atol=1e-5)


class _PerPixel(nn.Cell):
    """A model whose logits at a pixel depend on that pixel only: sliding windows must give the whole-image
    logits exactly, whatever the window layout."""

    native_size = 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, has_bias=True)

    def construct(self, x):
        return self.conv(x)


def test_slide_inference_covers_every_pixel_once_averaged():
    model = _PerPixel()
    img = np.random.default_rng(0).standard_normal((3, 40, 70)).astype(np.float32)
    whole = infer_logits(model, img, mode="whole")
    assert whole.shape == (4, 40, 70)
    for crop, stride in [((32, 32), (21, 21)), ((16, 48), (16, 16)), ((48, 80), (32, 53))]:
        slide = infer_logits(model, img, mode="slide", crop_size=crop, stride=stride)
        np.testing.assert_allclose(slide, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["official", "mmpretrain"])
def test_encoder_from_a_pytorch_release_file(tmp_path, layout):
    """The authors' / mmpretrain's .pth (the PyTorch reference's state dict, random BN statistics) loads into the
    encoder with the same values as into the classifier (whose logits tests/test_weight_import.py compares with
    the reference)."""
    torch = pytest.importorskip("torch")
    import torch_repmlp_ref as ref
    from mindcv_ext.models.repmlp import ARCHS
    cfg = tuple(ARCHS["demo_repmlp"][k] for k in ("channels", "num_blocks", "sharesets", "image_size"))
    state = ref.randomize(ref.build(cfg, 10), seed=2).state_dict()
    if layout == "mmpretrain":
        state = ref.to_mmpretrain(state)
    path = str(tmp_path / "release.pth")
    torch.save(state, path)
    model, w = create_seg_model("demo_repmlp", num_classes=4, channels=8, checkpoint_path=path, form="train")
    cls = mindcv.create_model("demo_repmlp", num_classes=10, checkpoint_path=path)
    ref_params = {p.name: p.asnumpy() for p in cls.get_parameters()}
    enc = {p.name[len("encoder."):]: p.asnumpy() for p in model.get_parameters() if p.name.startswith("encoder.")}
    assert len(enc) > 20 and set(enc) <= set(ref_params)
    for k, v in enc.items():
        np.testing.assert_array_equal(v, ref_params[k], err_msg=k)
    assert np.abs(enc["stages.0.0.prebn1.moving_mean"]).max() > 0  # the file's statistics, not fresh ones


def test_sync_bn_switch_builds_syncbatchnorm_with_the_same_names_and_results():
    # mmseg's UPerNet configs normalize with SyncBN; in one process (CPU) nn.SyncBatchNorm is a plain BatchNorm,
    # so the switched model must compute what the plain one computes, under the same parameter names.
    kwargs = dict(head="upernet", num_classes=5, channels=8, aux=True, aux_channels=8, dropout=0.0)  # no randomness
    plain, _ = create_seg_model("demo_repmlp", **kwargs)
    sync, _ = create_seg_model("demo_repmlp", sync_bn=True, **kwargs)
    kinds = {type(c) for _, c in sync.cells_and_names()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
    n_bn = sum(type(c) is nn.BatchNorm2d for _, c in plain.cells_and_names())
    assert sum(type(c) is nn.SyncBatchNorm for _, c in sync.cells_and_names()) == n_bn > 10  # encoder and heads
    plain_params = {p.name: p for p in plain.get_parameters()}
    assert sorted(plain_params) == sorted(p.name for p in sync.get_parameters())
    rng = np.random.default_rng(0)
    for p in sync.get_parameters():  # the same non-trivial values in both (BN statistics included)
        value = (rng.random(p.shape) + 0.5).astype(np.float32)
        p.set_data(ms.Tensor(value))
        plain_params[p.name].set_data(ms.Tensor(value))
    x = _x(2, 64, 128)
    for train in (False, True):
        plain.set_train(train)
        sync.set_train(train)
        np.testing.assert_allclose(sync(x).asnumpy(), plain(x).asnumpy(), rtol=1e-4, atol=1e-4)


def test_recorded_gelu_flavour_and_crop_are_read_back(tmp_path):
    # a model trained with tanh GELU (mindcv's T224 weights) evaluated without the flag: the record decides
    from mindcv_ext.seg.model import seg_metadata
    from mindcv_ext.weights import save_weights
    kwargs = dict(head="fpn", num_classes=4, channels=8)
    tanh, _ = create_seg_model("demo_repmlp", gelu_approximate=True, **kwargs)
    erf, _ = create_seg_model("demo_repmlp", **kwargs)
    erf.set_train(False)
    tanh.set_train(False)
    path = str(tmp_path / "tanh.ckpt")
    save_weights(tanh, path, append_dict=seg_metadata(True, (64, 128)))
    for p in erf.get_parameters():  # the same weights in an exact-GELU model: other outputs
        p.set_data(tanh.parameters_dict()[p.name].data)
    x = _x(1, 64, 128)
    loaded, _, arch = load_seg_checkpoint(path)
    loaded.set_train(False)
    assert arch["gelu_approximate"] is True and arch["crop_size"] == (64, 128)
    np.testing.assert_allclose(loaded(x).asnumpy(), tanh(x).asnumpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(erf(x).asnumpy() - tanh(x).asnumpy()).max() > 1e-6  # the flavour matters to the outputs
    with pytest.raises(CheckpointError, match="tanh \\(approximate\\) GELU"):
        load_seg_checkpoint(path, gelu_approximate=False)


def test_amp_o2_keeps_syncbatchnorm_in_fp32_with_the_sync_bn_cast_list():
    # mindcv's O2 keeps nn.BatchNorm2d in fp32 by isinstance; SyncBatchNorm is no BatchNorm2d and would go fp16
    from mindcv.utils.amp import auto_mixed_precision
    from mindcv_ext.seg.model import SYNC_BN_O2_FP32
    model, _ = create_seg_model("demo_repmlp", head="fpn", num_classes=4, channels=8, sync_bn=True)
    n_sync = sum(type(c) is nn.SyncBatchNorm for _, c in model.cells_and_names())
    auto_mixed_precision(model, "O2", SYNC_BN_O2_FP32)
    kept = [c for _, c in model.cells_and_names() if type(c).__name__ == "_OutputTo16"]
    assert sum(type(c._op) is nn.SyncBatchNorm for c in kept) == n_sync > 0


@pytest.mark.parametrize("src,dst", [((16, 24), (64, 96)), ((64, 64), (37, 51)), ((7, 9), (7, 30)),
                                     ((50, 40), (13, 80))])
def test_resize_logits_is_mindspore_bilinear(src, dst):
    """The NumPy logits resize (every model, and the .onnx path without MindSpore) against ops.interpolate
    (bilinear, align_corners False), up and down, odd sizes."""
    from mindspore import ops

    from mindcv_ext.seg.inference import resize_logits

    x = np.random.default_rng(sum(src)).standard_normal((5,) + src).astype(np.float32)
    want = ops.interpolate(ms.Tensor(x[None]), size=dst, mode="bilinear", align_corners=False).asnumpy()[0]
    got = resize_logits(x, dst)
    assert got.shape == want.shape and np.abs(got - want).max() < 5e-5
