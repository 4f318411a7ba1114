"""The output rule (mindcv_ext/outputs.py): a file is never replaced silently. A tool replaces only its own marked
outputs or what the user named with --overwrite True; a run's training state and read-only files never."""
import os
import stat
import subprocess
import sys

import mindcv
import numpy as np
import pytest
from PIL import Image
from test_checkpoints import run_script

from mindcv_ext.checkpoint import CheckpointError, check_output_path, save_checkpoint
from mindcv_ext.outputs import OutputError, OutputNames, check_replace, png_mark, training_state, written_by
from mindcv_ext.weights import read_weights, save_weights


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """A demo_repmlp train checkpoint, and a training-state checkpoint (weights + optimizer moments + step)."""
    d = tmp_path_factory.mktemp("outputs")
    net = mindcv.create_model("demo_repmlp", num_classes=4)
    train = str(d / "train.ckpt")
    save_checkpoint(net, train)
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    state = dict(params, **{"adam_m." + k: np.zeros_like(v) for k, v in params.items()},
                 global_step=np.array([7], np.int32))
    return d, train, state


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors"])
def test_checkpoint_mark_round_trip_and_is_not_a_weight(tmp_path, ext):
    net = mindcv.create_model("demo_repmlp", num_classes=4)
    path = str(tmp_path / f"w{ext}")
    save_weights(net, path, ["a", "b", "c", "d"], tool="reparameterize.py")
    assert written_by(path) == "reparameterize.py"
    w = read_weights(path)  # the mark is metadata: no unexpected key, the weights load strictly
    assert "written_by" not in w.params and w.class_names == ["a", "b", "c", "d"]
    mindcv.create_model("demo_repmlp", num_classes=4, checkpoint_path=path)
    save_weights(net, str(tmp_path / f"plain{ext}"))
    assert written_by(str(tmp_path / f"plain{ext}")) is None


def test_own_output_replaced_others_need_overwrite(tmp_path):
    net = mindcv.create_model("demo_repmlp", num_classes=4)
    ours, theirs = str(tmp_path / "ours.ckpt"), str(tmp_path / "theirs.ckpt")
    save_weights(net, ours, tool="convert_weights.py")
    save_checkpoint(net, theirs)  # e.g. a best.ckpt of a run, or a file the user made
    assert check_replace(ours, "convert_weights.py") == ours
    with pytest.raises(OutputError, match="written by convert_weights.py.*--overwrite True"):
        check_replace(ours, "reparameterize.py")  # another tool's output is not this tool's to replace
    with pytest.raises(OutputError, match="not written by convert_weights.py.*--overwrite True"):
        check_replace(theirs, "convert_weights.py")
    assert check_replace(theirs, "convert_weights.py", overwrite=True) == theirs
    with pytest.raises(OutputError, match="--overwrite True"):  # no tool, no mark: only the user's word
        check_replace(theirs, None)


@pytest.mark.parametrize("name", ["latest.ckpt", "state.ckpt", "demo-3_10.ckpt"])
def test_training_state_refused_even_with_overwrite(nets, tmp_path, name):
    _, _, state = nets
    path = str(tmp_path / name)
    save_checkpoint(state, path)
    if name == "demo-3_10.ckpt":  # a periodic checkpoint of a run folder, known by its name there
        save_checkpoint({"x": np.zeros(2, np.float32)}, str(tmp_path / name))
        open(tmp_path / "metrics.jsonl", "w").close()
    assert training_state(path)
    with pytest.raises(OutputError, match="never written over, even with --overwrite True"):
        check_replace(path, "reparameterize.py", overwrite=True)
    with pytest.raises(CheckpointError, match="never written over"):
        check_output_path(path, suffixes=(".ckpt",), tool="reparameterize.py", overwrite=True)


def test_read_only_and_special_files_refused(tmp_path):
    path = tmp_path / "frozen.png"
    Image.new("L", (2, 2)).save(path, pnginfo=png_mark("predict_seg.py"))
    os.chmod(path, stat.S_IRUSR)
    with pytest.raises(OutputError, match="read-only"):
        check_replace(str(path), "predict_seg.py", overwrite=True)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        check_replace(str(fifo), "predict_seg.py", overwrite=True)


def test_png_mark_and_collisions(tmp_path):
    mine, users = tmp_path / "a_mask.png", tmp_path / "b_mask.png"
    Image.new("L", (2, 2)).save(mine, pnginfo=png_mark("predict_seg.py"))
    Image.new("L", (2, 2)).save(users)
    names = OutputNames("predict_seg.py", what="mask")
    names.claim(str(mine), "a.png")
    with pytest.raises(OutputError, match="a.png and a.jpg would both write"):
        names.claim(str(mine), "a.jpg")
    with pytest.raises(OutputError, match="b_mask.png exists .not written by predict_seg.py.*--overwrite True"):
        names.claim(str(users), "b.png")
    assert OutputNames("predict_seg.py", overwrite=True).claim(str(users), "b.png") == str(users)


def test_reparameterize_refuses_latest_and_foreign_files_in_one_line(nets, tmp_path):
    """Issue 18 item 2: --output run/latest.ckpt destroyed the run's training state; an existing file of anyone
    was replaced without a word. Now: one line, exit 2, the file unchanged."""
    _, train, state = nets
    run = tmp_path / "run"
    run.mkdir()
    latest = str(run / "latest.ckpt")
    save_checkpoint(state, latest)
    before = open(latest, "rb").read()
    for extra in ([], ["--overwrite", "True"]):
        r = run_script("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", train, "--output", latest,
                       *extra)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "training state" in r.stderr, r.stderr
    assert open(latest, "rb").read() == before
    theirs = str(tmp_path / "theirs.ckpt")
    save_checkpoint({"x": np.ones(3, np.float32)}, theirs)
    r = run_script("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", train, "--output", theirs)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--overwrite True" in r.stderr, r.stderr
    out = str(tmp_path / "deploy.ckpt")
    for _ in range(2):  # its own output: a re-run replaces it
        r = run_script("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", train, "--output", out)
        assert r.returncode == 0, r.stderr
    r = run_script("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", train, "--output", theirs,
                   "--overwrite", "True")
    assert r.returncode == 0 and read_weights(theirs).form == "deploy", r.stderr


def test_reparameterize_bad_output_one_line_no_usage(nets, tmp_path):
    _, train, _ = nets
    (tmp_path / "f").write_text("x")
    r = run_script("reparameterize.py", "--model", "demo_repmlp", "--ckpt_path", train, "--output",
                   str(tmp_path / "f" / "sub.ckpt"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "usage" not in r.stderr, r.stderr


def test_convert_weights_refuses_periodic_checkpoint_of_a_run(nets, tmp_path):
    _, train, state = nets
    run = tmp_path / "run"
    run.mkdir()
    periodic = str(run / "demo_repmlp-2_5.ckpt")
    save_checkpoint(state, periodic)
    r = run_script("convert_weights.py", "--model", "demo_repmlp", "--src", train, "--output", periodic,
                   "--overwrite", "True")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "never written over" in r.stderr, r.stderr


def test_later_save_removes_killed_saves_leftovers_of_other_names(tmp_path):
    """Issue 18 item 12: a killed reparameterize left `.name.PID-xxxx.tmp*` that only a run to the same name
    removed."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".deploy.ckpt.{int(dead.stdout)}-abcdEFGH.tmp.ckpt"
    leftover.write_bytes(b"partial")
    save_checkpoint({"x": np.ones(2, np.float32)}, str(tmp_path / "other.ckpt"))
    assert not leftover.exists()


def test_reparameterize_disk_full_is_one_line_exit_2(nets, tmp_path, monkeypatch, capsys):
    """Issue 18 item 12: a full disk exited 1; the output place is bad input in the table (2), and nothing changed."""
    import errno

    import mindspore as ms
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    try:
        import reparameterize
    finally:
        sys.path.pop(0)
    _, train, _ = nets

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full)
    out = tmp_path / "deploy.ckpt"
    assert reparameterize.main(["--model", "demo_repmlp", "--ckpt_path", train, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err and not os.listdir(tmp_path), err
