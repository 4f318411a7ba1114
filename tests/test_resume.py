"""Resuming: a run killed with SIGKILL in the middle of an epoch continues without redoing or losing epochs, and
restore_training_state brings back every piece of training state."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _train_utils import (STEPS_PER_EPOCH, TRAIN, explain, load_np, make_data, metrics, run_train, train_args)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("demo_data"))


def _step_rows(out):
    try:
        return metrics(out, "step")
    except (FileNotFoundError, ValueError):  # not written yet, or a line being written
        return []


def test_sigkill_mid_epoch_then_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["--epoch_size", "3", "--decay_epochs", "3", "--keep_checkpoint_max", "1", "--ema", "True"]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, TRAIN] + train_args(data_dir, out, *args), stdout=log,
                                stderr=subprocess.STDOUT, cwd=str(tmp_path))
        try:
            deadline = time.time() + 300
            # Kill as soon as epoch 2 has logged its first step: epoch 1 is checkpointed, epoch 2 is half done.
            while not any(r["epoch"] == 2 for r in _step_rows(out)):
                assert proc.poll() is None, "training ended before it could be killed:\n" + \
                    (tmp_path / "killed.log").read_text()[-3000:]
                assert time.time() < deadline, "no epoch-2 step within 300 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_rows = metrics(out)
    assert int(load_np(out / "latest.ckpt")["epoch"]) == 1
    assert [r["epoch"] for r in killed_rows if r["kind"] == "epoch"] == [1]
    killed_lr = next(r["lr"] for r in killed_rows if r["kind"] == "step" and r["epoch"] == 2)

    proc = run_train(data_dir, out, *args, "--ckpt_path", out / "latest.ckpt", "--resume_opt", "True")
    assert proc.returncode == 0, explain(proc)
    assert "resumed from" in proc.stdout and "1 epochs done" in proc.stdout
    assert "epoch 1/3 step" not in proc.stdout  # epoch 1 is not redone

    rows = metrics(out)
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2, 3]  # each exactly once
    steps = [(r["epoch"], r["step"]) for r in rows if r["kind"] == "step"]
    assert steps == [(e, s) for e in (1, 2, 3) for s in range(1, STEPS_PER_EPOCH + 1)]
    assert [r for r in rows if r["epoch"] == 1] == [r for r in killed_rows if r["epoch"] == 1]  # kept as they were
    # The resumed epoch 2 starts at the same point of the lr schedule as the killed one did.
    assert next(r["lr"] for r in rows if r["kind"] == "step" and r["epoch"] == 2) == pytest.approx(killed_lr)

    latest = load_np(out / "latest.ckpt")
    assert int(latest["epoch"]) == 3
    assert int(latest["global_step"].reshape(-1)[0]) == 3 * STEPS_PER_EPOCH  # no step lost or repeated
    assert sorted(f for f in os.listdir(out) if f.startswith("demo_repmlp-")) == \
        [f"demo_repmlp-3_{STEPS_PER_EPOCH}.ckpt"]  # keep_checkpoint_max 1

    # Resuming a finished run does nothing and says so.
    again = run_train(data_dir, out, *args, "--ckpt_path", out / "latest.ckpt", "--resume_opt", "True")
    assert again.returncode == 0 and "nothing to train" in again.stdout, explain(again)


def _train_step(ema=True, loss_scale_type="fixed"):
    import mindcv
    from mindcv_ext.training import optim
    from mindcv_ext.training.config import load_config
    from mindcv_ext.training.step import build_train_step

    cfg = load_config(["--config", os.path.join(os.path.dirname(TRAIN), "configs", "repmlp",
                                                "repmlp_demo_cpu.yaml"), "--ema", str(ema), "--num_classes", "4"])
    net = mindcv.create_model(cfg.model, num_classes=4)
    opt = optim.build_optimizer(cfg, net, optim.build_lr_schedule(cfg, 5))
    return build_train_step(cfg, net, optim.build_loss(cfg), opt, optim.build_loss_scale(cfg), 1), net


def test_restore_training_state_brings_everything_back(tmp_path):
    import mindspore as ms

    from mindcv_ext.checkpoint import CheckpointError
    from mindcv_ext.training.ckpt_manager import CheckpointManager, restore_training_state, training_state

    ms.set_context(mode=ms.PYNATIVE_MODE)
    step, net = _train_step()
    rng = np.random.default_rng(0)
    for name, p in training_state(step).items():  # every piece of state gets a distinct value
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(p.asnumpy().dtype)
                             if name != "global_step" else np.array([37], np.int32)))
    saved = {k: p.asnumpy().copy() for k, p in training_state(step).items()}
    assert any(k.startswith("adam_m.") for k in saved) and any(k.startswith("ema.") for k in saved)
    assert {"global_step", "scale_sense", "beta1_power"} <= set(saved)
    manager = CheckpointManager(str(tmp_path), "demo_repmlp", 5, keep_max=2)
    manager.save_epoch(step, epoch=4, best_acc=55.5, periodic=True)
    manager.save_best(net, epoch=4, acc=55.5)

    fresh, fresh_net = _train_step()
    info = restore_training_state(manager.latest_path, fresh, fresh_net, ema=fresh.ema, restore_loss_scale=True)
    assert info["epoch"] == 4 and info["best_acc"] == pytest.approx(55.5) and not info["ema_restarted"]
    restored = {k: p.asnumpy() for k, p in training_state(fresh).items()}
    assert restored.keys() == saved.keys()
    for k in saved:
        np.testing.assert_array_equal(restored[k], saved[k], err_msg=k)

    # A weights-only file cannot be resumed; the error says what to do instead.
    other, other_net = _train_step()
    with pytest.raises(CheckpointError, match=r"weights only.*--resume_opt False"):
        restore_training_state(manager.best_path, other, other_net, ema=other.ema)
    # Resuming with EMA from a run without EMA starts the averages from the restored weights.
    plain, plain_net = _train_step(ema=False)
    manager_plain = CheckpointManager(str(tmp_path / "plain"), "demo_repmlp", 5, keep_max=2)
    manager_plain.save_epoch(plain, epoch=1, best_acc=1.0, periodic=False)
    with_ema, with_ema_net = _train_step(ema=True)
    info = restore_training_state(manager_plain.latest_path, with_ema, with_ema_net, ema=with_ema.ema)
    assert info["ema_restarted"]
    for avg, w in zip(with_ema.ema.averages, with_ema.ema.weights):
        np.testing.assert_array_equal(avg.asnumpy(), w.asnumpy())
