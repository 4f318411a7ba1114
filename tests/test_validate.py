"""validate.py: a train-form checkpoint and its deploy form give the same results, which match a direct
evaluation; the form is read from the file; bad input stops with a clear error before any work."""
import json
import os
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import ops

import mindcv
import mindcv_ext
from mindcv_ext.data import create_eval_loader, ensure_demo_dataset
from mindcv_ext.verify import perturb_bn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import validate  # noqa: E402


def _features(net, root, split):
    loader, _ = create_eval_loader(root, split=split, batch_size=100, image_size=64, num_parallel_workers=2)
    feats, labels = [], []
    for x, y in loader.create_tuple_iterator(output_numpy=True):
        f = net.head_norm(net.forward_features(ms.Tensor(x)))
        feats.append(ops.mean(f, (2, 3)).asnumpy())
        labels.append(y)
    return np.concatenate(feats), np.concatenate(labels)


def _fit_head(net, root):
    """Least-squares fit of the classifier on the random network's features: a model whose predictions vary
    from image to image (an untrained RepMLPNet predicts one class for everything, which would make the
    train/deploy comparison meaningless) without minutes of training."""
    feats, labels = _features(net, root, "train")
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    a = np.c_[(feats - mu) / sd, np.ones(len(feats))]
    w = np.linalg.solve(a.T @ a + 0.01 * np.eye(a.shape[1]), a.T @ (np.eye(10)[labels] * 10))
    net.head.weight.set_data(ms.Tensor(((w[:-1] / sd[:, None]).T).astype(np.float32)))
    net.head.bias.set_data(ms.Tensor((w[-1] - (mu / sd) @ w[:-1]).astype(np.float32)))


def _reference(net, root):
    """top-1 / top-5 (%) and mean cross entropy of `net` on root/val, computed here independently."""
    loader, _ = create_eval_loader(root, batch_size=100, image_size=64, num_parallel_workers=2)
    logits, labels = [], []
    for x, y in loader.create_tuple_iterator(output_numpy=True):
        logits.append(net(ms.Tensor(x)).asnumpy().astype(np.float64))
        labels.append(y)
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    loss = float(np.mean(log_z - logits[np.arange(len(labels)), labels]))
    return 100 * np.mean(top5[:, 0] == labels), 100 * np.mean((top5 == labels[:, None]).any(1)), loss, len(labels)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate")
    root = ensure_demo_dataset(str(tmp / "demo"), train_per_class=30, val_per_class=10)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    net = mindcv.create_model("demo_repmlp", num_classes=10)
    perturb_bn(net, 0)  # non-identity BNs: the fusion has real work to do
    net.set_train(False)
    _fit_head(net, root)
    ref = _reference(net, root)
    train_ckpt = mindcv_ext.save_checkpoint(net, str(tmp / "train.ckpt"))
    mindcv_ext.reparameterize(net)
    deploy_ckpt = mindcv_ext.save_checkpoint(net, str(tmp / "deploy.ckpt"))
    # EMA layout as mindcv's TrainOneStepWithEMA saves it: raw weights plus 'ema.'-prefixed copies
    ms.set_seed(1)
    other = mindcv.create_model("demo_repmlp", num_classes=10)
    params = {p.name: p.value() for p in other.get_parameters()}
    params.update({"ema." + k: ms.Tensor(v) for k, v in mindcv_ext.read_weights(train_ckpt).params.items()})
    ema_ckpt = mindcv_ext.save_checkpoint(params, str(tmp / "ema.ckpt"))
    return dict(root=root, ref=ref, train=train_ckpt, deploy=deploy_ckpt, ema=ema_ckpt, tmp=tmp)


def _run(*args):
    cmd = [sys.executable, os.path.join(ROOT, "validate.py"), "--model", "demo_repmlp", "--batch_size", "32",
           "--num_parallel_workers", "2", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])  # the last line is the machine-readable result


def test_train_and_deploy_checkpoints_agree_with_direct_evaluation(setup):
    common = ["--data_dir", setup["root"], "--mode", "0"]
    procs = [_run("--ckpt_path", setup["train"], *common), _run("--ckpt_path", setup["deploy"], *common)]
    train, deploy = [_result(p) for p in procs]
    top1, top5, loss, n = setup["ref"]
    assert top1 > 15  # the fitted head is above chance (10 %): a real model, not a constant prediction
    assert (train["form"], deploy["form"]) == ("train", "deploy")
    for r in (train, deploy):
        assert r["num_samples"] == n == 100
        assert r["top1"] == pytest.approx(top1) and r["top5"] == pytest.approx(top5)
        assert r["loss"] == pytest.approx(loss, rel=1e-4)
        assert (r["image_size"], r["crop_pct"], r["interpolation"], r["model"]) == (64, 0.875, "bilinear",
                                                                                    "demo_repmlp")
    assert set(train) >= {"model", "checkpoint", "form", "top1", "top5", "loss", "num_samples", "crop_pct",
                          "interpolation", "image_size"}


def test_ema_weights_are_the_ones_evaluated(setup, capsys):
    args = ["--model", "demo_repmlp", "--data_dir", setup["root"], "--ckpt_path", setup["ema"], "--mode", "1",
            "--batch_size", "50"]
    assert validate.main(args + ["--ema", "True", "--log_interval", "0"]) == 0
    ema = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ema["top1"] == pytest.approx(setup["ref"][0]) and ema["loss"] == pytest.approx(setup["ref"][2], rel=1e-4)
    assert validate.main(args + ["--log_interval", "0"]) == 0  # the raw (non-EMA) weights give other results
    raw = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert raw["loss"] != pytest.approx(ema["loss"], rel=1e-3)


def _error(capsys, *args, code=2):
    argv = ["--model", "demo_repmlp", *args]
    assert validate.main(argv) == code  # 2: bad input found before the evaluation (command, weights or data)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    return err


def test_errors_before_work(setup, capsys, tmp_path):
    d, train, deploy = setup["root"], setup["train"], setup["deploy"]
    err = _error(capsys, "--data_dir", d, "--ckpt_path", train, "--deploy", "True")
    assert "contradicts" in err and "train-form" in err
    err = _error(capsys, "--data_dir", d, "--ckpt_path", deploy, "--deploy", "False")
    assert "contradicts" in err and "deploy-form" in err
    assert "checkpoint not found" in _error(capsys, "--data_dir", d, "--ckpt_path", str(tmp_path / "no.ckpt"))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"\x00" * 100)
    assert "Cannot read checkpoint" in _error(capsys, "--data_dir", d, "--ckpt_path", str(broken))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert "empty" in _error(capsys, "--data_dir", d, "--ckpt_path", str(empty))
    assert "multiples of 64" in _error(capsys, "--data_dir", d, "--ckpt_path", train, "--image_size", "96")
    assert "10-class classifier" in _error(capsys, "--data_dir", d, "--ckpt_path", train, "--num_classes", "7")
    assert "no EMA weights" in _error(capsys, "--data_dir", d, "--ckpt_path", train, "--ema", "True")
    assert "ImageFolder" in _error(capsys, "--data_dir", d, "--ckpt_path", train, "--split", "test")
    assert "crop_pct" in _error(capsys, "--data_dir", d, "--ckpt_path", train, "--crop_pct", "0")
    assert "interpolation" in _error(capsys, "--data_dir", d, "--ckpt_path", train, "--interpolation", "foo")
    extra = tmp_path / "eleven"  # more class directories than the checkpoint's 10-class head
    for c in range(11):
        os.makedirs(extra / "val" / f"c{c:02d}")
        shutil.copy(os.path.join(d, "val", "00_circle", "00_00000.jpg"), extra / "val" / f"c{c:02d}" / "0.jpg")
    assert "11 class folders" in _error(capsys, "--data_dir", str(extra), "--ckpt_path", train)
    broken_val = tmp_path / "broken_val"  # an undecodable image: refused up front, nothing dumped into the cwd
    shutil.copytree(os.path.join(d, "val"), broken_val / "val")
    victim = broken_val / "val" / "00_circle" / "00_00000.jpg"
    victim.write_bytes(victim.read_bytes()[:300])
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert validate.main(["--model", "demo_repmlp", "--data_dir", str(broken_val), "--ckpt_path", train]) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert "1 unreadable image(s)" in err and str(victim) in err
    assert not [f for f in os.listdir(tmp_path) if f.startswith(("abnormal_image", "unsupported_image"))]
    err = _error(capsys, "--data_dir", d, "--ckpt_path", train, "--model", "repmlp_t224")
    assert "holds demo_repmlp weights, not repmlp_t224" in err
