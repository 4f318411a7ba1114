"""Issue 14, item 15: a killed save or export leaves its temporary (a hidden `.x.ckpt....tmp.tmp`, a folder with the
whole exported model); the next run of the same tool removes those of runs that are over, never a live run's. The
names carry the writer's pid, which tells them apart."""
import os
import subprocess
import sys
import time

import mindcv
import mindspore as ms
import numpy as np
import pytest

import mindcv_ext
from mindcv_ext.checkpoint import make_temp, remove_temp_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import export  # noqa: E402


@pytest.fixture
def pids():
    """(a pid that has ended, a pid that is alive)."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield ended.pid, alive.pid
    alive.kill()
    alive.wait()


def _old(path):
    past = time.time() - 3600
    os.utime(path, (past, past))


def test_checkpoint_save_removes_killed_saves_temporaries_only(tmp_path, monkeypatch, pids):
    dead, live = pids
    leftovers = [f".model.ckpt.{dead}-abcdEFGH.tmp.tmp",  # MindSpore's own temporary of a killed save
                 f".model.ckpt.{dead}-abcdEFGH.tmp.ckpt", ".model.ckpt.qrstuvwx.tmp.ckpt",  # no pid, old
                 f".other.ckpt.{dead}-abcdEFGH.tmp.ckpt"]  # a killed save of another name (issue 18: it stayed)
    kept = [f".model.ckpt.{live}-ijklMNOP.tmp.ckpt",  # a live run is writing it
            "notes.tmp"]  # not ours
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"partial")
    _old(tmp_path / ".model.ckpt.qrstuvwx.tmp.ckpt")
    written = []
    real = ms.save_checkpoint

    def spy(save_list, name, **kwargs):
        written.append(os.path.basename(name))
        return real(save_list, name, **kwargs)

    monkeypatch.setattr(ms, "save_checkpoint", spy)
    mindcv_ext.save_checkpoint(mindcv.create_model("demo_repmlp", num_classes=3), str(tmp_path / "model.ckpt"))
    assert written and written[0].startswith(f".model.ckpt.{os.getpid()}-")  # the pid is in the name
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["model.ckpt"])


def test_a_temporary_this_run_makes_is_not_stale(tmp_path):
    temp = make_temp(str(tmp_path / "x.ckpt"), ".ckpt")
    assert remove_temp_files(str(tmp_path)) == [] and os.path.exists(temp)


def test_export_removes_killed_exports_folders(tmp_path, pids, capsys):
    dead, live = pids
    for name in (f".x.mindir.{dead}-abcdEFGH.tmp", ".export-abcdEFGH", f".x.mindir.{live}-ijklMNOP.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.mindir").write_bytes(b"\0" * 1000)
    _old(tmp_path / ".export-abcdEFGH")  # export.py's folder name before the pid was in it
    net = mindcv.create_model("demo_repmlp", num_classes=3, deploy=True)
    net.set_train(False)
    x = ms.Tensor(np.zeros((1, 3, 64, 64), np.float32))
    seen = []
    export.export_atomically(net, x, "MINDIR", str(tmp_path / "x.mindir"), seen.append)
    assert os.path.basename(os.path.dirname(seen[0])).startswith(f".x.mindir.{os.getpid()}-")
    assert sorted(os.listdir(tmp_path)) == sorted([f".x.mindir.{live}-ijklMNOP.tmp", "x.mindir"])
    assert "removed 2 temporary folder(s) of killed exports" in capsys.readouterr().out
