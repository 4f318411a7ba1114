"""scripts/export.py (MINDIR / ONNX of the deploy form).

The export tests run the scripts as a user would (subprocesses) and check the written files independently of the
scripts' own checks. Nothing here asserts on speed.
"""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
import mindcv

from conftest import ROOT, randomize, run_without_mindspore

import mindcv_ext
from mindcv_ext.seg.model import create_seg_model

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


# ------------------------------------------------------------- the deploy graph (issue 19 item 1)

def image_like(n, size=64, seed=7):
    """Inputs shaped like normalized photos (smooth, offset, not zero-mean): a check on N(0, 1) noise alone
    can miss a folding error that only shows with real statistics."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (n, 3, 8, 8)).repeat(size // 8, 2).repeat(size // 8, 3)
    mean = np.array([123.7, 116.3, 103.5]).reshape(1, 3, 1, 1)
    return ((base + rng.normal(0, 20, base.shape) - mean) / 58.0).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_file(train_ckpt, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (optional 'onnx' extra)")
    out = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    rc, log = run_script("export.py", "--model", "demo_repmlp", "--ckpt_path", train_ckpt, "--file_format", "ONNX",
                         "--output", out, "--batch_size", 2, cwd=out.parent)
    assert rc == 0, log
    return out, log


def test_onnx_graph_is_what_ort_and_its_quantizer_expect(onnx_file, train_ckpt):
    """Opset >= 13, no BatchNormalization, one Gelu node per FFN (5 in demo_repmlp) instead of the Where/Abs/Exp
    chain, every weight an initializer feeding its node, no activation-size constants: the file holds the deploy
    parameters and little else."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    path, log = onnx_file
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13
    for op in ("BatchNormalization", "Where", "Abs", "Exp", "Erf", "Softsign", "Softplus"):
        assert op not in ops, op
    assert ops.count("Gelu") == 5
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm"):
            assert n.input[1] in inits, f"{n.name}: weight reaches it through another node"
    # Initializers = the deploy network's parameters (+ scalars / shape vectors), nothing activation-sized.
    deploy = mindcv.create_model("demo_repmlp", num_classes=10, deploy=True)
    params = sum(int(np.prod(p.shape)) for p in deploy.get_parameters())
    bn_stats = sum(int(np.prod(p.shape)) for p in deploy.get_parameters() if "moving_" in p.name)
    stored = sum(a.size for a in inits.values())
    assert stored <= params - bn_stats + 1000, (stored, params)
    assert os.path.getsize(path) < 1.1 * 4 * stored
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model"] == "demo_repmlp" and meta["written_by"] == "mindcv_ext export.py"
    assert json.loads(meta["input_shape"]) == [2, 3, 64, 64]
    # ORT keeps one Gelu kernel per FFN.
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(path.parent / "ort_opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert fused.count("Gelu") == 5 and "Erf" not in fused
    # Logits on image-like inputs against the train-form network re-parameterized (independent of the script).
    x = image_like(2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    ref = deploy_cell_logits(train_ckpt, x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert "deprecated" not in log and "will be deleted" not in log  # MindSpore's warnings stay out of the output


def test_existing_output_replaced_only_if_export_wrote_it(onnx_file, tmp_path):
    path, _ = onnx_file
    foreign = tmp_path / "mine.onnx"
    foreign.write_bytes(b"somebody's file")
    args = ("--model", "demo_repmlp", "--random_init", True, "--file_format", "ONNX", "--check", False)
    rc, log = run_script("export.py", *args, "--output", foreign, cwd=tmp_path)
    assert rc == 2 and "--overwrite True" in log and foreign.read_bytes() == b"somebody's file", log
    own = tmp_path / "own.onnx"
    own.write_bytes(path.read_bytes())  # export.py's mark is in the file
    rc, log = run_script("export.py", *args, "--output", own, cwd=tmp_path)
    assert rc == 0, log
    rc, log = run_script("export.py", *args, "--output", foreign, "--overwrite", True, cwd=tmp_path)
    assert rc == 0 and foreign.read_bytes()[:4] != b"some", log


def test_export_removes_every_dead_runs_temporaries_in_its_folder(tmp_path):
    """A killed export of another name leaves `.other.onnx.<pid>-XXXXXXXX.tmp`: the next export to the folder
    removes it, whatever it was for; a live process's temporary stays."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = tmp_path / f".other.onnx.{ended.pid}-abcdEFGH.tmp"
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"\0" * 100)
    live = tmp_path / f".third.ckpt.{os.getpid()}-ijklMNOP.tmp.ckpt"
    live.write_bytes(b"partial")
    rc, log = run_script("export.py", "--model", "demo_repmlp", "--random_init", True, "--file_format", "MINDIR",
                         "--output", tmp_path / "x.mindir", cwd=tmp_path)
    assert rc == 0, log
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "x.mindir"])


@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_segmentation_checkpoint_exports_at_twice_the_native_size(head, tmp_path):
    """A train_seg.py checkpoint (train form, non-trivial BN stats) is recognised from its keys; ONNX and MINDIR at
    128 = 2 x demo_repmlp's 64 match the re-parameterized SegModel on image-like inputs. Without --image_size the
    file takes the training crop the checkpoint records (64 x 128 here: the checkpoint's own default window)."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (optional 'onnx' extra)")
    from mindcv_ext.checkpoint import save_checkpoint
    from mindcv_ext.seg.model import load_seg_checkpoint, seg_metadata

    ms.set_seed(1)  # a fixed network: its masks of the test images hold several classes (compared below)
    model, _ = create_seg_model("demo_repmlp", head=head, num_classes=5, channels=8, aux=True, aux_channels=8)
    randomize(model, seed=4)
    ckpt = str(tmp_path / "seg.ckpt")
    save_checkpoint(model, ckpt, append_dict=seg_metadata(False, (64, 128)))
    ref_net, _, _ = load_seg_checkpoint(ckpt)
    ref_net.set_train(False)
    mindcv_ext.reparameterize(ref_net)
    x = image_like(1, size=128, seed=8)
    ref = ref_net(ms.Tensor(x)).asnumpy()
    assert ref.shape == (1, 5, 128, 128)
    crop_x = np.ascontiguousarray(x[:, :, :64])
    crop_ref = ref_net(ms.Tensor(crop_x)).asnumpy()
    # upernet: ONNX at the recorded crop (no --image_size), MINDIR at 128; fpn: ONNX with --image_size 128
    exports = (("ONNX", "seg.onnx", ()), ("MINDIR", "seg.mindir", ("--image_size", 128))) if head == "upernet" \
        else (("ONNX", "seg.onnx", ("--image_size", 128)),)
    for fmt, name, size in exports:
        rc, log = run_script("export.py", "--ckpt_path", ckpt, "--file_format", fmt, *size,
                             "--output", tmp_path / name, cwd=tmp_path)
        assert rc == 0, log
        assert "segmentation checkpoint" in log and "segmentation logits" in log
        assert ("input 64x128: the training crop" in log) == (not size), log
        inp, want = (x, ref) if size else (crop_x, crop_ref)
        if fmt == "ONNX":
            session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: inp})[0]
        else:
            got = ms.nn.GraphCell(ms.load(str(tmp_path / name)))(ms.Tensor(inp)).asnumpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), fmt
    if head == "fpn":
        return
    # predict_seg.py runs the ONNX file (sliding windows of its 64x128 input) like the checkpoint (its default
    # window: the recorded crop), with no window given to either.
    from PIL import Image
    pics = tmp_path / "pics"
    pics.mkdir()
    rng = np.random.default_rng(2)
    for i, (h, w) in enumerate([(128, 128), (150, 200)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(pics / f"im{i}.png")
    for src in ("seg.ckpt", "seg.onnx"):  # the .onnx file as on a machine without MindSpore
        args = ("--ckpt_path", tmp_path / src, "--image_path", pics, "--output", tmp_path / f"masks_{src}",
                "--eval_mode", "slide")
        if src == "seg.ckpt":
            rc, log = run_script("predict_seg.py", *args, cwd=tmp_path)
        else:
            rc, out, err = run_without_mindspore(os.path.join(SCRIPTS, "predict_seg.py"), *args, cwd=tmp_path)
            log = out + err
        assert rc == 0, log
    for i in range(2):
        a = np.array(Image.open(tmp_path / "masks_seg.ckpt" / f"im{i}_mask.png"))
        b = np.array(Image.open(tmp_path / "masks_seg.onnx" / f"im{i}_mask.png"))
        assert a.shape == b.shape and (a == b).mean() > 0.999 and len(np.unique(a)) > 1
    rc, log = run_script("predict_seg.py", "--ckpt_path", tmp_path / "seg.onnx", "--image_path", pics, cwd=tmp_path)
    assert rc == 2 and "--eval_mode slide" in log, log
    rc, log = run_script("export.py", "--ckpt_path", ckpt, "--file_format", "ONNX", "--image_size", 96,
                         "--output", tmp_path / "bad.onnx", cwd=tmp_path)
    assert rc == 2 and "not a multiple of demo_repmlp's native size 64" in log, log
    odd = str(tmp_path / "odd_crop.ckpt")  # a recorded crop the encoder cannot take: one line, before any work
    save_checkpoint(model, odd, append_dict=seg_metadata(False, (64, 96)))
    rc, log = run_script("export.py", "--ckpt_path", odd, "--file_format", "ONNX", "--output", tmp_path / "bad.onnx",
                         cwd=tmp_path)
    assert rc == 2 and "records the training crop 64x96, not a multiple" in log and "--image_size N" in log, log
    assert not (tmp_path / "bad.onnx").exists()
