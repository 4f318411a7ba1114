"""Real data-parallel training on CPU: scripts/run_distribute_8p.sh with WORKERS=2 has msrun start 2 workers (MCCL
backend); each reads its own half of the data, gradients are averaged, so both ranks must end with bit-identical
weights. Only rank 0 writes the run's files."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from _train_utils import (BATCH, CLASSES, TRAIN, explain, free_port, load_np, make_data, metrics, model_keys,
                          train_args)

TRAIN_PER_CLASS = 12  # as in make_data
LAUNCHER = os.path.join(os.path.dirname(TRAIN), "scripts", "run_distribute_8p.sh")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("msrun") is None, reason="msrun (installed with MindSpore) is not on PATH")
def test_two_worker_msrun_keeps_ranks_identical(tmp_path):
    data_dir = make_data(tmp_path / "data")  # generated before launch, so the workers only read it
    out, logs = tmp_path / "run", tmp_path / "msrun_logs"
    # Through the launcher (preflight, msrun, the guard that propagates worker failures): it must not get in the
    # way of a healthy run. It runs msrun with --join True and `python train.py --distribute True`.
    args = train_args(data_dir, out, "--save_rank_weights", "True", "--epoch_size", "1", "--ema", "True")
    assert args[0] == "--config"
    cmd = ["bash", LAUNCHER, args[1]] + args[2:]
    # msrun starts workers as `python <script>` (any other binary name is treated as a script), so put this
    # interpreter first on PATH.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               WORKERS="2", MASTER_PORT=str(free_port()), LOG_DIR=str(logs), TIMEOUT="500")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    worker_logs = {r: (logs / f"worker_{r}.log").read_text(errors="replace") if (logs / f"worker_{r}.log").exists()
                   else "" for r in (0, 1)}
    assert proc.returncode == 0, explain(proc) + "\n--- worker 0 ---\n" + worker_logs[0][-3000:] + \
        "\n--- worker 1 ---\n" + worker_logs[1][-3000:]

    # Each rank read half of the train set.
    shard = CLASSES * TRAIN_PER_CLASS // 2
    steps = shard // BATCH
    for r in (0, 1):
        assert f"rank {r}/2: {shard} train samples in this shard, {steps} steps per epoch" in worker_logs[r]

    # Identical weights (and EMA averages) on both ranks after training on different data.
    w0, w1 = load_np(out / "rank_0_final.ckpt"), load_np(out / "rank_1_final.ckpt")
    assert w0.keys() == w1.keys() and len(w0) > 10
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
    latest = load_np(out / "latest.ckpt")
    keys = model_keys(latest)
    assert all(np.array_equal(latest[k], w0[k]) for k in keys)
    assert int(latest["global_step"].reshape(-1)[0]) == steps  # one optimizer step per global batch

    # Only rank 0 logs progress and writes metrics; validation covered the whole val set across both ranks.
    assert "epoch 1/1 step" in worker_logs[0] and "epoch 1/1 step" not in worker_logs[1]
    (epoch,) = metrics(out, "epoch")
    assert 0.0 <= epoch["val_top1"] <= 100.0
    assert f"({CLASSES * 4} images" in worker_logs[0]
    assert sorted(os.listdir(out)) == sorted(["best.ckpt", "curves.png", "latest.ckpt", "metrics.jsonl", "train.log",
                                              f"demo_repmlp-1_{steps}.ckpt", "rank_0_final.ckpt",
                                              "rank_1_final.ckpt"])
