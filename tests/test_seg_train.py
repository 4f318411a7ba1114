"""train_seg.py / validate_seg.py / predict_seg.py end to end on a tiny generated Cityscapes-layout set:
train, resume from latest.ckpt, validate both forms (same scores), predict masks; bad data and a diverging run
stop with their exit codes."""
import json
import os
import shlex
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import predict_seg  # noqa: E402
import train_seg  # noqa: E402
import validate_seg  # noqa: E402
from mindcv_ext.seg.demo import ensure_seg_demo  # noqa: E402
from mindcv_ext.weights import read_weights  # noqa: E402

RECIPE = os.path.join(ROOT, "configs", "seg", "demo_seg_cpu.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_seg_demo(str(tmp_path_factory.mktemp("segdata")), train_images=4, val_images=2, height=64,
                           width=128)


def _common(data):
    return ["--config", RECIPE, "--dataset", "cityscapes", "--num_classes", "6", "--data_dir", data, "--mode", "1",
            "--batch_size", "2", "--crop_size", "[64, 64]", "--img_scale", "[128, 64]", "--head_channels", "8",
            "--aux_channels", "8", "--val_interval", "2", "--warmup_iters", "0", "--num_parallel_workers", "1", "--log_interval", "1"]


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_train_resume_validate_both_forms_and_predict(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_seg.run(_common(data) + ["--total_iters", "2", "--ckpt_save_dir", out]) == 0
    latest, best = os.path.join(out, "latest.ckpt"), os.path.join(out, "best.ckpt")
    assert os.path.isfile(latest) and os.path.isfile(best)
    # a second start into the same directory is refused; resuming continues the schedule
    assert train_seg.run(_common(data) + ["--total_iters", "4", "--ckpt_save_dir", out]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "Continue it with: python train_seg.py --config " in err  # a command
    resume = ["--ckpt_save_dir", out, "--ckpt_path", latest, "--resume_opt", "True"]
    assert train_seg.run(_common(data) + ["--total_iters", "4", "--val_interval", "1"] + resume) == 2
    assert "resume with the same --val_interval" in capsys.readouterr().err
    assert train_seg.run(_common(data) + ["--total_iters", "4"] + resume) == 0
    # another total_iters is said, with the lr it changes (it was silent)
    assert "was trained for total_iters 2, this run has 4: the poly lr schedule is recomputed" in \
        capsys.readouterr().out
    w = read_weights(latest)
    assert w.scalar("global_step") == 4 and w.scalar("epoch") == 2
    # every file records the encoder's GELU flavour and the training crop (evaluation reads them, no flag needed)
    for path in (latest, best, os.path.join(out, "demo_repmlp_upernet-2_2.ckpt")):
        f = read_weights(path)
        assert (f.scalar("gelu_approximate"), f.scalar("crop_h"), f.scalar("crop_w")) == (0, 64, 64), path
    with Image.open(os.path.join(out, "curves.png")) as png:  # loss, mIoU and lr panels, as train.py's plot
        assert png.format == "PNG" and png.size[0] > 2 * png.size[1]
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["iteration"] for r in rows if r["kind"] == "epoch"] == [2, 4]
    assert all(0 <= r["val_mIoU"] <= 100 for r in rows if r["kind"] == "epoch")
    capsys.readouterr()

    evaluate = ["-c", RECIPE, "--dataset", "cityscapes", "--num_classes", "6", "--data_dir", data, "--mode", "1",
                "--eval_scale", "[128, 64]"]
    assert validate_seg.run(evaluate + ["--ckpt_path", best]) == 0
    train_form = _last_json(capsys.readouterr().out)
    deploy = str(tmp_path / "best_deploy.ckpt")
    assert validate_seg.run(evaluate + ["--ckpt_path", best, "--save_deploy", deploy]) == 0
    converted = _last_json(capsys.readouterr().out)
    assert validate_seg.run(evaluate + ["--ckpt_path", deploy, "--eval_mode", "slide", "--eval_crop", "[64, 64]",
                                        "--eval_stride", "[64, 64]"]) == 0
    reread = _last_json(capsys.readouterr().out)
    assert train_form["form"] == "train" and converted["form"] == reread["form"] == "deploy"
    assert (read_weights(deploy).scalar("gelu_approximate"), read_weights(deploy).scalar("crop_h")) == (0, 64)
    assert validate_seg.run(evaluate + ["--ckpt_path", deploy, "--gelu_approximate", "True"]) == 2
    assert "records that its encoder was trained with exact (erf) GELU" in capsys.readouterr().err
    assert train_form["images"] == 2 and train_form["mIoU"] is not None
    for key in ("mIoU", "aAcc"):
        assert converted[key] == pytest.approx(train_form[key], abs=0.02)
    # non-overlapping 64x64 windows of the 64x128 canvases: the whole-image partitions, so the same scores
    assert reread["per_class_IoU"] == pytest.approx(converted["per_class_IoU"], abs=0.02)

    masks = str(tmp_path / "masks")
    val_dir = os.path.join(data, "leftImg8bit", "val")
    assert predict_seg.run(["-c", RECIPE, "--ckpt_path", deploy, "--image_path", val_dir, "--output", masks,
                            "--mode", "1", "--eval_scale", "[128, 64]"]) == 0
    # under --output the inputs' city folders are kept (same names in two folders must not meet)
    written = sorted(os.path.join(d, n) for d, _, names in os.walk(masks) for n in names)
    assert len([n for n in written if n.endswith("_mask.png")]) == 2
    assert len([n for n in written if n.endswith("_overlay.png")]) == 2
    mask = Image.open([n for n in written if n.endswith("_mask.png")][0])
    assert mask.mode == "P" and mask.size == (128, 64)
    assert np.asarray(mask).max() < 6


def test_bad_label_is_refused_before_work(data, tmp_path, capsys):
    import shutil
    bad = str(tmp_path / "bad")
    shutil.copytree(data, bad)
    label = os.path.join(bad, "gtFine", "train", "aachen", "aachen_000000_000019_gtFine_labelTrainIds.png")
    values = np.asarray(Image.open(label)).copy()
    values[0, 0] = 7
    Image.fromarray(values).save(label)
    out = str(tmp_path / "run")
    assert train_seg.run(_common(bad) + ["--total_iters", "2", "--ckpt_save_dir", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "label value(s) 7" in err[0] and "aachen_000000" in err[0]
    assert not os.path.exists(out)  # nothing left behind


def test_crop_size_must_fit_the_backbone(data, tmp_path, capsys):
    assert train_seg.run(_common(data) + ["--crop_size", "[64, 96]", "--ckpt_save_dir", str(tmp_path / "r")]) == 2
    assert "multiples of demo_repmlp's native size 64" in capsys.readouterr().err


def test_precision_keys_are_checked_as_train_py_checks_them(data, tmp_path, capsys):
    # amp_cast_list reaches mindcv's eval(): train_seg.py passed any text through (a typo was a traceback from
    # inside mindcv); it now shares train.py's checks of the precision and optimizer keys.
    out = tmp_path / "r"
    assert train_seg.run(_common(data) + ["--amp_cast_list", "[nn.Conv2dd]", "--ckpt_save_dir", str(out)]) == 2
    assert "nn.Conv2dd is not one" in capsys.readouterr().err
    assert train_seg.run(_common(data) + ["--loss_scale", "0.5", "--ckpt_save_dir", str(out)]) == 2
    assert "loss_scale must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_diverging_run_exits_3_without_a_checkpoint(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    code = train_seg.run(_common(data) + ["--total_iters", "2", "--lr", "1e30", "--warmup_iters", "0",
                                          "--ckpt_save_dir", out])
    assert code == 3
    assert "training stopped" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "latest.ckpt"))


@pytest.mark.parametrize("recipe, crop, iters, classes", [
    ("repmlp_t256_upernet_cityscapes_ascend.yaml", (512, 1024), 80000, 19),
    ("repmlp_t256_upernet_ade20k_ascend.yaml", (512, 512), 160000, 150),
    ("demo_seg_cpu.yaml", (128, 128), 400, 6),
])
def test_recipes_load_and_their_poly_schedule(recipe, crop, iters, classes):
    from mindcv_ext.seg.config import load_seg_config
    cfg = load_seg_config(["--config", os.path.join(ROOT, "configs", "seg", recipe)])
    assert cfg.crop_size == crop and cfg.total_iters == iters and cfg.num_classes == classes
    assert len(cfg.class_names) == classes
    assert cfg.sync_bn == ("ascend" in recipe)  # mmseg's UPerNet configs: SyncBN across cards
    lrs = train_seg.poly_schedule(cfg)
    assert len(lrs) == iters
    w, total = cfg.warmup_iters, cfg.total_iters
    for i in (0, w // 2, w, total // 2, total - 1):  # independent evaluation of the formula at a few points
        poly = (cfg.lr - cfg.min_lr) * (1.0 - i / total) ** cfg.power + cfg.min_lr
        factor = cfg.warmup_ratio + (1 - cfg.warmup_ratio) * i / w if i < w else 1.0
        assert lrs[i] == pytest.approx(poly * factor, rel=1e-9)
    assert max(lrs) <= cfg.lr and lrs[-1] < 0.01 * cfg.lr + cfg.min_lr


def test_sigterm_mid_run_exits_143_with_the_resume_hint(data, tmp_path):
    import signal
    import subprocess
    import time
    out = str(tmp_path / "run")
    log = tmp_path / "stdout.txt"
    cmd = [sys.executable, os.path.join(ROOT, "train_seg.py")] + _common(data) + [
        "--total_iters", "2000", "--ckpt_save_dir", out]
    with open(log, "w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        deadline = time.time() + 120
        while "iter 3/" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    resume = shlex.join(["python", "train_seg.py"] + _common(data) + ["--total_iters", "2000", "--ckpt_save_dir", out,
                                                                   "--ckpt_path", f"{out}/latest.ckpt",
                                                                   "--resume_opt", "True"])
    assert lines == [f"error: terminated (SIGTERM); continue with: {resume}"]  # the whole command, pasteable


def test_sigterm_while_compiling_exits_143_and_leaves_no_run_folder(data, tmp_path):
    # MindData's pipeline installs its own SIGTERM handler when a GeneratorDataset with several workers first runs
    # (after the tool installed its own): a SIGTERM during the compile then ended the run with exit 0, no line,
    # and the folder kept its .train.lock. cli's watchdog now puts the tool's handler back (keep_sigint).
    import signal
    import subprocess
    import time
    out = str(tmp_path / "run")
    log = tmp_path / "stdout.txt"
    cmd = [sys.executable, os.path.join(ROOT, "train_seg.py")] + _common(data) + [
        "--total_iters", "20", "--ckpt_save_dir", out, "--mode", "0",
        "--num_parallel_workers", "2"]  # graph mode: a compile to stop; 2 workers: MindData's handler
    with open(log, "w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        deadline = time.time() + 120
        while "compiling the training graph" not in log.read_text() and time.time() < deadline and \
                proc.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)  # into the compile, after the first batch was read
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert [line for line in err.splitlines() if line.strip()] == [
        "error: terminated (SIGTERM); no checkpoint was written yet; start again"]
    assert not os.path.exists(out)  # nothing trained: no folder, no .train.lock


def test_resume_command_is_the_run_command_with_the_checkpoint():
    from mindcv_ext.training.run_end import RunEnd
    run = RunEnd("train", "train_seg.py")
    run.reset(["--config", "my recipe.yaml", "--lr=0.1", "--ckpt_path", "old.ckpt", "--resume_opt", "True",
               "--photometric"])
    assert run.resume_command("out/latest.ckpt") == ("python train_seg.py --config 'my recipe.yaml' --lr 0.1 "
                                                     "--photometric True --ckpt_path out/latest.ckpt --resume_opt True")


def test_without_check_data_a_bad_label_is_one_line_not_a_pipeline_traceback(data, tmp_path, capfd):
    import shutil
    bad = str(tmp_path / "bad")
    shutil.copytree(data, bad)
    for name in os.listdir(os.path.join(bad, "gtFine", "train", "aachen")):  # colour labels: RGB, not class indices
        path = os.path.join(bad, "gtFine", "train", "aachen", name)
        Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(path)
    out = str(tmp_path / "run")
    # met in the first batch, before any step: bad input (2); once a step has run it is a failed run (1), see
    # test_train_exits.py::test_bad_input_met_once_training_ran_is_a_failed_run_not_bad_input
    assert train_seg.run(_common(bad) + ["--check_data", "False", "--total_iters", "2", "--ckpt_save_dir", out]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "single-channel" in err[0], err[-5:]
    assert "aachen_" in err[0]


def test_unlabelled_val_set_does_not_choose_best_ckpt(data, tmp_path, capsys):
    # all-255 val labels: check_data refuses them naming the split; without it, no evaluation picks best.ckpt
    # (it froze at the first evaluation's mIoU 0.00)
    import shutil
    bad = str(tmp_path / "bad")
    shutil.copytree(data, bad)
    for root, _, files in os.walk(os.path.join(bad, "gtFine", "val")):
        for name in files:
            Image.fromarray(np.full((64, 128), 255, np.uint8)).save(os.path.join(root, name))
    out = str(tmp_path / "run")
    assert train_seg.run(_common(bad) + ["--total_iters", "2", "--ckpt_save_dir", out]) == 2
    assert "labels of split 'val' is labelled" in capsys.readouterr().err and not os.path.exists(out)
    assert train_seg.run(_common(bad) + ["--check_data", "False", "--total_iters", "2", "--ckpt_save_dir", out]) == 0
    assert "no pixel of the 2 val labels is labelled" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "latest.ckpt")) and not os.path.exists(os.path.join(out, "best.ckpt"))


def test_a_crop_larger_than_the_rescaled_images_is_refused_before_work(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_seg.run(_common(data) + ["--crop_size", "[512, 1024]", "--ckpt_save_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit the training images" in err[0] and "img_scale [128, 64]" in err[0]
    assert not out.exists()  # no folder, no .train.lock


@pytest.mark.skipif(not os.path.exists("/proc/self/wchan"), reason="needs Linux /proc")
def test_sigterm_while_the_loader_is_blocked_exits_143_with_the_resume_command(data, tmp_path):
    # The images turn into FIFOs after the first steps read them: the pipeline's reader threads block opening them
    # and the main thread waits in the iterator's native code; cli's watchdog ends the run (as for train.py).
    import shutil
    import signal
    import subprocess
    import time
    from test_train_exits import _blocked_on_a_fifo
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = str(tmp_path / "run")
    log = tmp_path / "stdout.txt"
    cmd = [sys.executable, os.path.join(ROOT, "train_seg.py")] + _common(str(copy)) + [
        "--total_iters", "2000", "--ckpt_save_dir", out, "--check_data", "False"]
    with open(log, "w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        deadline = time.time() + 120
        while "iter 3/" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        for root, _, files in os.walk(copy / "leftImg8bit" / "train"):
            for name in files:
                fifo = os.path.join(root, "." + name + ".fifo")
                os.mkfifo(fifo)
                os.replace(fifo, os.path.join(root, name))  # atomic: a reader finds a file or a FIFO
        while not _blocked_on_a_fifo(proc.pid) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(2.0)  # the prefetched batches run out
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("SIGTERM did not end train_seg.py blocked in its loader")
    assert proc.returncode == 143, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: terminated (SIGTERM); continue with: python "
                                                   "train_seg.py --config "), err[-2000:]
    assert lines[0].endswith(f"--ckpt_path {out}/latest.ckpt --resume_opt True")
    assert not os.path.exists(os.path.join(out, ".train.lock"))
