"""scripts/infer.py: the pixels and logits are validate.py's; top-5 names and probabilities from the checkpoint, a
names file or indices; train and deploy forms agree; bad files are skipped, bad input stops with one line."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import mindspore as ms
from mindspore import ops
import numpy as np
import pytest
from PIL import Image

import mindcv
import mindcv_ext
from mindcv_ext.data import create_eval_loader
from mindcv_ext.data.loaders import eval_transforms
from mindcv_ext.verify import perturb_bn
from _train_utils import DEMO_RECIPE, ROOT, make_data

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import infer  # noqa: E402

NAMES6 = ["cat", "dog", "bird", "fish", "frog", "horse"]
NAMES10 = [f"class {i}" for i in range(10)]


def _net(num_classes, seed, data):
    """demo_repmlp with randomized BNs and a random head on standardized features: an untrained RepMLPNet
    predicts one class for every image, which would make comparisons of rankings meaningless."""
    ms.set_seed(seed)
    net = mindcv.create_model("demo_repmlp", num_classes=num_classes)
    perturb_bn(net, seed)  # non-identity BNs: the deploy form's fusion has real work to do
    net.set_train(False)
    loader, _ = create_eval_loader(data, batch_size=16, image_size=64, num_parallel_workers=1)
    x = ms.Tensor(next(loader.create_tuple_iterator(output_numpy=True))[0])
    feats = ops.mean(net.head_norm(net.forward_features(x)), (2, 3)).asnumpy().astype(np.float64)
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    w = np.random.default_rng(seed).normal(0, 0.3, (num_classes, feats.shape[1])) / sd
    net.head.weight.set_data(ms.Tensor(w.astype(np.float32)))
    net.head.bias.set_data(ms.Tensor((-w @ mu).astype(np.float32)))
    return net


def _one_image_folder(root, src):
    """An ImageFolder (root/val/x/<image>) holding only `src`: what validate.py would read for that image."""
    os.makedirs(os.path.join(root, "val", "x"))
    shutil.copy(src, os.path.join(root, "val", "x", os.path.basename(src)))
    return root


def _validate_pipeline(root, fn):
    loader, _ = create_eval_loader(root, batch_size=1, image_size=64, crop_pct=0.875, interpolation="bilinear",
                                   num_parallel_workers=1)
    return [fn(x) for x, _ in loader.create_tuple_iterator(output_numpy=True)][0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer")
    data = make_data(tmp / "data")
    images = tmp / "images"
    shutil.copytree(os.path.join(data, "val"), images / "val")  # class folders: found recursively
    square = str(images / "val" / "00_circle" / "00_00000.jpg")
    deeper = images / "more" / "deeper"
    deeper.mkdir(parents=True)
    with Image.open(square) as im:  # not square: the short-side resize and centre crop matter
        im.resize((90, 70)).save(deeper / "wide.PNG")
    wide = str(deeper / "wide.PNG")
    jpeg = (images / "val" / "01_square" / "01_00001.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (images / "more" / "corrupt.jpg").write_bytes(jpeg[:20] + bytes(range(256)) * 4)
    (images / "notes.txt").write_text("not an image, and not named like one: ignored\n")

    ms.set_context(mode=ms.PYNATIVE_MODE)
    net6 = _net(6, 0, data)
    ref = {}  # validate.py's logits for two images: through create_eval_loader on one-image ImageFolders
    for i, path in enumerate([square, wide]):
        root = _one_image_folder(str(tmp / f"one{i}"), path)
        ref[path] = _validate_pipeline(root, lambda x: net6(ms.Tensor(x)).asnumpy()[0])
    ckpt = dict(
        named6=mindcv_ext.save_checkpoint(net6, str(tmp / "named6.ckpt"),
                                          append_dict={"class_names": json.dumps(NAMES6)}),
        plain4=mindcv_ext.save_checkpoint(_net(4, 1, data), str(tmp / "plain4.ckpt")),
        named10=mindcv_ext.save_checkpoint(_net(10, 2, data), str(tmp / "named10.ckpt"),
                                           append_dict={"class_names": json.dumps(NAMES10)}))
    mindcv_ext.reparameterize(net6)
    ckpt["deploy6"] = mindcv_ext.save_checkpoint(net6, str(tmp / "deploy6.ckpt"),
                                                 append_dict={"class_names": json.dumps(NAMES6)})
    return dict(tmp=tmp, images=str(images), square=square, wide=wide, ref=ref, ckpt=ckpt, data=data)


def _main(*args, code=0):
    """infer.main in this process (PyNative): (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = infer.main(["--model", "demo_repmlp", "--mode", "1", *map(str, args)])
    assert rc == code, err.getvalue()[-3000:]
    return out.getvalue(), err.getvalue()


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return {r["path"]: r for r in map(json.loads, f)}


def _assert_same_top5(a, b, atol=1e-5):
    """Same files, same ranking, probabilities equal up to fp32 rounding (batch sizes or forms differ)."""
    assert set(a) == set(b)
    for path in a:
        assert [t["index"] for t in a[path]["top5"]] == [t["index"] for t in b[path]["top5"]]
        assert [t["class"] for t in a[path]["top5"]] == [t["class"] for t in b[path]["top5"]]
        np.testing.assert_allclose([t["prob"] for t in a[path]["top5"]], [t["prob"] for t in b[path]["top5"]],
                                   atol=atol)


def _run_folder(setup, ckpt, name):
    out_file = setup["tmp"] / f"{name}.jsonl"
    out, err = _main("--ckpt_path", setup["ckpt"][ckpt], "--image_path", setup["images"], "--output",
                     out_file, "--batch_size", "5")
    return out, err, _rows(out_file)


@pytest.fixture(scope="module")
def train_run(setup):
    """The train-form run over the folder (shared: the deploy test compares against it)."""
    return _run_folder(setup, "named6", "train6")


def test_pixels_and_logits_are_validate_pipelines(setup):
    """The same tensors reach the network as through validate.py's create_eval_loader (an exact match of the
    preprocessed pixels, JPEG and non-square PNG), and the same logits come out."""
    net = mindcv_ext.build_model("demo_repmlp", setup["ckpt"]["named6"])[0]
    net.set_train(False)
    transforms = eval_transforms(64, 0.875, "bilinear")
    for i, path in enumerate([setup["square"], setup["wide"]]):
        root = str(setup["tmp"] / f"one{i}")
        pixels = list(infer.predict(lambda x: x, [path], transforms, 4, 1, lambda p, r: pytest.fail(r)))
        np.testing.assert_array_equal(pixels[0][1], _validate_pipeline(root, lambda x: x))
        (index, logits), = infer.predict(net, [path], transforms, 4, 1, lambda p, r: pytest.fail(r))
        assert index == [0] and logits.shape == (1, 6)
        np.testing.assert_allclose(logits[0], setup["ref"][path], rtol=1e-6, atol=1e-6)


def test_folder_with_names_from_checkpoint_and_bad_files(setup, train_run):
    out, err, rows = train_run
    assert len(rows) == 17 and setup["wide"] in rows  # 16 class-folder JPEGs + the PNG two levels down
    for path, row in rows.items():
        assert set(row) == {"path", "top5"} and len(row["top5"]) == 5
        assert all(set(t) == {"index", "class", "prob"} for t in row["top5"])
        assert [t["class"] for t in row["top5"]] == [NAMES6[t["index"]] for t in row["top5"]]
        probs = [t["prob"] for t in row["top5"]]
        assert probs == sorted(probs, reverse=True) and 0.5 < sum(probs) < 1.0  # 5 of 6 classes
    assert len({r["top5"][0]["index"] for r in rows.values()}) > 1  # predictions depend on the image
    for path, logits in setup["ref"].items():  # probabilities: a NumPy softmax of validate's logits
        p = np.exp(logits.astype(np.float64) - logits.max())
        p /= p.sum()
        top = rows[path]["top5"]
        assert [t["index"] for t in top] == list(np.argsort(-p)[:5])
        # batches of 5 here, of 1 in the reference: CPU kernels block differently, so fp32 rounding differs
        np.testing.assert_allclose([t["prob"] for t in top], np.sort(p)[::-1][:5], atol=2e-5)
    lines = out.strip().splitlines()  # stdout: one line per image, `path: name (index) prob | ...`
    assert sorted(ln.split(": ", 1)[0] for ln in lines) == sorted(rows)
    first = rows[lines[0].split(": ", 1)[0]]["top5"][0]
    assert lines[0].split(": ", 1)[1].startswith(f"{first['class']} ({first['index']}) {first['prob']:.4f} | ")
    assert "recorded in the checkpoint" in err
    skipped = [ln for ln in err.splitlines() if ln.startswith("skipped ")]
    assert len(skipped) == 2, err
    assert any("truncated.jpg: truncated JPEG" in ln for ln in skipped)
    assert any("corrupt.jpg: corrupt JPEG" in ln for ln in skipped)
    assert "notes.txt" not in err
    assert "17 image(s) predicted, 2 skipped" in err and "[19/19]" in err  # progress counts every file


def test_deploy_form_gives_the_train_forms_top5(setup, train_run):
    _, err, deploy = _run_folder(setup, "deploy6", "deploy6")
    _, _, train = train_run
    assert "deploy form" in err and len(deploy) == 17
    _assert_same_top5(deploy, train)


def test_single_image_indices_and_class_names_file(setup):
    tmp, image = setup["tmp"], setup["square"]
    out, err = _main("--ckpt_path", setup["ckpt"]["plain4"], "--image_path", image, "--output",
                     tmp / "one.jsonl")
    (row,) = _rows(tmp / "one.jsonl").values()
    assert row["path"] == image and len(row["top5"]) == 4  # min(5, num_classes)
    assert all(t["class"] is None for t in row["top5"])  # no names anywhere: indices, class null
    assert sum(t["prob"] for t in row["top5"]) == pytest.approx(1.0, abs=1e-9)
    assert "#" in out and "none (indices" in err and "1 image(s) predicted, 0 skipped" in err

    names = tmp / "names4.txt"
    names.write_text("\ufeffapple\nbanana split\ncherry\ndate\n", encoding="utf-8")  # BOM, spaces in a name
    _main("--ckpt_path", setup["ckpt"]["plain4"], "--image_path", image, "--class_names", names,
          "--output", tmp / "one.jsonl")
    (named,) = _rows(tmp / "one.jsonl").values()
    lookup = ["apple", "banana split", "cherry", "date"]
    assert [t["class"] for t in named["top5"]] == [lookup[t["index"]] for t in named["top5"]]
    assert named["top5"] == [dict(t, **{"class": lookup[t["index"]]}) for t in row["top5"]]

    names6 = tmp / "names6.txt"  # a file replaces the checkpoint's names, with a note
    names6.write_text("\n".join(f"n{i}" for i in range(6)) + "\n", encoding="utf-8")
    out, err = _main("--ckpt_path", setup["ckpt"]["named6"], "--image_path", image, "--class_names", names6)
    assert "replaces" in err and " n" in out and "cat" not in out


def _error(*args, code=2):
    _, err = _main(*args, code=code)
    lines = [ln for ln in err.strip().splitlines() if "error:" in ln]
    assert len(lines) == 1 and lines[0].startswith("scripts/infer.py: error: "), err
    if code == 2:  # bad input: nothing but the error line
        assert len(err.strip().splitlines()) == 1, err
    return lines[0]


def test_bad_input(setup, tmp_path):
    ckpt, images = setup["ckpt"]["plain4"], setup["images"]
    assert "no images given" in _error("--ckpt_path", ckpt)
    assert "does not exist" in _error("--ckpt_path", ckpt, "--image_path", tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "a.txt").write_text("x")
    assert "no image files" in _error("--ckpt_path", ckpt, "--image_path", tmp_path / "empty")
    assert "checkpoint not found" in _error("--ckpt_path", tmp_path / "no.ckpt", "--image_path", images)
    assert "unknown model" in _error("--ckpt_path", ckpt, "--image_path", images, "--model", "repmlp_x9")
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    assert "has 3 lines but" in _error("--ckpt_path", ckpt, "--image_path", images, "--class_names", three)
    assert "not found" in _error("--ckpt_path", ckpt, "--image_path", images, "--class_names",
                                 tmp_path / "none.txt")
    assert "does not exist" in _error("--ckpt_path", ckpt, "--image_path", images, "--output",
                                      tmp_path / "no_dir" / "x.jsonl")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"GIF89a" + bytes(100))
    (bad / "y.png").write_bytes(b"")
    err = _error("--ckpt_path", ckpt, "--image_path", bad, code=1)  # read, but no image could be used
    assert "none of the 2 image file(s)" in err


def test_a_file_mindspore_refuses_after_the_checks_costs_only_that_file(setup, monkeypatch, tmp_path):
    """If a file passes the checks but MindSpore's decoder refuses it, the batched pipeline stops; the rest is
    still predicted (the offender found image by image, then batches again) and the results are unchanged."""
    folder = tmp_path / "imgs"
    shutil.copytree(os.path.join(setup["data"], "val", "00_circle"), folder)
    (folder / "00_00001b.jpg").write_bytes(b"not a JPEG at all")
    real = infer.read_image
    monkeypatch.setattr(infer, "read_image", lambda p: (open(p, "rb").read(), None) if p.endswith("1b.jpg")
                        else real(p))
    monkeypatch.chdir(tmp_path)
    _, err = _main("--ckpt_path", setup["ckpt"]["plain4"], "--image_path", folder, "--batch_size", "2",
                   "--output", tmp_path / "o.jsonl")
    rows = _rows(tmp_path / "o.jsonl")
    assert len(rows) == 4 and "00_00001b.jpg: MindSpore cannot decode it" in err and "1 skipped" in err
    monkeypatch.setattr(infer, "read_image", real)
    _main("--ckpt_path", setup["ckpt"]["plain4"], "--image_path", folder, "--output", tmp_path / "p.jsonl")
    _assert_same_top5(_rows(tmp_path / "p.jsonl"), rows)  # batches of 2 and 32: fp32 rounding only


def test_command_line_with_the_recipe(setup, tmp_path):
    """As users run it: `-c` the demo recipe (graph mode, its crop_pct and image size), in a fresh process; a bad
    command exits 2 with one line. The results match an in-process PyNative run."""
    script = os.path.join(ROOT, "scripts", "infer.py")
    ckpt, out = setup["ckpt"]["named10"], tmp_path / "recipe.jsonl"
    procs = [subprocess.Popen([sys.executable, script, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for args in (["-c", DEMO_RECIPE, "--ckpt_path", ckpt, "--image_path", setup["images"], "--output", out,
                           "--num_parallel_workers", "1"],
                          ["-c", DEMO_RECIPE, "--ckpt_path", ckpt])]
    (good_out, good_err), (bad_out, bad_err) = [p.communicate(timeout=300) for p in procs]
    assert procs[0].returncode == 0, good_err[-3000:]
    assert procs[1].returncode == 2 and bad_err.strip().splitlines() == [
        "scripts/infer.py: error: no images given: pass --image_path photo.jpg, or --image_path a folder of "
        "images."], bad_err
    assert "64x64, crop_pct 0.875, bilinear" in good_err and "17 image(s) predicted, 2 skipped" in good_err
    graph = _rows(out)
    # A reader that stops after the first line (`| head -1`): no error line, no traceback, a non-zero exit.
    proc = subprocess.Popen([sys.executable, script, "-c", DEMO_RECIPE, "--ckpt_path", ckpt, "--image_path",
                             setup["images"], "--num_parallel_workers", "1", "--batch_size", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 1 and first.endswith("\n"), err[-3000:]
    assert "error" not in err.lower() and "Traceback" not in err, err[-3000:]
    _main("--ckpt_path", ckpt, "--image_path", setup["images"], "--output", tmp_path / "pynative.jsonl")
    pynative = _rows(tmp_path / "pynative.jsonl")
    assert len(graph) == 17
    assert all([t["class"] for t in r["top5"]] == [NAMES10[t["index"]] for t in r["top5"]] for r in graph.values())
    _assert_same_top5(graph, pynative)
