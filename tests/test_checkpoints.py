"""Checkpoints: round trips in both forms and formats, the deploy script, strict loading, atomic writes,
pretrained loading through mindcv's downloader."""
import os
import subprocess
import sys

import mindcv
import mindspore as ms
import numpy as np
import pytest
from conftest import ROOT, images, randomize, rel_err

import mindcv_ext
from mindcv_ext.checkpoint import CheckpointError


def raw(path):
    """The file's entries as MindSpore reads them, without the project's checks (to build damaged variants)."""
    return ms.load_checkpoint(str(path))


def run_script(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", args[0]), *args[1:]],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A demo_repmlp train checkpoint with non-trivial BN statistics, and its logits on a fixed batch."""
    d = tmp_path_factory.mktemp("ckpt")
    net = randomize(mindcv.create_model("demo_repmlp", num_classes=6), seed=5)
    net.set_train(False)
    x = images(4, (64, 64), seed=11)
    path = str(d / "train.ckpt")
    mindcv_ext.save_checkpoint(net, path)
    return d, path, x, net(x).asnumpy()


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors"])
def test_deploy_checkpoint_via_script_gives_train_logits(trained, ext, ms_mode):
    d, train_path, x, want = trained
    out = str(d / f"deploy{ext}")
    r = run_script("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", train_path, "--output", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.path.exists(out) and not [f for f in os.listdir(d) if ".tmp" in f]
    net = mindcv.create_model("demo_repmlp", num_classes=6, deploy=True, checkpoint_path=out)
    net.set_train(False)
    assert rel_err(net(x).asnumpy(), want) <= 1e-5
    assert mindcv_ext.read_weights(out).form == "deploy"


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors"])
def test_train_checkpoint_round_trip(trained, tmp_path, ext):
    _, train_path, x, want = trained
    again = str(tmp_path / f"again{ext}")
    mindcv_ext.save_checkpoint(mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=train_path), again)
    net = mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=again)
    net.set_train(False)
    np.testing.assert_array_equal(net(x).asnumpy(), want)


def test_wrong_form_errors_name_the_form_and_the_fix(trained, tmp_path):
    _, train_path, _, _ = trained
    with pytest.raises(CheckpointError, match=r"train-form.*scripts/reparameterize.py --model demo_repmlp"):
        mindcv.create_model("demo_repmlp", num_classes=6, deploy=True, checkpoint_path=train_path)
    deploy_path = str(tmp_path / "d.ckpt")
    net = mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=train_path)
    mindcv_ext.save_checkpoint(mindcv_ext.reparameterize(net), deploy_path)
    with pytest.raises(CheckpointError, match=r"deploy-form.*deploy=True"):
        mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=deploy_path)
    r = run_script("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", deploy_path, "--output",
                   str(tmp_path / "x.ckpt"))
    assert r.returncode != 0 and "already a deploy-form" in r.stdout + r.stderr
    assert not os.path.exists(tmp_path / "x.ckpt")


def test_strict_loading_errors(trained, tmp_path):
    _, train_path, _, _ = trained
    with pytest.raises(FileNotFoundError, match="not found"):
        mindcv.create_model("demo_repmlp", checkpoint_path=str(tmp_path / "missing.ckpt"))
    r = run_script("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", str(tmp_path / "missing.ckpt"),
                   "--output", str(tmp_path / "o.ckpt"))
    assert r.returncode != 0 and "not found" in r.stdout + r.stderr
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(open(train_path, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="Cannot read checkpoint"):
        mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=str(corrupt))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        mindcv_ext.read_weights(str(tmp_path / "empty.ckpt"))
    with pytest.raises(CheckpointError, match=r"wrong shape.*head.weight"):
        mindcv.create_model("demo_repmlp", num_classes=10, checkpoint_path=train_path)
    with pytest.raises(CheckpointError, match=r"shapes are those of demo_repmlp: build that model instead"):
        mindcv.create_model("repmlp_t224", num_classes=6, checkpoint_path=train_path)

    params = raw(train_path)
    del params["stages.1.0.prebn1.gamma"]
    params["features.0.weight"] = params["head.bias"]
    partial = str(tmp_path / "partial.ckpt")
    mindcv_ext.save_checkpoint(params, partial)
    with pytest.raises(CheckpointError, match=r"1 missing: stages.1.0.prebn1.gamma.*1 unexpected: features.0"):
        mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=partial)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=train_path, ema=True)


def test_training_state_and_mindcv_extras_are_accepted(trained, tmp_path):
    _, train_path, x, want = trained
    params = raw(train_path)
    extra = dict(params)
    extra["conv2d.weight"] = ms.Tensor(np.zeros((16, 3, 4, 4), np.float32))  # mindcv's unused stem conv
    extra["conv2d.bias"] = ms.Tensor(np.zeros((16,), np.float32))
    extra["adam_m.head.weight"] = params["head.weight"]
    extra["global_step"] = ms.Tensor(np.array([3], np.int32))
    # EMA weights differ from the raw ones; ema=True must pick them.
    for k, v in params.items():
        extra["ema." + k] = ms.Tensor(v.asnumpy() * 0.5) if k == "head.weight" else v
    path = str(tmp_path / "with_state.ckpt")
    mindcv_ext.save_checkpoint(extra, path)
    net = mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=path)
    net.set_train(False)
    np.testing.assert_array_equal(net(x).asnumpy(), want)
    ema = mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=path, ema=True)
    np.testing.assert_array_equal(ema.head.weight.asnumpy(), params["head.weight"].asnumpy() * 0.5)


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "model.ckpt")
    net = mindcv.create_model("demo_repmlp")
    mindcv_ext.save_checkpoint(net, path)
    before = open(path, "rb").read()

    def crash(save_list, name, **kwargs):
        open(name, "wb").write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        mindcv_ext.save_checkpoint(net, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["model.ckpt"]


def test_pretrained_uses_mindcv_url_and_loader(tmp_path, monkeypatch):
    """pretrained=True fetches mindcv's published URL into mindcv's cache folder; the download is served from a
    local file in mindcv's released layout (with its unused conv2d.* keys)."""
    published = randomize(mindcv.create_model("repmlp_t224"), seed=2)
    params = {p.name: p for p in published.get_parameters()}
    params["conv2d.weight"] = ms.Tensor(np.zeros((64, 3, 4, 4), np.float32))
    params["conv2d.bias"] = ms.Tensor(np.zeros((64,), np.float32))
    src = str(tmp_path / "repmlp_t224-8dbedd00.ckpt")
    mindcv_ext.save_checkpoint(params, src)
    urls = []

    def fake_open(url, timeout):
        urls.append(url)
        return open(src, "rb"), os.path.getsize(src)

    monkeypatch.setattr("mindcv_ext.weights._open_url", fake_open)
    monkeypatch.setattr("mindcv.models.helpers.get_default_download_root", lambda: str(tmp_path / "cache"))
    net = mindcv.create_model("repmlp_t224", pretrained=True)
    assert urls == ["https://download.mindspore.cn/toolkits/mindcv/repmlp/repmlp_t224-8dbedd00.ckpt"]
    np.testing.assert_array_equal(net.head.weight.asnumpy(), published.head.weight.asnumpy())
    # mindcv's weights were trained with the tanh GELU; pretrained picks it unless told otherwise.
    assert net.stages[0][0].ffn_block.act.approximate in (True, "tanh")
    ten = mindcv.create_model("repmlp_t224", pretrained=True, num_classes=10)  # fine-tuning: new head
    assert ten.head.weight.shape == (10, 512)
    np.testing.assert_array_equal(ten.stages[3][1].repmlp_block.fc3.weight.asnumpy(),
                                  published.stages[3][1].repmlp_block.fc3.weight.asnumpy())
    feat = mindcv.create_model("repmlp_t224", pretrained=True, features_only=True)
    np.testing.assert_array_equal(feat.stages[3][1].repmlp_block.fc3.weight.asnumpy(),
                                  published.stages[3][1].repmlp_block.fc3.weight.asnumpy())
    with pytest.raises(ValueError, match="No published MindSpore weights"):
        mindcv.create_model("repmlp_b224", pretrained=True)


def test_classification_checkpoint_loads_into_features_only(trained, ms_mode):
    _, train_path, x, _ = trained
    full = mindcv.create_model("demo_repmlp", num_classes=6, checkpoint_path=train_path)
    feat = mindcv.create_model("demo_repmlp", features_only=True, out_indices=[1, 3], checkpoint_path=train_path)
    full.set_train(False)
    feat.set_train(False)
    want = full.forward_stages(x)
    got = feat(x)
    np.testing.assert_array_equal(got[0].asnumpy(), want[1].asnumpy())
    np.testing.assert_array_equal(got[1].asnumpy(), want[3].asnumpy())
    params = raw(train_path)
    del params["stages.2.1.prebn2.beta"]
    partial = os.path.join(os.path.dirname(train_path), "partial_backbone.ckpt")
    mindcv_ext.save_checkpoint(params, partial)
    with pytest.raises(CheckpointError, match="stages.2.1.prebn2.beta"):  # only the head may be absent/ignored
        mindcv.create_model("demo_repmlp", features_only=True, checkpoint_path=partial)
