"""mindcv_ext.weights, the one path from a weight file to a network: value checks (float, finite), the head
policy for fine-tuning, form and variant refusals, and class names that travel with the weights."""
import json
import os

import mindcv
import mindspore as ms
import numpy as np
import pytest
from conftest import ROOT, images, randomize

import mindcv_ext
from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.weights import build_model, read_weights, save_weights

NAMES = ["cat", "dog", "émeu", "zebra"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    net = randomize(mindcv.create_model("demo_repmlp", num_classes=4), seed=3)
    path = str(d / "w.ckpt")
    save_weights(net, path, NAMES)
    return net, path, d


def _params(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


@pytest.mark.parametrize("fmt", [".ckpt", ".safetensors"])
def test_non_float_and_non_finite_weights_are_refused_with_their_keys(src, fmt):
    net, _, d = src
    good = _params(net)
    for bad_key, value, what in (("stages.0.0.prebn1.gamma", np.ones(8, np.int32), "non-float"),
                                 ("head.bias", np.zeros(4, np.bool_), "non-float"),
                                 ("stages.1.0.ffn_block.ffn_fc1.conv.weight", None, "NaN")):
        params = dict(good)
        if value is None:
            value = params[bad_key].copy()
            value.flat[3] = np.nan
        params[bad_key] = value
        path = str(d / f"bad{fmt}")
        # MindSpore's own writer: the project's save_checkpoint refuses non-finite weights already.
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], path,
                           format=fmt.lstrip("."))
        with pytest.raises(CheckpointError, match=what) as e:
            mindcv.create_model("demo_repmlp", num_classes=4, checkpoint_path=path)
        assert bad_key in str(e.value)


def test_new_head_keeps_the_backbone_and_says_so(src):
    net, path, _ = src
    lines = []
    ft, w = build_model("demo_repmlp", path, num_classes=7, new_head=True, log=lines.append)
    assert w.num_classes == 4 and ft.head.weight.shape == (7, 128)
    assert len(lines) == 1 and "4 classes" in lines[0] and "7" in lines[0] and "freshly initialized" in lines[0]
    mine, theirs = _params(ft), _params(net)
    assert all(np.array_equal(mine[k], theirs[k]) for k in theirs if not k.startswith("head."))
    # Backbone features (everything before the classifier) are the source's.
    x = images(2, (64, 64))
    for n in (ft, net):
        n.set_train(False)
    np.testing.assert_array_equal(ft.forward_features(x).asnumpy(), net.forward_features(x).asnumpy())

    with pytest.raises(CheckpointError, match="4-class classifier but num_classes is 7"):
        build_model("demo_repmlp", path, num_classes=7)  # without new_head: strict
    with pytest.raises(CheckpointError, match="holds demo_repmlp weights, not repmlp_t224"):
        build_model("repmlp_t224", path, num_classes=7, new_head=True)


def test_new_head_is_the_only_exception(src):
    net, _, d = src
    params = _params(net)
    del params["stages.2.0.prebn2.beta"]
    path = str(d / "partial.ckpt")
    mindcv_ext.save_checkpoint({k: ms.Tensor(v) for k, v in params.items()}, path)
    with pytest.raises(CheckpointError, match=r"1 missing: stages.2.0.prebn2.beta"):
        build_model("demo_repmlp", path, num_classes=7, new_head=True, log=lambda s: None)


def test_deploy_form_cannot_be_fine_tuned(src):
    net, path, d = src
    deploy, _ = build_model("demo_repmlp", path)
    deploy.set_train(False)
    mindcv_ext.reparameterize(deploy)
    dpath = str(d / "deploy.ckpt")
    save_weights(deploy, dpath)
    with pytest.raises(CheckpointError, match="deploy-form.*cannot be trained.*re-parameterize the result"):
        build_model("demo_repmlp", dpath, num_classes=7, new_head=True, form="train")


@pytest.mark.parametrize("fmt", [".ckpt", ".safetensors"])
def test_class_names_survive_reparameterize_and_convert(src, fmt):
    import subprocess
    import sys

    _, path, d = src
    assert read_weights(path).class_names == NAMES
    out = str(d / f"deploy_by_script{fmt}")  # not deploy.ckpt: another test wrote that, and the script keeps it
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reparameterize.py"), "--model",
                        "demo_repmlp", "--ckpt_path", path, "--output", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_weights(out).form == "deploy" and read_weights(out).class_names == NAMES
    conv = str(d / f"conv{fmt}")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_weights.py"), "--model",
                        "demo_repmlp", "--src", out, "--output", conv], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_weights(conv).class_names == NAMES
    # The output may not replace the input.
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reparameterize.py"), "--model",
                        "demo_repmlp", "--ckpt_path", path, "--output", path], capture_output=True, text=True)
    assert r.returncode != 0 and "is the train-form checkpoint itself" in r.stdout + r.stderr
    assert read_weights(path).form == "train"


def test_damaged_class_names_entry_is_an_error(src):
    net, _, d = src
    path = str(d / "names.ckpt")
    mindcv_ext.save_checkpoint(net, path, append_dict={"class_names": "not json ["})
    with pytest.raises(CheckpointError, match="class_names.*not a JSON list"):
        read_weights(path)
    json.dumps(NAMES)  # (names with non-ASCII characters are stored as UTF-8 JSON)


def test_unwritable_outputs_are_refused_before_any_work(src, tmp_path):
    import subprocess
    import sys

    from mindcv_ext.checkpoint import check_output_path

    _, path, _ = src
    (tmp_path / "adir.ckpt").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        check_output_path(str(tmp_path / "adir.ckpt"))
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        check_output_path(os.path.join(path, "x.ckpt"))
    assert check_output_path(str(tmp_path / "new" / "sub" / "x.ckpt")).endswith("x.ckpt")  # created on save
    for script, args in (("reparameterize.py", ["--ckpt_path", path, "--output", str(tmp_path / "adir.ckpt")]),
                         ("convert_weights.py", ["--src", path, "--output", str(tmp_path / "adir.ckpt")]),
                         ("export.py", ["--ckpt_path", path, "--file_format", "MINDIR", "--output",
                                        os.path.join(path, "x.mindir")])):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--model", "demo_repmlp", *args],
                           capture_output=True, text=True, timeout=120)
        lines = [line for line in r.stderr.splitlines() if "error" in line]
        assert r.returncode == 2 and len(lines) == 1 and "--output" in lines[0], r.stderr
        assert "train vs deploy" not in r.stdout  # refused before loading or converting anything
