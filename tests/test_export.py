"""scripts/export.py (MINDIR / ONNX of the deploy form).

The export tests run the scripts as a user would (subprocesses) and check the written files independently of the
scripts' own checks. Nothing here asserts on speed.
"""
import json
import math
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
import mindcv

from conftest import ROOT, randomize

import mindcv_ext

SCRIPTS = os.path.join(ROOT, "scripts")


def run_script(name, *args, cwd):
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    """A demo_repmlp train-form checkpoint with non-trivial BN statistics (10 classes)."""
    path = tmp_path_factory.mktemp("ckpt") / "demo_train.ckpt"
    net = randomize(mindcv.create_model("demo_repmlp", num_classes=10), seed=3)
    mindcv_ext.save_checkpoint(net, str(path))
    return str(path)


def deploy_cell_logits(ckpt, x):
    """Reference: the checkpoint loaded into the train form, re-parameterized, in eval mode (PyNative)."""
    net = mindcv.create_model("demo_repmlp", num_classes=10, checkpoint_path=ckpt)
    net.set_train(False)
    mindcv_ext.reparameterize(net)
    return net(ms.Tensor(x)).asnumpy()


def assert_deploy_file(path):
    """The file holds the deploy form: fc3 biases, no conv branches or fc3 BN (names are stored in the file)."""
    data = open(path, "rb").read()
    assert b"fc3.bias" in data and b"repconv" not in data and b"fc3_bn" not in data


def images(n, seed=5):
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


def test_mindir_from_train_checkpoint_matches_deploy_cell(train_ckpt, tmp_path):
    out_dir = tmp_path / "out"
    rc, log = run_script("export.py", "--model", "demo_repmlp", "--ckpt_path", train_ckpt, "--file_format", "MINDIR",
                         "--output", out_dir / "demo", "--batch_size", 2, cwd=tmp_path)
    assert rc == 0, log
    assert "MINDIR file vs network" in log and "deploy form vs train form" in log
    path = out_dir / "demo.mindir"  # extension added, as mindspore.export would
    assert sorted(os.listdir(out_dir)) == ["demo.mindir"]  # no temporary leftovers
    assert_deploy_file(path)

    x = images(2)
    got = ms.nn.GraphCell(ms.load(str(path)))(ms.Tensor(x)).asnumpy()
    ref = deploy_cell_logits(train_ckpt, x)
    assert got.shape == (2, 10)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_onnx_matches_deploy_cell_and_leaves_directory_alone(train_ckpt, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (optional 'onnx' extra)")
    out_dir = tmp_path / "onnx_out"
    out_dir.mkdir(mode=0o755)
    os.chmod(out_dir, 0o755)
    rc, log = run_script("export.py", "--model", "demo_repmlp", "--ckpt_path", train_ckpt, "--file_format", "onnx",
                         "--output", out_dir / "demo.onnx", "--batch_size", 2, cwd=tmp_path)
    assert rc == 0, log
    # mindspore.export chmods an ONNX file's directory to 0o700; the script must not let it touch ours.
    assert stat.S_IMODE(os.stat(out_dir).st_mode) == 0o755
    assert sorted(os.listdir(out_dir)) == ["demo.onnx"]
    assert_deploy_file(out_dir / "demo.onnx")

    x = images(2, seed=6)
    session = ort.InferenceSession(str(out_dir / "demo.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    ref = deploy_cell_logits(train_ckpt, x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_failed_check_writes_nothing(train_ckpt, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (optional 'onnx' extra)")
    # The ONNX file's GELU differs from the network's by ~1e-7 relative: an impossible tolerance must fail.
    rc, log = run_script("export.py", "--model", "demo_repmlp", "--ckpt_path", train_ckpt, "--file_format", "ONNX",
                         "--output", tmp_path / "x.onnx", "--tolerance", 1e-15, cwd=tmp_path)
    assert rc == 1, log  # found by the work itself: not bad input
    assert "differs beyond the tolerance" in log
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["--ckpt_path", "missing.ckpt"], "checkpoint not found"),
    ([], "--random_init True"),
    (["--ckpt_path", "bad.ckpt"], "Cannot read checkpoint"),
], ids=["missing-checkpoint", "no-checkpoint-without-random-init", "corrupt-checkpoint"])
def test_export_errors(tmp_path, args, message):
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    rc, log = run_script("export.py", "--model", "demo_repmlp", "--file_format", "MINDIR", "--output", "o.mindir",
                         *args, cwd=tmp_path)
    assert rc == 2, log
    assert message in log
    assert sorted(os.listdir(tmp_path)) == ["bad.ckpt"]


def test_export_wrong_model_names_the_right_one(train_ckpt, tmp_path):
    rc, log = run_script("export.py", "--model", "repmlp_t224", "--ckpt_path", train_ckpt, "--file_format", "MINDIR",
                         cwd=tmp_path)
    assert rc == 2, log
    assert "holds demo_repmlp weights, not repmlp_t224: use --model demo_repmlp" in log
    assert os.listdir(tmp_path) == []


def test_erf_free_gelu_is_exact_gelu(monkeypatch):
    monkeypatch.syspath_prepend(SCRIPTS)
    from _onnx_ops import ErfFreeGELU

    x = np.linspace(-9, 9, 20001).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    got = ErfFreeGELU()(ms.Tensor(x)).asnumpy()
    assert np.abs(got - exact).max() < 2e-6
