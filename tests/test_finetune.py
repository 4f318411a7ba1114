"""The own-data journey with train.py: fine-tune onto other classes with a new head, and class names that travel
with the weights. Transfer is shown, not only shapes: fine-tuning a network trained on other classes beats
training from scratch for the same steps."""
import os
import shutil
import subprocess
import sys

import pytest

from _train_utils import DEMO_RECIPE, ROOT, TRAIN, explain, metrics

from mindcv_ext.weights import read_weights

EPOCHS_PRE, EPOCHS_FT = 6, 3


def _train(data, out, epochs, *extra):
    cmd = [sys.executable, TRAIN, "--config", DEMO_RECIPE, "--dataset", "imagenet", "--data_dir", str(data),
           "--batch_size", "32", "--num_parallel_workers", "1", "--epoch_size", str(epochs), "--warmup_epochs", "0",
           "--decay_epochs", str(epochs), "--lr", "0.002", "--log_interval", "100", "--num_classes", "None",
           "--ckpt_save_dir", str(out), *map(str, extra)]
    return subprocess.Popen(cmd, cwd=os.path.dirname(str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _done(proc):
    out, err = proc.communicate(timeout=600)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert proc.returncode == 0, explain(result)
    return result


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """12 demo classes: the first 8 to pretrain on, the other 4 (unseen shapes and textures) to fine-tune on."""
    from mindcv_ext.data import ensure_demo_dataset

    tmp = tmp_path_factory.mktemp("finetune")
    root = ensure_demo_dataset(str(tmp / "all"), num_classes=12, image_size=64, train_per_class=40,
                               val_per_class=16, seed=0)
    classes = sorted(os.listdir(os.path.join(root, "train")))
    for name, chosen in (("pre", classes[:8]), ("new", classes[8:])):
        for split in ("train", "val"):
            for c in chosen:
                shutil.copytree(os.path.join(root, split, c), tmp / name / split / c)
    return tmp, classes


def test_finetune_onto_new_classes_beats_scratch(splits):
    tmp, classes = splits
    _done(_train(tmp / "pre", tmp / "out_pre", EPOCHS_PRE))
    pre = read_weights(str(tmp / "out_pre" / "best.ckpt"))
    assert pre.class_names == classes[:8] and pre.num_classes == 8  # the names travel with the weights

    ft = _train(tmp / "new", tmp / "out_ft", EPOCHS_FT, "--ckpt_path", tmp / "out_pre" / "best.ckpt")
    scratch = _train(tmp / "new", tmp / "out_scratch", EPOCHS_FT)
    ft, scratch = _done(ft), _done(scratch)
    log = ft.stdout + ft.stderr
    assert "best.ckpt has 8 classes, the network 4" in log and "freshly initialized" in log
    best_ft = max(r["val_top1"] for r in metrics(tmp / "out_ft", "epoch"))
    best_scratch = max(r["val_top1"] for r in metrics(tmp / "out_scratch", "epoch"))
    # Same data, steps, lr and schedule; only the initial backbone differs. Measured: about 65 vs 25-35 (chance 25).
    assert best_ft >= best_scratch + 15, (best_ft, best_scratch)
    tuned = read_weights(str(tmp / "out_ft" / "best.ckpt"))
    assert tuned.class_names == classes[8:] and tuned.num_classes == 4
    # Resuming that run on other class folders is refused before any work (its labels would change meaning).
    resume = _train(tmp / "pre", tmp / "out_ft", EPOCHS_FT + 1, "--ckpt_path", tmp / "out_ft" / "latest.ckpt",
                    "--resume_opt", "True")
    _, err = resume.communicate(timeout=300)
    assert resume.returncode == 2 and "class folders differ" in err and "fine-tune instead" in err, err

    # validate.py checks the data's class folders against the names in the checkpoint.
    renamed = tmp / "renamed"
    shutil.copytree(tmp / "new" / "val", renamed / "val")
    os.rename(renamed / "val" / classes[9], renamed / "val" / "zz_other")
    cmd = [sys.executable, os.path.join(ROOT, "validate.py"), "-c", DEMO_RECIPE, "--num_parallel_workers", "1",
           "--ckpt_path", str(tmp / "out_ft" / "best.ckpt")]
    bad = subprocess.run(cmd + ["--data_dir", str(renamed)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "class folders differ" in bad.stderr and classes[9] in bad.stderr, bad.stderr
    good = subprocess.run(cmd + ["--data_dir", str(tmp / "new")], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert '"class_names_checked": true' in good.stdout.splitlines()[-1]


def test_mismatched_splits_are_refused_before_training(splits, tmp_path):
    tmp, classes = splits
    # val names other classes than train (same count): an error before training, naming the folders.
    odd = tmp_path / "odd"
    shutil.copytree(tmp / "new" / "train", odd / "train")
    shutil.copytree(tmp / "pre" / "val", odd / "val", ignore=lambda d, names: [])
    for c in classes[4:8]:
        shutil.rmtree(odd / "val" / c)
    proc = _train(odd, tmp_path / "out", 1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "class folders differ" in err and classes[8] in err, err
    assert not os.path.exists(tmp_path / "out" / "latest.ckpt")
