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


def test_ascend_recipe_precision_amp_o2_with_fixed_loss_scale(data_dir, tmp_path):
    """The Ascend recipes' precision settings (amp_level O2, fixed loss scale 1024, AdamW), run on CPU: finite
    losses, validation, and the saved weights fp32 and finite after every step ran."""
    out = tmp_path / "run"
    proc = run_train(data_dir, out, "--amp_level", "O2", "--loss_scale", "1024", "--loss_scale_type", "fixed",
                     "--opt", "adamw", "--epoch_size", "1")
    assert proc.returncode == 0, explain(proc)
    assert all(math.isfinite(r["loss"]) for r in metrics(out, "step"))
    assert 0.0 <= metrics(out, "epoch")[0]["val_top1"] <= 100.0
    latest = load_np(out / "latest.ckpt")
    weights = {k: v for k, v in latest.items() if k in model_keys(latest)}
    assert weights and all(v.dtype == np.float32 and np.isfinite(v).all() for v in weights.values())
    assert int(latest["global_step"].reshape(-1)[0]) == STEPS_PER_EPOCH


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


def _one_sgd_step(*extra):
    """Weights before and after one plain-SGD step (lr 1) of demo_repmlp on a fixed batch, built like train.py."""
    import mindcv
    import mindspore as ms

    from _train_utils import DEMO_RECIPE
    from mindcv_ext.training import optim
    from mindcv_ext.training.config import load_config
    from mindcv_ext.training.step import build_train_step

    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = load_config(["--config", DEMO_RECIPE, "--num_classes", "4", "--opt", "sgd", "--momentum", "0",
                       "--weight_decay", "0", "--scheduler", "constant", "--warmup_epochs", "0", "--lr", "1.0",
                       *extra])
    net = mindcv.create_model(cfg.model, num_classes=4)
    rng = np.random.default_rng(0)
    for p in net.get_parameters():  # the same start for every call
        p.set_data(ms.Tensor((rng.standard_normal(p.shape) * 0.1).astype(np.float32)) if "moving_var" not in p.name
                   else ms.Tensor(np.ones(p.shape, np.float32)))
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    step = build_train_step(cfg, net, optim.build_loss(cfg), optim.build_optimizer(cfg, net, optim.build_lr_schedule(
        cfg, 1)), optim.build_loss_scale(cfg), 1)
    images = ms.Tensor(rng.standard_normal((8, 3, 64, 64)).astype(np.float32))
    labels = ms.Tensor(np.arange(8, dtype=np.int32) % 4)
    step(images, labels)
    return {k: p.asnumpy() - before[k] for k, p in ((p.name, p) for p in net.trainable_params())}


def _global_norm(deltas):
    return float(np.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in deltas.values())))


def test_fixed_loss_scale_does_not_change_the_update():
    # The train step multiplies the loss by loss_scale and divides the gradients by it again: in fp32 the update
    # must not depend on the scale.
    plain, scaled = _one_sgd_step("--loss_scale", "1"), _one_sgd_step("--loss_scale", "1024")
    assert _global_norm(plain) > 0
    for k in plain:
        np.testing.assert_allclose(scaled[k], plain[k], rtol=1e-3, atol=1e-7, err_msg=k)


def test_clip_grad_bounds_the_global_norm():
    free = _one_sgd_step()
    clipped = _one_sgd_step("--clip_grad", "True", "--clip_value", "0.01")
    assert _global_norm(free) > 0.05  # clipping has something to do
    assert _global_norm(clipped) == pytest.approx(0.01, rel=1e-3)  # lr 1: the update is minus the clipped gradient
    ratio = _global_norm(clipped) / _global_norm(free)
    for k in free:  # same direction, scaled down
        # atol: the fp32 rounding of w + dw
        np.testing.assert_allclose(clipped[k], free[k] * ratio, rtol=1e-3, atol=5e-8, err_msg=k)
