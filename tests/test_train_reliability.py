"""Nothing bad is saved or called good (issue 8): non-finite weights are never written, a resume with another number
of steps per epoch continues the lr schedule, a full disk is one line and leaves nothing behind, one live run per
ckpt_save_dir, SIGTERM says how to continue, and a run that fails its checks leaves no empty directory."""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _train_utils import (ROOT, TRAIN, explain, load_np, make_data, metrics, one_error_line, popen_train,
                          reported_signal, run_train, temp_leftovers, tmpfs, wait_for)
from mindcv_ext import cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("demo_data"))


def _tensors(**arrays):
    import mindspore as ms

    return {k: ms.Tensor(np.asarray(v)) for k, v in arrays.items()}


# ---- save_checkpoint: non-finite values, failed writes, leftovers (in-process, fast) -----------------------------

def test_save_refuses_nonfinite_values_and_keeps_the_previous_file(tmp_path):
    from mindcv_ext.checkpoint import NonFiniteWeightsError, save_checkpoint

    path = tmp_path / "latest.ckpt"
    save_checkpoint(_tensors(w=np.ones(4, np.float32), global_step=np.array([3], np.int32)), path)
    before = path.read_bytes()
    bad = _tensors(w=np.array([1, np.nan, np.inf, 2], np.float32), b=np.zeros(2, np.float32),
                   global_step=np.array([4], np.int32))
    with pytest.raises(NonFiniteWeightsError, match=r"Refusing to write .*latest\.ckpt: 2 NaN/inf value\(s\) in 1 "
                                                    r"tensor\(s\): w \(2\)\. The previous latest\.ckpt"):
        save_checkpoint(bad, path)
    assert path.read_bytes() == before and temp_leftovers(tmp_path) == []


def _left_by_a_killed_run(path) -> None:
    """A temporary file of an earlier, killed run. Names without a pid (older versions) count as stale only when
    older than this process (checkpoint._stale): date it back."""
    path.write_bytes(b"\0" * 100)
    os.utime(path, (time.time() - 3600,) * 2)


def _fail_like_a_full_disk(obj, name, **kwargs):
    # What MindSpore does on ENOSPC: its own `<name minus extension>.tmp` is half written, then the error.
    with open(os.path.splitext(name)[0] + ".tmp", "wb") as f:
        f.write(b"\0" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import mindspore as ms

    from mindcv_ext.checkpoint import CheckpointWriteError, save_checkpoint

    path = tmp_path / "latest.ckpt"
    save_checkpoint(_tensors(w=np.ones(4, np.float32)), path)
    before = path.read_bytes()
    stale = [tmp_path / ".latest.ckpt.ab12cd34.tmp.ckpt", tmp_path / ".latest.ckpt.ab12cd34.tmp.tmp"]
    for leftover in stale:  # what a save killed earlier leaves
        _left_by_a_killed_run(leftover)
    monkeypatch.setattr(ms, "save_checkpoint", _fail_like_a_full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(_tensors(w=np.ones(25600, np.float32)), path)
    message = str(info.value)
    assert "\n" not in message and "no space left" in message and str(tmp_path) in message
    assert "needs about 100.1 KB" in message and " free" in message
    assert path.read_bytes() == before and temp_leftovers(tmp_path) == []  # stale ones went too
    monkeypatch.undo()
    save_checkpoint(_tensors(w=np.zeros(4, np.float32)), path)  # once there is room, it works
    assert temp_leftovers(tmp_path) == []


def test_real_full_disk_with_mindspores_writer(tmp_path):
    import mindspore as ms

    from mindcv_ext.checkpoint import CheckpointWriteError, save_checkpoint

    with tmpfs(tmp_path / "disk", "200k") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs needs root")
        path = tmp_path / "disk" / "latest.ckpt"
        save_checkpoint(_tensors(w=np.ones(1000, np.float32)), path)
        with pytest.raises(CheckpointWriteError, match=r"no space left .*disk \(\d.* free; this checkpoint needs "
                                                       r"about 390\.7 KB"):
            save_checkpoint(_tensors(w=np.ones(100_000, np.float32)), path)
        assert temp_leftovers(tmp_path / "disk") == []  # MindSpore's own .tmp.tmp included
        np.testing.assert_array_equal(ms.load_checkpoint(str(path))["w"].asnumpy(), np.ones(1000, np.float32))


# ---- resume with another number of steps per epoch (in-process) ----------------------------------------------------

def _train_step():
    import mindcv

    from _train_utils import DEMO_RECIPE
    from mindcv_ext.training import optim
    from mindcv_ext.training.config import load_config
    from mindcv_ext.training.step import build_train_step

    cfg = load_config(["--config", DEMO_RECIPE, "--num_classes", "4"])
    net = mindcv.create_model(cfg.model, num_classes=4)
    opt = optim.build_optimizer(cfg, net, optim.build_lr_schedule(cfg, 10))
    return build_train_step(cfg, net, optim.build_loss(cfg), opt, optim.build_loss_scale(cfg), 1)


def test_restore_moves_global_step_to_the_same_epoch(tmp_path):
    import mindspore as ms

    from mindcv_ext.checkpoint import save_checkpoint
    from mindcv_ext.training.ckpt_manager import CheckpointManager, restore_training_state, training_state

    step = _train_step()
    training_state(step)["global_step"].set_data(ms.Tensor(np.array([20], np.int32)))
    CheckpointManager(str(tmp_path), "demo_repmlp", 10, keep_max=1).save_epoch(step, 2, 50.0, periodic=False)
    latest = str(tmp_path / "latest.ckpt")
    assert int(load_np(latest)["steps_per_epoch"]) == 10

    def resumed(spe, path=latest):
        fresh = _train_step()
        info = restore_training_state(path, fresh, fresh.network.network, ema=fresh.ema, steps_per_epoch=spe)
        return info, int(training_state(fresh)["global_step"].asnumpy()[0])

    info, position = resumed(10)
    scalars = info.pop("scalars")  # the file's other scalars (train_seg.py's metadata rides there)
    assert (info, position) == ({"epoch": 2, "best_acc": 50.0, "ema_restarted": False, "moved_step": None}, 20)
    assert scalars.get("steps_per_epoch") == 10
    info, position = resumed(4)  # e.g. a 2.5x larger batch: 2 epochs are 8 steps now
    assert position == 8 and info["moved_step"] == (20, 10, 8)
    # An older checkpoint without steps_per_epoch: the finished epochs decide.
    old = {k: v for k, v in load_np(latest).items() if k != "steps_per_epoch"}
    save_checkpoint({k: ms.Tensor(v) for k, v in old.items()}, tmp_path / "old.ckpt")
    assert resumed(7, str(tmp_path / "old.ckpt"))[1] == 14
    assert resumed(10, str(tmp_path / "old.ckpt"))[0]["moved_step"] is None


# ---- one live run per ckpt_save_dir, output directory checks (in-process + a lock holder) -------------------------

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, b"pid %d (test holder)" % os.getpid())
print("locked", flush=True)
time.sleep(600)
"""


def test_run_lock_refuses_a_live_holder_and_not_a_killed_one(tmp_path):
    from mindcv_ext.config import ConfigError
    from mindcv_ext.training.run_lock import LOCK_NAME, claim_run_dir

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"is in use by another training run \(pid {holder.pid} \(test "
                                              rf"holder\)\).*pick another --ckpt_save_dir"):
            claim_run_dir(str(run))
        # Other ranks of a data-parallel run do not lock; they stop when rank 0 could not claim the directory.
        assert claim_run_dir(str(run), rank=1, group_size=2, agree=lambda flag: flag).lock_fd is None
        with pytest.raises(ConfigError, match="rank 0 could not claim"):
            claim_run_dir(str(run), rank=1, group_size=2, agree=lambda flag: flag + 1)
    finally:
        holder.kill()
        holder.wait()
    _left_by_a_killed_run(run / ".latest.ckpt.x1y2z3w4.tmp.tmp")  # leftovers of a killed run's saves
    (run / "demo_repmlp-3_6.ckpt.link.tmp").write_bytes(b"\0")
    claimed = claim_run_dir(str(run))  # SIGKILLed: the kernel dropped its lock
    assert claimed.lock_fd is not None and temp_leftovers(run) == []
    assert f"pid {os.getpid()}" in (run / LOCK_NAME).read_text()
    assert not claimed.remove_if_unused()  # it existed before this run
    claimed.release()  # a run that ends deletes its lock file
    assert not (run / LOCK_NAME).exists()

    fresh = claim_run_dir(str(tmp_path / "new" / "run"))
    (tmp_path / "new" / "run" / "train.log").write_text("error: ...\n")
    assert fresh.created and fresh.remove_if_unused() and not (tmp_path / "new" / "run").exists()


def test_output_dir_must_be_a_writable_directory(tmp_path):
    from mindcv_ext.config import ConfigError
    from mindcv_ext.training.run_lock import check_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"ckpt_save_dir .*file is a file, not a directory"):
        check_output_dir(str(tmp_path / "file"))
    with pytest.raises(ConfigError, match=r"cannot be created: .*file is a file"):
        check_output_dir(str(tmp_path / "file" / "run"))
    check_output_dir(str(tmp_path / "a" / "b"))  # creatable
    assert not (tmp_path / "a").exists()
    with tmpfs(tmp_path / "ro", "100k") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("no way to make a read-only directory for root")
            (tmp_path / "ro").chmod(0o555)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "ro")], check=True)
        with pytest.raises(ConfigError, match=r"ckpt_save_dir .*ro/run: its parent .*ro is not writable"):
            check_output_dir(str(tmp_path / "ro" / "run"))


# ---- train.py end to end ------------------------------------------------------------------------------------------

def _lr_table(spe, *extra):
    from _train_utils import DEMO_RECIPE
    from mindcv_ext.training import optim
    from mindcv_ext.training.config import load_config

    return optim.build_lr_schedule(load_config(["--config", DEMO_RECIPE, *map(str, extra)]), spe)


def test_resume_with_another_batch_size_full_disk_and_nonfinite_weights(data_dir, tmp_path):
    # A: one epoch at batch 8 (6 steps/epoch). B: resume at batch 16 (3 steps/epoch) for epochs 2-3 on a full disk.
    # C: the same once there is room. D: from A's checkpoint, inputs scaled so BatchNorm's moving variance
    # overflows to inf while the loss stays finite.
    schedule = ["--warmup_epochs", "0", "--decay_epochs", "3"]
    with tmpfs(tmp_path / "disk", "40m") as mounted:
        out = tmp_path / "disk" / "run"
        a = run_train(data_dir, out, *schedule, "--epoch_size", "1")
        assert a.returncode == 0, explain(a)
        assert "compiling the training graph (first step" in a.stdout and "compiled; the first step took" in a.stdout
        assert "validating on 16 images..." in a.stdout
        after_a = load_np(out / "latest.ckpt")
        assert (int(after_a["epoch"]), int(after_a["global_step"][0]), int(after_a["steps_per_epoch"])) == (1, 6, 6)
        shutil.copytree(out, tmp_path / "nan_run")

        resume = [*schedule, "--epoch_size", "3", "--batch_size", "16", "--ckpt_path", out / "latest.ckpt",
                  "--resume_opt", "True"]
        expected = _lr_table(3, "--batch_size", "16", "--epoch_size", "3", *schedule)
        if mounted:
            filler = tmp_path / "disk" / "filler"
            filler.write_bytes(b"\0" * (shutil.disk_usage(str(out)).free - 400_000))  # room for logs and metrics, not for a checkpoint
            b = run_train(data_dir, out, *resume)
            assert b.returncode == 2, explain(b)
            line = one_error_line(b.stderr)
            assert "no space left on the device of " + str(out) in line and "needs about" in line
            assert "continue with: python train.py --config " in line  # the whole command, not just flags
            assert line.endswith(f"--ckpt_path {out / 'latest.ckpt'} --resume_opt True.")
            assert temp_leftovers(out) == []
            assert int(load_np(out / "latest.ckpt")["epoch"]) == 1  # intact
            filler.unlink()
        c = run_train(data_dir, out, *resume)
        assert c.returncode == 0, explain(c)
        assert "optimizer step 6 -> 3" in c.stdout
        rows = metrics(out)
        assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2, 3]
        later = [r for r in rows if r["kind"] == "step" and r["epoch"] > 1]
        assert [(r["epoch"], r["step"]) for r in later] == [(e, s) for e in (2, 3) for s in (1, 2, 3)]
        np.testing.assert_allclose([r["lr"] for r in later], expected[3:9], rtol=1e-6)  # epochs 2-3 of the schedule
        latest = load_np(out / "latest.ckpt")
        assert (int(latest["epoch"]), int(latest["global_step"][0]), int(latest["steps_per_epoch"])) == (3, 9, 3)
        assert temp_leftovers(out) == []

    nan_run = tmp_path / "nan_run"
    d = run_train(data_dir, nan_run, *schedule, "--epoch_size", "2", "--ckpt_path", nan_run / "latest.ckpt",
                  "--resume_opt", "True", "--std", "[1e-25, 1e-25, 1e-25]")
    assert d.returncode == 3, explain(d)
    line = one_error_line(d.stderr)
    assert "weights became non-finite during epoch 2 while the loss stayed finite" in line
    assert "moving_variance" in line and f"last good checkpoint is {nan_run / 'latest.ckpt'} (end of epoch 1)" in line
    for name in ("latest.ckpt", "best.ckpt"):
        saved = load_np(nan_run / name)
        assert int(saved["epoch"]) == 1 and all(np.isfinite(v).all() for v in saved.values()), name
    assert "validating" not in d.stdout and [r["epoch"] for r in metrics(nan_run, "epoch")] == [1]


def _step_rows(out):
    try:
        return metrics(out, "step")
    except (FileNotFoundError, ValueError):  # not written yet, or a line being written
        return []


def test_one_live_run_per_directory_and_sigterm(data_dir, tmp_path):
    out = tmp_path / "run"
    first = popen_train(data_dir, out, "--epoch_size", "50", "--decay_epochs", "50", log_path=tmp_path / "first.log")
    try:
        wait_for(lambda: _step_rows(out), first, what="a first step")
        rows = len(metrics(out))
        # Another run into the same directory. As a resume of a file in that folder it passes the "already holds a
        # run" check whether or not the first run has written latest.ckpt yet, so only the lock can stop it (its
        # checkpoint is read later).
        (out / "other.ckpt").write_bytes(b"\0")
        second = run_train(data_dir, out, "--ckpt_path", out / "other.ckpt", "--resume_opt", "True")
        assert second.returncode == 2, explain(second)
        line = one_error_line(second.stderr)
        assert f"is in use by another training run (pid {first.pid} on " in line
        assert len(metrics(out)) >= rows  # the first run's metrics were not wiped
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    # The killed run left no lock behind: a new run (or the resume) starts; SIGTERM then stops it with the hint.
    resume = ["--ckpt_path", out / "latest.ckpt", "--resume_opt", "True"] if (out / "latest.ckpt").exists() else []
    log = tmp_path / "third.log"
    third = popen_train(data_dir, out, "--epoch_size", "50", "--decay_epochs", "50", *resume, log_path=log)
    try:
        wait_for(lambda: "compiled; the first step took" in log.read_text(), third, what="a training step")
        third.send_signal(signal.SIGTERM)
        third.wait(timeout=120)
    finally:
        third.kill()
        third.wait()
    text = log.read_text()
    # During a graph run a SIGTERM may be reported as the Ctrl-C MindSpore turns into one (see
    # _train_utils.reported_signal); test_train_exits.py has the unambiguous case, a blocked data iterator.
    signum = reported_signal(signal.SIGTERM, third.returncode)
    assert third.returncode == 128 + signum, text[-3000:]
    assert f"error: {cli.signal_line(signum)}; " in text and "Traceback" not in text
    assert not (out / ".train.lock").exists()


def test_refused_runs_leave_no_directory(data_dir, tmp_path):
    out = tmp_path / "run"
    missing = run_train(tmp_path / "no_data", out)  # fails after the directory was claimed
    assert missing.returncode == 2, explain(missing)
    assert "does not exist" in one_error_line(missing.stderr) and not out.exists()

    bare = subprocess.run([sys.executable, TRAIN], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert bare.returncode == 2, explain(bare)
    line = one_error_line(bare.stderr)
    assert "needs a recipe" in line and "repmlp_demo_cpu.yaml" in line and "Ascend" not in line
    assert not (tmp_path / "ckpt").exists()
    assert os.path.isdir(os.path.join(ROOT, "configs", "repmlp"))

    (tmp_path / "a_file").write_text("x")
    file_dir = run_train(data_dir, tmp_path / "a_file")
    assert file_dir.returncode == 2, explain(file_dir)
    assert "a_file is a file, not a directory" in one_error_line(file_dir.stderr)
