"""Issue 14, item 1: infer.py --output never replaces what the run reads (the checkpoint, an input image, also through
a link), is refused before anything is loaded, and is written under a temporary name and renamed at the end: a run
that predicts nothing or is interrupted leaves the previous file as it was."""
import contextlib
import io
import os
import shutil
import sys

import mindcv
import pytest

import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.data import ensure_demo_dataset
from mindcv_ext.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import infer  # noqa: E402

PREVIOUS = '{"path": "previous run", "top5": []}\n'


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer_output")
    data = ensure_demo_dataset(str(tmp / "data"), num_classes=3, train_per_class=1, val_per_class=2)
    ckpt = save_weights(mindcv.create_model("demo_repmlp", num_classes=3), str(tmp / "model.ckpt"))
    return dict(images=os.path.join(data, "val"), ckpt=ckpt)


def _main(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = infer.main(["--model", "demo_repmlp", "--mode", "1", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


def _refused(*args):
    rc, out, err = _main(*args)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and out == "", err  # one line, before any loading
    return err


def test_output_may_not_be_what_the_run_reads(demo, tmp_path):
    images, ckpt = demo["images"], demo["ckpt"]
    ckpt_bytes = open(ckpt, "rb").read()
    assert "--ckpt_path file itself" in _refused("--ckpt_path", ckpt, "--image_path", images, "--output", ckpt)
    link = tmp_path / "link.jsonl"
    link.symlink_to(ckpt)
    assert "--ckpt_path file itself" in _refused("--ckpt_path", ckpt, "--image_path", images, "--output", link)
    assert open(ckpt, "rb").read() == ckpt_bytes

    image = os.path.join(images, sorted(os.listdir(images))[0])
    image = os.path.join(image, sorted(os.listdir(image))[0])
    image_bytes = open(image, "rb").read()
    assert "input image" in _refused("--ckpt_path", ckpt, "--image_path", image, "--output", image)
    assert "input image" in _refused("--ckpt_path", ckpt, "--image_path", images, "--output", image)
    hard = tmp_path / "hard.jsonl"
    os.link(image, hard)
    assert "input image" in _refused("--ckpt_path", ckpt, "--image_path", images, "--output", hard)
    assert open(image, "rb").read() == image_bytes
    new_image = os.path.join(images, "predictions.jpg")  # a later run would read it as an image
    assert "inside --image_path" in _refused("--ckpt_path", ckpt, "--image_path", images, "--output", new_image)
    assert not os.path.exists(new_image)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    assert "--class_names file itself" in _refused("--ckpt_path", ckpt, "--image_path", images, "--class_names",
                                                    names, "--output", names)


def test_output_is_replaced_only_by_a_finished_run(demo, tmp_path, monkeypatch):
    out = tmp_path / "p.jsonl"
    out.write_text(PREVIOUS)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"not an image")
    rc, _, err = _main("--ckpt_path", demo["ckpt"], "--image_path", bad, "--output", out)
    assert rc == 1 and "not written" in err
    assert out.read_text() == PREVIOUS  # nothing predicted: the previous file is not emptied

    real = infer.predict

    def interrupted(*args, **kwargs):
        it = real(*args, **kwargs)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(infer, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _main("--ckpt_path", demo["ckpt"], "--image_path", demo["images"], "--output", out, "--batch_size", 1)
    assert out.read_text() == PREVIOUS and sorted(os.listdir(tmp_path)) == ["bad", "p.jsonl"]  # no temporary left
    monkeypatch.setattr(infer, "predict", real)

    inside = os.path.join(demo["images"], "predictions.jsonl")  # not an image name: allowed inside the folder
    try:
        rc, _, err = _main("--ckpt_path", demo["ckpt"], "--image_path", demo["images"], "--output", inside)
        assert rc == 0, err
        assert len(open(inside).read().splitlines()) == 6
    finally:
        os.remove(inside)
    rc, _, err = _main("--ckpt_path", demo["ckpt"], "--image_path", demo["images"], "--output", out)
    assert rc == 0 and len(out.read_text().splitlines()) == 6 and sorted(os.listdir(tmp_path)) == ["bad", "p.jsonl"]
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o600)  # an ordinary file, not the temporary's mode
    shutil.rmtree(bad)
