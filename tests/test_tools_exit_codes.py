"""Issue 14, item 18: validate.py and the scripts end through mindcv_ext.cli.run_tool. Bad input found before the
work exits 2 in every tool (the same code train.py uses), Ctrl-C in the middle of a run exits 130 with one line."""
import os
import signal
import subprocess
import sys

import pytest

import mindcv
import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.data import ensure_demo_dataset
from mindcv_ext.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exit_codes")
    data = ensure_demo_dataset(str(tmp / "data"), train_per_class=2, val_per_class=10)
    net = mindcv.create_model("demo_repmlp", num_classes=10)
    names = sorted(os.listdir(os.path.join(data, "val")))
    ckpt = save_weights(net, str(tmp / "train.ckpt"), names)
    corrupt = tmp / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00" * 100)
    return dict(tmp=tmp, data=data, ckpt=ckpt, corrupt=str(corrupt))


def _popen(script, *args, cwd):
    return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the tool did not end")
    return proc.returncode, out, err


@pytest.mark.parametrize("mode", [0, 1], ids=["graph", "pynative"])
@pytest.mark.parametrize("tool", ["validate", "infer"])
def test_ctrl_c_mid_run_exits_130_with_one_line(demo, tmp_path, tool, mode):
    if tool == "validate":
        proc = _popen(os.path.join(ROOT, "validate.py"), "--model", "demo_repmlp", "--data_dir", demo["data"],
                      "--ckpt_path", demo["ckpt"], "--batch_size", 1, "--log_interval", 1, "--mode", mode,
                      "--num_parallel_workers", 1, cwd=tmp_path)
        line, prog = proc.stdout.readline(), "validate.py"
        while line and not line.startswith("["):  # the first progress line: the evaluation is running
            line = proc.stdout.readline()
    else:
        proc = _popen(os.path.join(SCRIPTS, "infer.py"), "--model", "demo_repmlp", "--image_path",
                      os.path.join(demo["data"], "val"), "--ckpt_path", demo["ckpt"], "--batch_size", 1,
                      "--mode", mode, "--num_parallel_workers", 1, "--output", tmp_path / "p.jsonl", cwd=tmp_path)
        line, prog = proc.stdout.readline(), "scripts/infer.py"  # the first prediction
    assert line, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    rc, _, err = _finish(proc, timeout=60)
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"{prog}: interrupted (Ctrl-C)", err[-3000:]
    assert err.count("interrupted") == 1, err[-3000:]


def test_unknown_model_is_2_in_validate_as_in_train(demo, tmp_path):
    procs = [_popen(os.path.join(ROOT, "validate.py"), "--model", "repmlp_x9", "--data_dir", demo["data"],
                    "--ckpt_path", demo["ckpt"], cwd=tmp_path),
             _popen(os.path.join(ROOT, "train.py"), "--model", "repmlp_x9", "--data_dir", demo["data"],
                    "--ckpt_save_dir", tmp_path / "run", cwd=tmp_path)]
    (v_rc, _, v_err), (t_rc, _, t_err) = [_finish(p) for p in procs]
    assert t_rc == 2, t_err[-3000:]
    assert v_rc == t_rc, v_err[-3000:]
    assert v_err.strip().splitlines() == [l for l in v_err.strip().splitlines() if "error:" in l] and \
        "repmlp_x9" in v_err


def test_bad_input_is_2_in_every_script(demo, tmp_path):
    """An unknown model, a missing and a corrupt checkpoint: one error line and 2, from each script."""
    ckpt, corrupt, missing = demo["ckpt"], demo["corrupt"], tmp_path / "missing.ckpt"
    out = tmp_path / "out"
    runs = {
        "reparameterize unknown": ("reparameterize.py", "--model", "repmlp_x9", "--ckpt_path", ckpt, "--output",
                                   f"{out}1.ckpt"),
        "reparameterize missing": ("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", missing,
                                   "--output", f"{out}2.ckpt"),
        "reparameterize corrupt": ("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", corrupt,
                                   "--output", f"{out}3.ckpt"),
        "convert corrupt": ("convert_weights.py", "--model", "demo_repmlp", "--src", corrupt, "--output",
                            f"{out}4.ckpt"),
        "export unknown": ("export.py", "--model", "repmlp_x9", "--ckpt_path", ckpt, "--file_format", "MINDIR",
                           "--output", f"{out}5.mindir"),
        "export corrupt": ("export.py", "--model", "demo_repmlp", "--ckpt_path", corrupt, "--file_format",
                           "MINDIR", "--output", f"{out}6.mindir"),
        "verify unknown": (os.path.join("..", "bench", "verify_reparam.py"), "--models", "repmlp_x9"),
        "infer corrupt": ("infer.py", "--model", "demo_repmlp", "--ckpt_path", corrupt, "--image_path",
                          demo["data"]),
    }
    procs = {k: _popen(os.path.join(SCRIPTS, v[0]), *v[1:], cwd=tmp_path) for k, v in runs.items()}
    for what, proc in procs.items():
        rc, _, err = _finish(proc)
        lines = [l for l in err.strip().splitlines() if "error" in l]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (what, err[-3000:])
    assert sorted(os.listdir(tmp_path)) == []  # nothing written
