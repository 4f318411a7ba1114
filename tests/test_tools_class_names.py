"""Issue 14, item 12: class names that are not UTF-8 in a weight file give one line naming the file and the problem
(a CheckpointError from the one place that reads them), in the library, in infer.py and in train.py; train.py
printed a UnicodeDecodeError traceback, the others a codec message without the file name."""
import contextlib
import io
import os
import subprocess
import sys

import mindcv
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.data import ensure_demo_dataset
from mindcv_ext.weights import read_weights, recorded_class_names, save_weights
from _train_utils import train_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import infer  # noqa: E402

LATIN1 = '["caf\u00e9", "b", "c"]'.encode("latin-1")  # an editor's "ANSI" save: not UTF-8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class_names")
    net = mindcv.create_model("demo_repmlp", num_classes=3)
    good = save_weights(net, str(tmp / "good.safetensors"), ["a", "b", "c"])
    tensors = load_file(good)
    tensors["class_names"] = np.frombuffer(LATIN1, np.uint8).copy()
    save_file(tensors, str(tmp / "latin1.safetensors"))
    np.savez(tmp / "latin1.npz", **{k: v for k, v in tensors.items()})
    return dict(tmp=tmp, safetensors=str(tmp / "latin1.safetensors"), npz=str(tmp / "latin1.npz"))


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_reading_names_the_file_and_the_problem(files, fmt):
    for read in (read_weights, recorded_class_names):
        with pytest.raises(CheckpointError) as e:
            read(files[fmt])
        text = str(e.value)
        assert files[fmt] in text and "not UTF-8" in text and "\n" not in text


def test_infer_and_train_say_it_in_one_line(files, tmp_path):
    data = ensure_demo_dataset(str(files["tmp"] / "data"), num_classes=3, train_per_class=3, val_per_class=1)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = infer.main(["--model", "demo_repmlp", "--mode", "1", "--ckpt_path", files["safetensors"],
                         "--image_path", os.path.join(data, "val")])
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1 and files["safetensors"] in lines[0] and "not UTF-8" in lines[0], lines
    r = subprocess.run(train_cmd(data, tmp_path / "run", "--num_classes", 3, "--ckpt_path", files["safetensors"]),
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert files["safetensors"] in r.stderr and "not UTF-8" in r.stderr, r.stderr[-3000:]
