"""Weight import (scripts/convert_weights.py, mindcv_ext.weight_import).

The torch-dependent tests build checkpoints with an independent PyTorch RepMLPNet in the authors' key layout
(tests/torch_repmlp_ref.py) and require the converted MindSpore model to give the same logits. The rest use
.npz / .safetensors / .ckpt sources and run without torch.
"""
import builtins
import os
import re
import subprocess
import sys

import mindcv
import mindspore as ms
import numpy as np
import pytest
from conftest import ROOT, SMALL, params_np
from conftest import randomize as ms_randomize

import mindcv_ext
from mindcv_ext import weight_formats as wi
from mindcv_ext.checkpoint import save_checkpoint
from mindcv_ext.models.repmlp import checkpoint_variant
from mindcv_ext.weights import build_model, load_into, read_weights


def load_checkpoint(path):
    """Every entry of a written file, as arrays (weights and the rest)."""
    w = read_weights(path)
    return {**w.params, **w.state}


def import_weights(path, model, **kwargs):
    """The library path a user script takes: mindcv_ext.build_model on the source file."""
    return build_model(model, str(path), **kwargs)
from mindcv_ext.models import ARCHS, RepMLPNet

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import convert_weights  # noqa: E402

TOL = 1e-4  # the project's bar against the authors' release (max abs logit difference)
REL_TOL = 1e-5  # and relative to the largest logit, so small logits cannot pass by being small
DEMO = "demo_repmlp"
DEMO_CFG = tuple(ARCHS[DEMO][k] for k in ("channels", "num_blocks", "sharesets", "image_size"))
SMALL_CFG = tuple(SMALL[k] for k in ("channels", "num_blocks", "sharesets", "image_size"))
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def ref():
    """The PyTorch reference module (skips when torch is missing)."""
    pytest.importorskip("torch")
    import torch_repmlp_ref
    return torch_repmlp_ref


def _images(size, n=2, seed=3):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def torch_logits(model, x):
    import torch
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def ms_logits(net, x):
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def converted_logits(ckpt, x, deploy, model=DEMO, num_classes=NUM_CLASSES):
    # create_model(checkpoint_path=...) is the strict loader once mindcv_ext is imported.
    net = mindcv.create_model(model, num_classes=num_classes, deploy=deploy, checkpoint_path=str(ckpt))
    return ms_logits(net, x)


def assert_logits_close(out, expected):
    diff = float(np.abs(out - expected).max())
    rel = diff / float(np.abs(expected).max())
    assert diff <= TOL and rel <= REL_TOL, f"max abs logit difference {diff:.3g} (relative {rel:.3g})"


def run(*args):
    """scripts/convert_weights.py in-process (MindSpore is imported once for the whole session)."""
    return convert_weights.main([str(a) for a in args])


@pytest.fixture(scope="module")
def demo_refs(ref):
    """{form: (official state dict, reference logits)} for the demo architecture, random BN statistics."""
    x = _images(DEMO_CFG[3])
    out = {}
    for form in ("train", "deploy"):
        m = ref.randomize(ref.build(DEMO_CFG, NUM_CLASSES, deploy=form == "deploy"), seed=11)
        out[form] = (m.state_dict(), torch_logits(m, x))
    return x, out


def wrap(ref, state, how):
    if how == "bare":
        return dict(state)
    if how == "model":  # the authors' training script: weights next to optimizer state and scalars
        return {"model": dict(state), "epoch": 99, "max_accuracy": 81.0}
    if how == "state_dict":
        return {"state_dict": dict(state)}
    if how == "module":
        return {"module." + k: v for k, v in state.items()}
    if how == "model+module":
        return {"model": {"module." + k: v for k, v in state.items()}}
    if how == "mmpretrain":
        return {"meta": {"epoch": 300, "CLASSES": ("a", "b")}, "state_dict": ref.to_mmpretrain(state)}
    raise ValueError(how)


# --------------------------------------------------------------------------------- logits against the reference

@pytest.mark.parametrize("form,how,suffix", [
    ("train", "bare", ".ckpt"), ("train", "model", ".ckpt"), ("train", "state_dict", ".safetensors"),
    ("train", "module", ".ckpt"), ("train", "mmpretrain", ".ckpt"),
    ("deploy", "bare", ".ckpt"), ("deploy", "model+module", ".safetensors"), ("deploy", "state_dict", ".ckpt"),
    ("deploy", "mmpretrain", ".ckpt"),
])
def test_pth_matches_reference_logits(ref, demo_refs, tmp_path, capsys, form, how, suffix):
    import torch
    x, refs = demo_refs
    state, expected = refs[form]
    src, out = tmp_path / "src.pth", tmp_path / f"out{suffix}"
    torch.save(wrap(ref, state, how), src)
    assert run("--model", DEMO, "--src", src, "--output", out) == 0
    log = capsys.readouterr().out
    layout = "mmpretrain's layout" if how == "mmpretrain" else "the authors' PyTorch layout"
    assert f"{layout}, {form} form, {NUM_CLASSES} classes, architecture of {DEMO}" in log
    assert "num_batches_tracked" in log  # dropped, and said so
    if "module" in how:
        assert "'module.' prefix" in log
    # The output keeps the source's form.
    params = load_checkpoint(str(out))
    assert any(k.endswith("fc3.bias") for k in params) == (form == "deploy")
    assert_logits_close(converted_logits(out, x, form == "deploy"), expected)


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_small_config_through_library(ref, tmp_path, form):
    """The smallest useful net (channels 8..64, partitions 8/4/2/1) via import_weights with a custom builder."""
    import torch
    m = ref.randomize(ref.build(SMALL_CFG, 7, deploy=form == "deploy"), seed=5)
    x = _images(SMALL_CFG[3], n=3)
    torch.save(m.state_dict(), tmp_path / "small.pth")
    info = read_weights(str(tmp_path / "small.pth"))
    assert (info.layout, info.form, info.num_classes) == (wi.OFFICIAL, form, 7)
    net = RepMLPNet(**SMALL, num_classes=7, deploy=form == "deploy")
    load_into(net, info)
    assert_logits_close(ms_logits(net, x), torch_logits(m, x))


def test_train_form_import_then_reparameterize(ref, demo_refs, tmp_path):
    """Imported train-form weights, re-parameterized by our pass, still give the authors' train-form logits."""
    import torch

    import mindcv_ext
    x, refs = demo_refs
    state, expected = refs["train"]
    torch.save(state, tmp_path / "t.pth")
    net, _ = import_weights(tmp_path / "t.pth", DEMO)
    net.set_train(False)
    mindcv_ext.reparameterize(net)
    assert_logits_close(ms_logits(net, x), expected)


def test_comparison_is_sensitive(ref, demo_refs, tmp_path):
    """One wrongly mapped BN statistic, or the tanh GELU instead of the exact one, must fail the bar; otherwise
    the comparisons above prove nothing."""
    import torch
    x, refs = demo_refs
    state, expected = refs["train"]
    torch.save(state, tmp_path / "t.pth")
    net, _ = import_weights(tmp_path / "t.pth", DEMO)
    p = {q.name: q for q in net.get_parameters()}["stages.2.1.repmlp_block.fc3_bn.moving_mean"]
    p.set_data(ms.Tensor(np.zeros(p.shape, np.float32)))
    assert np.abs(ms_logits(net, x) - expected).max() > 10 * TOL
    tanh_net, _ = import_weights(tmp_path / "t.pth", DEMO, gelu_approximate=True)
    assert np.abs(ms_logits(tanh_net, x) - expected).max() > TOL


@pytest.mark.slow
def test_full_size_t224(ref, tmp_path, capsys):
    """Once at full size: repmlp_t224, train form, 224x224."""
    import torch
    m = ref.randomize(ref.build("repmlp_t224", 1000), seed=2)
    x = _images(224, n=1)
    expected = torch_logits(m, x)
    torch.save({"model": m.state_dict()}, tmp_path / "t224.pth")
    del m
    assert run("--model", "repmlp_t224", "--src", tmp_path / "t224.pth", "--output", tmp_path / "t224.ckpt") == 0
    assert "architecture of repmlp_t224" in capsys.readouterr().out
    assert_logits_close(converted_logits(tmp_path / "t224.ckpt", x, False, "repmlp_t224", 1000), expected)


# ------------------------------------------------------------------ all six variants: key mapping at shape level

def test_reference_matches_published_parameter_counts(ref):
    counts = {"repmlp_t224": (38293608, 38331720), "repmlp_t256": (58687848, 58739400),
              "repmlp_b224": (68242712, 68332664), "repmlp_b256": (96447512, 96568184),
              "repmlp_d256": (86887648, 86985280), "repmlp_l256": (117641560, 117820600)}
    for name, (train, deploy) in counts.items():
        assert ref.count_trainable(ref.build(name, device="meta")) == train, name
        assert ref.count_trainable(ref.build(name, deploy=True, device="meta")) == deploy, name


@pytest.mark.parametrize("variant", [
    "repmlp_t224", "repmlp_t256", "repmlp_b224", "repmlp_b256", "repmlp_d256", "repmlp_l256"])
def test_every_variant_maps_onto_our_model(ref, variant):
    """Official and mmpretrain key sets of each variant, both forms, against the network's names and shapes
    (meta tensors: shapes without memory)."""
    for form in ("train", "deploy"):
        state = ref.build(variant, deploy=form == "deploy", device="meta").state_dict()
        net = mindcv.create_model(variant, deploy=form == "deploy")
        shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
        for layout, src in ((wi.OFFICIAL, state), (wi.MMPRETRAIN, ref.to_mmpretrain(state))):
            assert wi.detect_layout(src) == layout
            mapped, source_of, unmapped = wi.map_state_dict(src, layout, [])
            assert checkpoint_variant(mapped) == variant
            assert not unmapped and set(mapped) == set(shapes)
            assert {k: tuple(v.shape) for k, v in mapped.items()} == shapes
        del net


# ----------------------------------------------------------------------------------- sources that need no torch

def ours_to_official(name):
    """Our (MindSpore) name -> the authors' PyTorch name, written independently of weight_import's tables."""
    name = re.sub(r"^(conv_embedding|embeds\.\d+)\.conv\.(conv|bn)\.", r"\1.\2.", name)
    for ms_name, pt_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                             ("moving_variance", "running_var")):
        if name.endswith("." + ms_name):
            return name[: -len(ms_name)] + pt_name
    return name


@pytest.fixture(scope="module", params=["train", "deploy"])
def demo_ms(request):
    """A randomized MindSpore demo net, its weights in the official layout, and its logits."""
    deploy = request.param == "deploy"
    net = ms_randomize(mindcv.create_model(DEMO, num_classes=NUM_CLASSES, deploy=deploy), seed=4)
    x = _images(DEMO_CFG[3])
    official = {ours_to_official(k): v for k, v in params_np(net).items()}
    return request.param, net, official, x, ms_logits(net, x)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_torch_free_sources(demo_ms, tmp_path, capsys, suffix):
    from safetensors.numpy import save_file
    form, _, official, x, expected = demo_ms
    src = tmp_path / f"w{suffix}"
    np.savez(src, **official) if suffix == ".npz" else save_file(official, str(src))
    assert run("--model", DEMO, "--src", src, "--output", tmp_path / "o.ckpt") == 0
    assert f"the authors' PyTorch layout, {form} form" in capsys.readouterr().out
    assert np.abs(converted_logits(tmp_path / "o.ckpt", x, form == "deploy") - expected).max() <= 1e-6


def test_mindcv_layout_ckpt_with_extras(demo_ms, tmp_path, capsys):
    """mindcv's released file carries an unused conv2d.*; training checkpoints carry optimizer state."""
    form, net, _, x, expected = demo_ms
    params = params_np(net)
    extras = {"conv2d.weight": np.zeros((16, 3, 4, 4), np.float32), "conv2d.bias": np.zeros(16, np.float32),
              "global_step": np.array([10], np.int32),
              "adam_m.head.weight": np.zeros_like(params["head.weight"])}
    save_checkpoint({k: ms.Tensor(v) for k, v in {**params, **extras}.items()}, str(tmp_path / "m.ckpt"))
    assert run("--model", DEMO, "--src", tmp_path / "m.ckpt", "--output", tmp_path / "o.safetensors") == 0
    log = capsys.readouterr().out
    assert f"mindcv's (MindSpore) layout, {form} form" in log
    assert "conv2d.weight, conv2d.bias" in log and "gelu_approximate=True" in log
    assert "training-state" in log
    out = load_checkpoint(str(tmp_path / "o.safetensors"))
    assert set(out) == set(params)
    assert np.abs(converted_logits(tmp_path / "o.safetensors", x, form == "deploy") - expected).max() <= 1e-6


def test_command_line(tmp_path):
    net = ms_randomize(mindcv.create_model(DEMO, num_classes=NUM_CLASSES), seed=6)
    np.savez(tmp_path / "w.npz", **{ours_to_official(k): v for k, v in params_np(net).items()})
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_weights.py"), "--model", DEMO,
                        "--src", str(tmp_path / "w.npz"), "--output", str(tmp_path / "o.ckpt")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "train form" in r.stdout and os.path.getsize(tmp_path / "o.ckpt") > 0


# ------------------------------------------------------------------------------------------------- error cases

def _err(capsys):
    return capsys.readouterr().err


def test_unmapped_missing_and_misshaped_keys_are_all_listed(demo_ms, tmp_path, capsys):
    form, _, official, _, _ = demo_ms
    bad = dict(official)
    bad["stages.0.0.repmlp_block.fc4.weight"] = np.zeros((4, 4), np.float32)  # unmapped
    del bad["stages.1.0.prebn2.running_var"]                                     # missing
    bad["embeds.0.conv.weight"] = np.zeros((32, 16, 3, 3), np.float32)           # wrong shape
    np.savez(tmp_path / "bad.npz", **bad)
    assert run("--model", DEMO, "--src", tmp_path / "bad.npz", "--output", tmp_path / "o.ckpt") == 2
    err = _err(capsys)
    assert "unmapped" in err and "stages.0.0.repmlp_block.fc4.weight" in err
    assert "missing" in err and "stages.1.0.prebn2.moving_variance" in err
    assert "wrong shape" in err and "embeds.0.conv.conv.weight (from embeds.0.conv.weight): (32, 16, 3, 3) in the " \
                                    "file, (32, 16, 2, 2) in the network" in err
    assert not os.path.exists(tmp_path / "o.ckpt")


def test_missing_torch_names_the_install(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    (tmp_path / "w.pth").write_bytes(b"PK\x03\x04 not really")
    assert run("--model", DEMO, "--src", tmp_path / "w.pth", "--output", tmp_path / "o.ckpt") == 2
    err = _err(capsys)
    assert 'pip install "mindcv-ext-repmlp[torch]"' in err and "needs torch" in err


@pytest.mark.parametrize("name,content,expected", [
    ("w.ckpt", b"\x00garbage" * 10, "Cannot read checkpoint"),
    ("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage", "Cannot read"),
    ("w.npz", b"not a zip archive", "Cannot read"),
    ("w.ckpt", b"", "empty (0 bytes)"),
    ("w.h5", b"xx", "Don't know how to read"),
])
def test_unreadable_sources(tmp_path, capsys, name, content, expected):
    (tmp_path / name).write_bytes(content)
    assert run("--model", DEMO, "--src", tmp_path / name, "--output", tmp_path / "o.ckpt") == 2
    assert expected in _err(capsys)


def test_unreadable_pth(ref, tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"this is not a torch file")
    assert run("--model", DEMO, "--src", tmp_path / "w.pth", "--output", tmp_path / "o.ckpt") == 2
    assert "is not a torch.save file" in _err(capsys)
    import torch
    torch.save({"w": torch.ones(1000)}, tmp_path / "t.pth")  # a real torch file, cut short
    data = (tmp_path / "t.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[:len(data) // 2])
    assert run("--model", DEMO, "--src", tmp_path / "t.pth", "--output", tmp_path / "o.ckpt") == 2
    err = _err(capsys)
    assert "corrupt, truncated" in err and "weights_only=False" not in err  # not blamed on Python objects


class Config:  # stands for a training config pickled next to the weights
    lr = 0.1


def test_pth_with_python_objects_is_refused_not_unpickled(ref, demo_refs, tmp_path, capsys):
    import torch
    torch.save({"model": demo_refs[1]["train"][0], "config": Config()}, tmp_path / "w.pth")
    assert run("--model", DEMO, "--src", tmp_path / "w.pth", "--output", tmp_path / "o.ckpt") == 2
    err = _err(capsys)
    assert "Python objects besides tensors" in err and "weights_only=False" in err


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(SystemExit) as e:
        run("--model", DEMO, "--src", tmp_path / "w.npz", "--output", tmp_path / "o.pth")
    assert e.value.code == 2 and "name it o.ckpt or o.safetensors" in _err(capsys)
    with pytest.raises(SystemExit):
        run("--model", DEMO, "--src", tmp_path / "nope.pth", "--output", tmp_path / "o.ckpt")
    assert "does not exist" in _err(capsys)
    with pytest.raises(SystemExit):
        run("--model", "repmlp_x999", "--src", tmp_path / "w.npz", "--output", tmp_path / "o.ckpt")
    err = _err(capsys)
    assert "not a registered model" in err and "repmlp_b256" in err


def test_wrong_model_and_classes_get_a_hint(demo_ms, tmp_path, capsys):
    _, _, official, _, _ = demo_ms
    np.savez(tmp_path / "w.npz", **official)
    assert run("--model", "repmlp_t224", "--src", tmp_path / "w.npz", "--output", tmp_path / "o.ckpt") == 2
    assert f"use --model {DEMO}" in _err(capsys)
    assert run("--model", DEMO, "--src", tmp_path / "w.npz", "--output", tmp_path / "o.ckpt",
               "--num_classes", 5) == 2
    err = _err(capsys)
    assert "has a 10-class classifier but num_classes is 5" in err and "Drop num_classes" in err


def test_mixed_forms_and_foreign_files(demo_ms, tmp_path, capsys):
    form, _, official, _, _ = demo_ms
    mixed = dict(official)
    key = "stages.0.0.repmlp_block.fc3_bn.weight" if form == "deploy" else "stages.0.0.repmlp_block.fc3.bias"
    mixed[key] = np.ones(4, np.float32)
    np.savez(tmp_path / "mixed.npz", **mixed)
    assert run("--model", DEMO, "--src", tmp_path / "mixed.npz", "--output", tmp_path / "o.ckpt") == 2
    assert "mixes train-form keys" in _err(capsys)
    np.savez(tmp_path / "resnet.npz", **{"conv1.weight": np.zeros((8, 3, 7, 7), np.float32),
                                         "bn1.running_mean": np.zeros(8, np.float32)})
    assert run("--model", DEMO, "--src", tmp_path / "resnet.npz", "--output", tmp_path / "o.ckpt") == 2
    assert "not a RepMLPNet checkpoint" in _err(capsys)
