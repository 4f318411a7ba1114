"""train.py end to end on CPU in graph mode with demo_repmlp, plus the EMA cell on its own."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from _train_utils import (STEPS_PER_EPOCH, explain, load_np, make_data, metrics, model_keys, run_train)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("demo_data"))


def test_graph_mode_training_with_ema(data_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_train(data_dir, out, "--ema", "True", "--ema_decay", "0.999", "--keep_checkpoint_max", "2",
                     "--clip_grad", "True", "--clip_value", "5.0")
    assert proc.returncode == 0, explain(proc)

    # Every epoch logged once, with validation; step rows carry loss, lr and speed.
    epochs = metrics(out, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0.0 <= r["val_top1"] <= 100.0 and r["val_top1"] <= r["val_top5"] for r in epochs)
    steps = metrics(out, "step")
    assert [(r["epoch"], r["step"]) for r in steps] == [(e, s) for e in (1, 2) for s in range(1, STEPS_PER_EPOCH + 1)]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 and r["img_s"] >= 0 for r in steps)
    assert "val top-1" in proc.stdout and "img/s" in proc.stdout and "ETA" in proc.stdout

    # latest.ckpt holds the full state after 2 epochs; one periodic checkpoint per epoch.
    latest = load_np(out / "latest.ckpt")
    assert int(latest["epoch"]) == 2
    assert int(latest["global_step"].reshape(-1)[0]) == 2 * STEPS_PER_EPOCH
    periodic = sorted(f for f in os.listdir(out) if f.startswith("demo_repmlp-"))
    assert periodic == [f"demo_repmlp-{e}_{STEPS_PER_EPOCH}.ckpt" for e in (1, 2)]

    # EMA: averages are kept for every model parameter and differ from the raw weights; best.ckpt holds the
    # averages of the best epoch (the weights validation scored), not the raw weights.
    keys = model_keys(latest)
    assert keys and all("ema." + k in latest for k in keys)
    assert any(not np.array_equal(latest[k], latest["ema." + k]) for k in keys)
    best = load_np(out / "best.ckpt")
    best_epoch = max(epochs, key=lambda r: (r["val_top1"], -r["epoch"]))["epoch"]
    assert int(best["epoch"]) == best_epoch
    assert float(best["best_acc"]) == pytest.approx(max(r["val_top1"] for r in epochs), abs=1e-4)
    assert sorted(k for k in best if k not in ("epoch", "best_acc")) == keys  # weights only
    at_best = load_np(out / f"demo_repmlp-{best_epoch}_{STEPS_PER_EPOCH}.ckpt")
    assert all(np.array_equal(best[k], at_best["ema." + k]) for k in keys)
    assert any(not np.array_equal(best[k], at_best[k]) for k in keys)

    with Image.open(out / "curves.png") as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100
    assert "val top-1" in (out / "train.log").read_text()


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    # Epoch 1 trains normally; from epoch 2 the lr is multiplied by 1e35 and the weights blow up.
    out = tmp_path / "run"
    proc = run_train(data_dir, out, "--opt", "momentum", "--lr", "0.01", "--weight_decay", "0",
                     "--scheduler", "multi_step_decay", "--multi_step_decay_milestones", "[1]",
                     "--decay_rate", "1e35", "--epoch_size", "3")
    assert proc.returncode == 3, explain(proc)
    assert "Loss became" in proc.stderr and "at epoch 2" in proc.stderr
    assert "last good checkpoint is" in proc.stderr and "(end of epoch 1)" in proc.stderr
    latest = load_np(out / "latest.ckpt")
    assert int(latest["epoch"]) == 1
    assert all(np.isfinite(v).all() for v in latest.values())
    assert [r["epoch"] for r in metrics(out, "epoch")] == [1]
    assert not any(f.startswith("demo_repmlp-2_") for f in os.listdir(out))
    assert "Loss became" in (out / "train.log").read_text()


def test_fresh_run_refuses_to_overwrite_a_run(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "latest.ckpt").write_bytes(b"x")
    proc = run_train(data_dir, out)
    assert proc.returncode == 2, explain(proc)
    assert "already holds a run" in proc.stderr and "--resume_opt True" in proc.stderr


def test_ema_cell_update_and_swap():
    import mindspore as ms
    from mindspore import nn

    from mindcv_ext.training.ema import EMA

    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = nn.Dense(3, 2)
    ema = EMA(net, decay=0.9)
    start = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    assert sorted(p.name for p in ema.averages) == sorted("ema." + k for k in start)

    new = {k: v + 1.0 for k, v in start.items()}
    for p in net.get_parameters():
        p.set_data(ms.Tensor(new[p.name]))
    updates = 500
    ema(ms.Tensor([updates], ms.int32))
    d = 0.9 * (1.0 - math.exp(-updates / 2000.0))  # mindcv's warmed-up decay
    averages = {p.name[len("ema."):]: p.asnumpy() for p in ema.averages}
    for k in start:
        np.testing.assert_allclose(averages[k], d * start[k] + (1 - d) * new[k], rtol=1e-5, atol=1e-6)

    with ema.swapped_in():
        for p in net.get_parameters():
            np.testing.assert_array_equal(p.asnumpy(), averages[p.name])
    for p in net.get_parameters():  # the raw weights come back
        np.testing.assert_array_equal(p.asnumpy(), new[p.name])


def test_check_data_stops_on_a_truncated_jpeg_before_training(data_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    victim = sorted((data / "train").rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:300])  # header only: the kind of file that crashes the decoder
    out = tmp_path / "run"
    proc = run_train(data, out, "--check_data", "True")
    assert proc.returncode == 2, explain(proc)
    assert "1 unreadable image(s)" in proc.stderr and str(victim) in proc.stderr
    assert not (out / "latest.ckpt").exists() and "epoch 1/" not in proc.stdout
