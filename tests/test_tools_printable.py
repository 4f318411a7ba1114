"""Issue 14, item 6: class names and file names are data. On the console they are escaped (a newline cannot forge a
prediction line, an ANSI escape never reaches the terminal); the JSON output keeps them exactly."""
import contextlib
import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

import mindcv
import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.cli import printable
from mindcv_ext.weights import check_class_names, save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import infer  # noqa: E402

HOSTILE = ["cat\nforged.jpg: dog (1) 1.0000", "\x1b[31mred\x1b[0m", "ok\u202eevil", "caf\u00e9 \u732b"]


def test_printable_escapes_controls_and_keeps_letters():
    assert printable("plain name") == "plain name"
    assert printable("caf\u00e9 \u732b") == "caf\u00e9 \u732b"  # non-ASCII letters are kept
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("\x1b[31m\x7f\x85") == "\\x1b[31m\\x7f\\x85"
    assert printable("x\u202ey\u2028z") == "x\\u202ey\\u2028z"
    assert printable(os.fsdecode(b"img\xff.jpg")) == "img\\xff.jpg"  # a non-UTF-8 file name's byte
    assert printable(printable("a\nb")) == printable("a\nb")  # escaping twice changes nothing


def test_infer_lines_escape_recorded_class_names_json_keeps_them(tmp_path):
    net = mindcv.create_model("demo_repmlp", num_classes=len(HOSTILE))
    ckpt = save_weights(net, str(tmp_path / "hostile.ckpt"), HOSTILE)
    image = tmp_path / "a\x1b[2Jb.png"  # a file name with an escape sequence in it
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = infer.main(["--model", "demo_repmlp", "--mode", "1", "--ckpt_path", ckpt, "--image_path", str(image),
                         "--output", str(tmp_path / "p.jsonl")])
    assert rc == 0, err.getvalue()
    out, err = out.getvalue(), err.getvalue()
    assert len(out.splitlines()) == 1, out  # one image, one line: no forged prediction line
    assert "\x1b" not in out + err and "\u202e" not in out + err
    assert "cat\\nforged.jpg" in out and "\\x1b[31mred" in out and "a\\x1b[2Jb.png" in out
    with open(tmp_path / "p.jsonl", encoding="utf-8") as f:
        (row,) = [json.loads(line) for line in f]
    assert row["path"] == str(image) and {t["class"] for t in row["top5"]} == set(HOSTILE)


def test_class_name_mismatch_message_is_one_line():
    with pytest.raises(CheckpointError) as e:
        check_class_names(HOSTILE, ["cat", "\x1b[31mred\x1b[0m", "other\nline", "caf\u00e9 \u732b"],
                          "data/val against x.ckpt", "Rename the folders.")
    text = str(e.value)
    assert "\n" not in text and "\x1b" not in text and "\u202e" not in text, text
    assert "cat\\nforged.jpg" in text and "other\\nline" in text
