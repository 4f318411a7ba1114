"""Issue 14, item 16: the "load it with" line reparameterize.py and convert_weights.py print works when pasted (it
is run here, for a model that does not have 1000 classes), and output names the loaders could not read back are
refused before any work, in one line naming the accepted extensions."""
import os
import subprocess
import sys

import mindcv
import pytest

import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def _script(name, *args, cwd):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hint")
    return save_weights(mindcv.create_model("demo_repmlp", num_classes=7), str(tmp / "train.ckpt"))


@pytest.mark.parametrize("script, args", [
    ("reparameterize.py", ["--ckpt_path"]),
    ("convert_weights.py", ["--src"]),
], ids=["reparameterize", "convert_weights"])
def test_printed_load_line_works_when_pasted(train_ckpt, tmp_path, script, args):
    r = _script(script, "--model", "demo_repmlp", *args, train_ckpt, "--output", "out.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("import mindcv")]
    assert "num_classes=7" in line
    pasted = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); {line}; "
                             f"assert net.num_classes == 7"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert pasted.returncode == 0, pasted.stderr[-3000:]


@pytest.mark.parametrize("script, args", [
    ("reparameterize.py", ["--ckpt_path"]),
    ("convert_weights.py", ["--src"]),
], ids=["reparameterize", "convert_weights"])
@pytest.mark.parametrize("name", ["deploy.pth", "deploy"])
def test_unreadable_output_names_are_refused_before_work(train_ckpt, tmp_path, script, args, name):
    r = _script(script, "--model", "demo_repmlp", *args, train_ckpt, "--output", name, cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert "name it deploy.ckpt or deploy.safetensors" in lines[0]
    assert r.stdout == "" and os.listdir(tmp_path) == []
