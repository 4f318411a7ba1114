"""Issue 18 on the classification tools: infer.py counts the special files it skips and replaces only its own
predictions (or with --overwrite True); validate.py / infer.py name the segmentation tool for a segmentation
checkpoint in one line (validate.py printed 870 characters of key names)."""
import os
import subprocess
import sys
import threading

import mindspore as ms
import pytest
from test_tools_infer_output import _main, _refused, demo  # noqa: F401  (the fixture)

from mindcv_ext.checkpoint import save_checkpoint
from mindcv_ext.seg.model import create_seg_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fifo_in_the_folder_is_skipped_and_counted(demo, tmp_path):  # noqa: F811
    folder = tmp_path / "imgs"
    os.makedirs(folder)
    src = os.path.join(demo["images"], sorted(os.listdir(demo["images"]))[0])
    first = os.path.join(src, sorted(os.listdir(src))[0])
    os.symlink(first, folder / "a.jpg")
    os.mkfifo(folder / "x.png")
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", _main("--ckpt_path", demo["ckpt"], "--image_path",
                                                                  folder)), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "infer.py blocked on the FIFO"
    rc, _, err = box["r"]
    assert rc == 0 and f"skipped {folder / 'x.png'}: a FIFO" in err
    assert "1 image(s) predicted, 1 skipped" in err  # it said "0 skipped" after listing the FIFO as skipped


def test_output_of_someone_else_needs_overwrite(demo, tmp_path):  # noqa: F811
    mine = tmp_path / "notes.jsonl"
    mine.write_text('{"my": "own data"}\n')
    assert "notes.jsonl exists" in _refused("--ckpt_path", demo["ckpt"], "--image_path", demo["images"], "--output",
                                            mine)
    assert mine.read_text() == '{"my": "own data"}\n'
    rc, _, err = _main("--ckpt_path", demo["ckpt"], "--image_path", demo["images"], "--output", mine,
                       "--overwrite", "True")
    assert rc == 0, err
    rc, _, err = _main("--ckpt_path", demo["ckpt"], "--image_path", demo["images"], "--output", mine)
    assert rc == 0, err  # now infer.py's own predictions: a re-run refreshes them


@pytest.mark.parametrize("tool", ["validate.py", "scripts/infer.py"])
def test_segmentation_checkpoint_named_in_one_line(tmp_path, tool):
    ms.set_seed(0)
    model, _ = create_seg_model("demo_repmlp", head="fpn", num_classes=3, channels=8)
    ckpt = str(tmp_path / "seg.ckpt")
    save_checkpoint(model, ckpt)
    extra = ["--data_dir", str(tmp_path)] if tool == "validate.py" else ["--image_path", str(tmp_path)]
    r = subprocess.run([sys.executable, os.path.join(ROOT, tool), "--model", "demo_repmlp", "--ckpt_path", ckpt,
                        *extra], capture_output=True, text=True, timeout=300)
    want = "validate_seg.py" if tool == "validate.py" else "scripts/predict_seg.py"
    assert r.returncode == 2 and r.stderr.strip().endswith(f"is a segmentation checkpoint (train_seg.py): use {want}.")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_output_folder_cleared_of_killed_runs_temporaries(demo, tmp_path):  # noqa: F811
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".deploy.ckpt.{int(dead.stdout)}-abcdEFGH.tmp.ckpt"  # a killed reparameterize's
    leftover.write_bytes(b"partial")
    rc, _, err = _main("--ckpt_path", demo["ckpt"], "--image_path", demo["images"], "--output", tmp_path / "p.jsonl")
    assert rc == 0 and not leftover.exists() and "removed 1 temporary file(s) of killed runs" in err, err


@pytest.mark.parametrize("tool", ["scripts/infer.py", "scripts/predict_seg.py", "validate_seg.py"])
def test_help_into_a_closed_pipe_is_quiet(tool):
    """`tool --help | head -1`: a BrokenPipeError traceback (predict_seg, validate_seg) or 'error: [Errno 32] Broken
    pipe' as bad input, 2 (infer.py); now no line and 1 (did not finish: its output pipe closed)."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, tool), "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the help is printed
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == "", err
