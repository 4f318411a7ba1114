"""The msrun launch scripts: recipe and device checked before any worker starts, failures propagated with the
worker's error on the console, nothing left running; and git ignoring what training and msrun leave behind."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".git")) or shutil.which("git") is None,
                    reason="not a git checkout")
def test_git_ignores_run_outputs():
    paths = ["ckpt/latest.ckpt", "ckpt/train.log", "scheduler.log", "worker_0.log", "worker_7.log",
             "outputs/msrun_logs/worker_1.log", "data/demo/train/x.jpg"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == sorted(paths)
    kept = subprocess.run(["git", "check-ignore", "--no-index", "train.py", "scripts/run_distribute_8p.sh"],
                          cwd=ROOT, capture_output=True, text=True)
    assert kept.stdout == ""
