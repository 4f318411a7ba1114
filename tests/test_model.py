"""The model: registry, layout, parameter counts, numerics against the NumPy reference, inputs, options."""
import mindcv
import mindspore as ms
import numpy as np
import pytest
from conftest import SMALL, images, params_np, randomize, rel_err

import mindcv_ext
import numpy_reference as ref
from mindcv_ext.models.repmlp import ARCHS, RepMLPNet

# Trainable parameters (train form, deploy form), recomputed from the authors' key shapes.
PARAM_COUNTS = {
    "repmlp_t224": (38_293_608, 38_331_720),
    "repmlp_t256": (58_687_848, 58_739_400),
    "repmlp_b224": (68_242_712, 68_332_664),
    "repmlp_b256": (96_447_512, 96_568_184),
    "repmlp_d256": (86_887_648, 86_985_280),
    "repmlp_l256": (117_641_560, 117_820_600),
}


def n_trainable(net):
    return sum(p.size for p in net.trainable_params())


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_registry_returns_ours_with_published_parameter_counts(name):
    train = mindcv.create_model(name)
    deploy = mindcv.create_model(name, deploy=True)
    assert isinstance(train, RepMLPNet) and isinstance(deploy, RepMLPNet)
    assert type(train).__module__ == "mindcv_ext.models.repmlp"  # not mindcv's own repmlp.py
    assert (n_trainable(train), n_trainable(deploy)) == PARAM_COUNTS[name]


def test_mindcv_checkpoint_layout():
    net = mindcv.create_model("repmlp_t224")
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    expected = {
        "conv_embedding.conv.conv.weight": (64, 3, 4, 4),
        "conv_embedding.conv.bn.gamma": (64,),
        "stages.0.0.repmlp_block.fc3.weight": (3136, 3136, 1, 1),
        "stages.3.1.repmlp_block.fc3.weight": (128 * 49, 49, 1, 1),
        "stages.0.0.repmlp_block.fc3_bn.moving_mean": (1,),
        "stages.2.5.repmlp_block.repconv3.conv.weight": (16, 1, 3, 3),
        "stages.2.5.repmlp_block.repconv1.bn.moving_variance": (16,),
        "stages.1.0.repmlp_block.gp.fc1.weight": (32, 128, 1, 1),
        "stages.1.0.ffn_block.ffn_fc1.conv.weight": (512, 128, 1, 1),
        "stages.1.0.prebn2.beta": (128,),
        "embeds.0.conv.conv.weight": (128, 64, 2, 2),
        "embeds.2.conv.bn.moving_mean": (512,),
        "head_norm.gamma": (512,),
        "head.weight": (1000, 512),
        "head.bias": (1000,),
    }
    for k, shape in expected.items():
        assert shapes.get(k) == shape, k
    assert not any(k.startswith("conv2d.") for k in shapes)  # mindcv's unused stem conv is not rebuilt
    deploy = {p.name for p in mindcv.create_model("repmlp_t224", deploy=True).get_parameters()}
    assert "stages.0.0.repmlp_block.fc3.bias" in deploy
    assert not any("fc3_bn" in k or "repconv" in k for k in deploy)


@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
def test_forward_matches_numpy_reference(ms_mode, deploy):
    net = randomize(RepMLPNet(**SMALL, num_classes=5, deploy=deploy))
    net.set_train(False)
    x = images(2, (32, 32))
    got = net(x).asnumpy()
    want = ref.forward(x.asnumpy().astype(np.float64), params_np(net), SMALL["channels"], SMALL["num_blocks"],
                       SMALL["sharesets"], 32, deploy=deploy)
    assert rel_err(got, want) < 1e-5


def test_larger_inputs_keep_partitions_separate(ms_mode):
    """At 2x2 and 1x3 partitions each FC sees only its own partition, with the same weights everywhere."""
    net = randomize(RepMLPNet(**SMALL, num_classes=5))
    net.set_train(False)
    p = params_np(net)
    for size in [(64, 64), (32, 96)]:
        x = images(2, size, seed=3)
        got = net(x).asnumpy()
        want = ref.forward(x.asnumpy().astype(np.float64), p, SMALL["channels"], SMALL["num_blocks"],
                           SMALL["sharesets"], 32)
        assert rel_err(got, want) < 1e-5, size


def test_partition_isolation_directly():
    """Changing one partition of the input must not change another partition's fc3 output (every public port
    fails this at inputs larger than the native size)."""
    block = randomize(mindcv_ext.RepMLPBlock(8, 4, 4, sharesets=2, reparam_conv_k=()))
    block.set_train(False)
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)
    x2 = x.copy()
    x2[:, :, :4, :4] += 5.0  # top-left partition only

    def fc_path(v):  # block output without the global-perceptron gate, which sees the whole image
        v = ms.Tensor(v)
        return block(v).asnumpy() / block.gp(v).asnumpy()

    a, b = fc_path(x), fc_path(x2)
    np.testing.assert_allclose(a[:, :, 4:, :], b[:, :, 4:, :], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[:, :, :4, 4:], b[:, :, :4, 4:], rtol=1e-5, atol=1e-5)
    assert np.abs(a[:, :, :4, :4] - b[:, :, :4, :4]).max() > 1e-2


@pytest.mark.parametrize("shape", [(1, 3, 30, 32), (1, 3, 32, 48), (1, 3, 16, 16)])
def test_wrong_input_size_is_a_clear_error(ms_mode, shape):
    net = RepMLPNet(**SMALL, num_classes=5)
    net.set_train(False)
    with pytest.raises(ValueError, match=r"multiples of 32"):
        net(images(shape[0], shape[2:]))


def test_gelu_exact_by_default_and_tanh_option():
    x = images(2, (32, 32))
    exact = randomize(RepMLPNet(**SMALL, num_classes=5))
    approx = RepMLPNet(**SMALL, num_classes=5, gelu_approximate=True)
    for a, b in zip(exact.get_parameters(), approx.get_parameters()):
        b.set_data(a.value())
    exact.set_train(False)
    approx.set_train(False)
    p = params_np(exact)
    args = (p, SMALL["channels"], SMALL["num_blocks"], SMALL["sharesets"], 32)
    xn = x.asnumpy().astype(np.float64)
    assert rel_err(exact(x).asnumpy(), ref.forward(xn, *args)) < 1e-5
    assert rel_err(approx(x).asnumpy(), ref.forward(xn, *args, gelu_approximate=True)) < 1e-5
    assert np.abs(exact(x).asnumpy() - approx(x).asnumpy()).max() > 1e-6


def test_create_model_kwargs():
    net = mindcv.create_model("demo_repmlp", num_classes=7, in_channels=1, drop_rate=0.1, drop_path_rate=0.1)
    assert net.head.weight.shape == (7, 128)
    assert net.conv_embedding.conv.conv.weight.shape[1] == 1
    x = images(2, (64, 64), channels=1)
    net.set_train(True)
    a, b = net(x).asnumpy(), net(x).asnumpy()
    assert not np.allclose(a, b)  # dropout and stochastic depth are active in training
    net.set_train(False)
    np.testing.assert_array_equal(net(x).asnumpy(), net(x).asnumpy())
    with pytest.raises(TypeError, match="unexpected argument"):
        mindcv.create_model("demo_repmlp", drop_block_rate=0.1)
    with pytest.raises(ValueError, match="drop_path_rate"):
        mindcv.create_model("demo_repmlp", drop_path_rate=1.5)
    with pytest.raises(ValueError, match="built for 224x224"):
        mindcv.create_model("repmlp_t224", image_size=256)


def test_features_only(ms_mode):
    full = randomize(mindcv.create_model("demo_repmlp"))
    feat = mindcv.create_model("demo_repmlp", features_only=True, out_indices=[0, 1, 2, 3])
    assert feat.out_channels == [16, 32, 64, 128]
    assert [f["reduction"] for f in feat.feature_info] == [4, 8, 16, 32]
    assert not hasattr(feat, "head")
    for p in feat.get_parameters():  # same names as the classifier's backbone
        p.set_data(dict((q.name, q) for q in full.get_parameters())[p.name].value())
    feat.set_train(False)
    full.set_train(False)
    x = images(2, (128, 128))
    outs = feat(x)
    assert [tuple(o.shape) for o in outs] == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4)]
    want = ref.forward(x.asnumpy().astype(np.float64), params_np(full), (16, 32, 64, 128), (1, 1, 2, 1),
                       (1, 2, 4, 8), 64, return_stages=True)
    for o, w in zip(outs, want):
        assert rel_err(o.asnumpy(), w) < 1e-5
    two = mindcv.create_model("demo_repmlp", features_only=True, out_indices=[1, 3])
    assert two.out_channels == [32, 128] and len(two(x)) == 2
    with pytest.raises(ValueError, match="out_indices"):
        mindcv.create_model("demo_repmlp", features_only=True, out_indices=[4])


def test_archs_table_matches_spec():
    assert ARCHS["repmlp_l256"]["sharesets"] == (1, 4, 32, 256)
    assert ARCHS["repmlp_d256"]["num_blocks"] == (2, 2, 18, 2)
    assert sorted(mindcv.list_models("repmlp_*")) == sorted(PARAM_COUNTS)


def test_conv_branches_in_fc3_matmul_equal_grouped_convs_in_training(ms_mode):
    """For S > 1 the 3x3 branch runs as a batched matmul beside fc3's, its matrix gathered by TapMatrix (own backward).
    In training mode (BN on batch statistics), the outputs and every parameter gradient must equal the plain
    formulation with MindSpore's grouped Conv2d."""
    s, h, w = 4, 5, 3
    block = randomize(mindcv_ext.RepMLPBlock(8, h, w, sharesets=s), seed=4)
    assert block.matmul_branches == (("repconv3", "taps3"),)
    block.set_train(True)
    x = images(3, (2 * h, w), seed=9, channels=8)  # two partitions
    probe = ms.Tensor(np.random.default_rng(2).standard_normal((3, 8, 2 * h, w)).astype(np.float32))
    weights = block.trainable_params()

    def via_grouped_convs(v):
        n = v.shape[0]
        rows = v.reshape(n, 8, 2, h, 1, w).transpose(0, 2, 4, 1, 3, 5).reshape(-1, s, h, w)
        out = block.fc3_bn(block.fc3(rows)) + block.repconv1(rows) + block.repconv3(rows)  # repconv3: Conv2d
        out = out.reshape(n, 2, 1, 8, h, w).transpose(0, 3, 1, 4, 2, 5).reshape(n, 8, 2 * h, w)
        return out * block.gp(v)

    def ours(v):
        return (block(v) * probe).sum()

    def plain(v):
        return (via_grouped_convs(v) * probe).sum()

    got, got_grads = ms.value_and_grad(ours, None, weights)(x)
    want, want_grads = ms.value_and_grad(plain, None, weights)(x)
    np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5)
    for p, g, r in zip(weights, got_grads, want_grads):
        np.testing.assert_allclose(g.asnumpy(), r.asnumpy(), rtol=1e-4, atol=1e-5, err_msg=p.name)


def test_lean_gelu_matches_exact_gelu_and_its_gradient(ms_mode):
    """The FFN's exact GELU (multiply form, own backward) against MindSpore's exact nn.GELU: same values and input
    gradients up to fp32 rounding, and still recognisable as an exact nn.GELU (export.py's ONNX swap needs that)."""
    from mindcv_ext.models.repmlp import GELU

    rng = np.random.default_rng(0)
    x = ms.Tensor((rng.standard_normal((2, 8, 5, 5)) * 3).astype(np.float32))
    probe = ms.Tensor(rng.standard_normal((2, 8, 5, 5)).astype(np.float32))
    lean, ref_gelu = GELU(), ms.nn.GELU(approximate=False)
    assert isinstance(lean, ms.nn.GELU) and lean.approximate in ("none", False)
    np.testing.assert_allclose(lean(x).asnumpy(), ref_gelu(x).asnumpy(), rtol=1e-6, atol=1e-6)

    def lean_loss(v):
        return (lean(v) * probe).sum()

    def ref_loss(v):
        return (ref_gelu(v) * probe).sum()

    got, want = ms.grad(lean_loss)(x).asnumpy(), ms.grad(ref_loss)(x).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    net = RepMLPNet(**SMALL, num_classes=5)
    assert isinstance(net.stages[0][0].ffn_block.act, GELU)
    assert not isinstance(RepMLPNet(**SMALL, num_classes=5, gelu_approximate=True).stages[0][0].ffn_block.act, GELU)


def _values_and_grads(cell, x, probe):
    weights = cell.trainable_params()

    def loss_fn(v):
        return (cell(v) * probe).sum()

    loss, grads = ms.value_and_grad(loss_fn, 0, weights)(x)
    return loss.asnumpy(), [g.asnumpy() for g in grads[1]], grads[0].asnumpy()


@pytest.mark.parametrize("c_in, c_out, k, size", [(3, 16, 4, 32), (8, 8, 2, 8), (8, 40, 2, 8)])
def test_patch_conv_layouts_equal_a_strided_conv_with_gradients(ms_mode, c_in, c_out, k, size):
    """Both layouts of the stride == kernel convs (on CPU: Im2Col columns while out_channels <= 2 * output pixels,
    Transposed rows otherwise, the three cases cover both and the boundary; with im2col off, as on Ascend, GPU and
    for ONNX: Transposed rows always) against MindSpore's own strided Conv2d: outputs, weight and input gradients."""
    from mindcv_ext.models.repmlp import PatchConv

    rng = np.random.default_rng(k + c_out)
    conv = ms.nn.Conv2d(c_in, c_out, k, stride=k, pad_mode="valid", has_bias=False)
    x = ms.Tensor(rng.standard_normal((2, c_in, size, size)).astype(np.float32))
    probe = ms.Tensor(rng.standard_normal((2, c_out, size // k, size // k)).astype(np.float32))
    for im2col in (True, False):
        patch = PatchConv(c_in, c_out, k)
        assert patch.im2col  # the CPU backend's choice
        patch.im2col = im2col
        conv.weight.set_data(patch.weight.value())
        got, want = _values_and_grads(patch, x, probe), _values_and_grads(conv, x, probe)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sets", [4, 64])
def test_partition_fc_set_shuffles_equal_per_set_matmuls_with_gradients(ms_mode, sets):
    """fc3 with S > 1 moves the sets to the front by Split + Concat (S <= 32) or Transpose (larger S, and for
    ONNX export): both against a NumPy loop of one matmul per set, values and gradients."""
    from mindcv_ext.models.repmlp import PartitionFC

    h = w = 3
    rng = np.random.default_rng(sets)
    for split in (True, False):
        fc = PartitionFC(sets, h, w)
        fc.split_sets = split
        x_np = rng.standard_normal((5, sets, h, w)).astype(np.float32)
        probe_np = rng.standard_normal((5, sets, h, w)).astype(np.float32)
        out, (dw,), dx = _values_and_grads(fc, ms.Tensor(x_np), ms.Tensor(probe_np))
        wm = fc.weight.asnumpy().reshape(sets, h * w, h * w).astype(np.float64)
        xr, pr = x_np.reshape(5, sets, h * w).astype(np.float64), probe_np.reshape(5, sets, h * w)
        want = sum((xr[:, s] @ wm[s].T * pr[:, s]).sum() for s in range(sets))
        want_dw = np.stack([pr[:, s].T @ xr[:, s] for s in range(sets)]).reshape(fc.weight.shape)
        want_dx = np.stack([pr[:, s] @ wm[s] for s in range(sets)], axis=1).reshape(x_np.shape)
        np.testing.assert_allclose(out, want, rtol=1e-5)
        np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)


def test_amp_o2_gradients_are_fp32_and_finite(ms_mode):
    """The Ascend recipes train under mindcv's AMP O2 (network in fp16, BN in fp32, Parameters fp32). Every
    Parameter's gradient must come back fp32 and finite: graph mode passes the dtype a custom backward returns
    (TapMatrix's) to the Parameter unconverted, which once gave the S > 1 branch kernels fp16 gradients. (fp16 vs
    fp32 values are not compared: on a randomized net they differ by fp16 rounding through every layer.)"""
    from mindcv.utils.amp import auto_mixed_precision

    x, labels = images(4, (32, 32), seed=3), ms.Tensor(np.array([0, 1, 2, 3], np.int32))
    loss_fn = ms.nn.CrossEntropyLoss()
    net = randomize(RepMLPNet(**SMALL, num_classes=5), seed=5)
    net.set_train(True)
    auto_mixed_precision(net, "O2")

    def loss(v, y):
        return loss_fn(net(v).astype(ms.float32), y)

    params = net.trainable_params()
    grads = ms.grad(loss, None, params)(x, labels)
    assert any("stages.1" in p.name and "repconv3" in p.name for p in params)  # an S > 1 TapMatrix branch
    for p, g in zip(params, grads):
        assert g.dtype == ms.float32 and np.isfinite(g.asnumpy()).all(), p.name
