"""scripts/quantize.py (static INT8 for ONNX Runtime) and the .onnx paths of validate.py / infer.py (issue 19).

Scripts run as subprocesses, as a user runs them; the files are checked independently of the scripts' own report
(initializer types, metadata, predictions against the MindSpore checkpoint). Small model, tiny generated data.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mindcv

from conftest import ROOT, randomize, run_without_mindspore

import mindcv_ext
from mindcv_ext.data.demo import ensure_demo_dataset
from mindcv_ext.data.loaders import class_folders
from mindcv_ext.weights import save_weights

onnx = pytest.importorskip("onnx", reason="onnx not installed (optional 'onnx' extra)")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (optional 'onnx' extra)")


def run(script, *args, cwd):
    path = script if script == "validate.py" else os.path.join("scripts", script)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, path), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny ImageFolder set, a train-form checkpoint with non-trivial BN statistics and the set's class names,
    its fp32 export and its INT8 file."""
    root = tmp_path_factory.mktemp("q")
    data = ensure_demo_dataset(str(root / "data"), train_per_class=2, val_per_class=3)
    net = randomize(mindcv.create_model("demo_repmlp", num_classes=10), seed=5)
    ckpt = str(root / "train.ckpt")
    save_weights(net, ckpt, class_names=class_folders(data, "val"))
    rc, out, err = run("export.py", "--model", "demo_repmlp", "--ckpt_path", ckpt, "--file_format", "ONNX",
                       "--batch_size", 4, "--output", root / "fp32.onnx", cwd=root)
    assert rc == 0, out + err
    rc, out, err = run("quantize.py", "--model", "demo_repmlp", "--ckpt_path", ckpt, "--calib_dir",
                       os.path.join(data, "train"), "--calib_images", 16, "--batch_size", 4, "--output",
                       root / "int8.onnx", cwd=root)
    assert rc == 0, out + err
    return dict(root=root, data=data, ckpt=ckpt, fp32=str(root / "fp32.onnx"), int8=str(root / "int8.onnx"),
                log=out + err)


def test_int8_file_quantizes_the_weights_and_records_what_the_tools_need(work):
    from onnx import TensorProto, numpy_helper

    model = onnx.load(work["int8"])
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13  # per-channel DequantizeLinear (axis) needs 13
    ops = [n.op_type for n in model.graph.node]
    assert "DequantizeLinear" in ops and "QuantizeLinear" in ops
    int8 = sum(numpy_helper.to_array(t).size for t in model.graph.initializer
               if t.data_type == TensorProto.INT8 and numpy_helper.to_array(t).size > 1)
    deploy = mindcv.create_model("demo_repmlp", num_classes=10, deploy=True)
    params = sum(int(np.prod(p.shape)) for p in deploy.get_parameters() if "moving_" not in p.name)
    assert int8 >= 0.95 * params, (int8, params)  # >= 95% of the parameters stored as int8
    assert os.path.getsize(work["int8"]) <= 0.4 * os.path.getsize(work["fp32"])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "int8" and meta["model"] == "demo_repmlp"
    assert meta["written_by"] == "mindcv_ext quantize.py"
    assert json.loads(meta["class_names"]) == class_folders(work["data"], "val")
    assert json.loads(meta["input_shape"]) == [4, 3, 64, 64]
    assert json.loads(meta["quantization"])["calib_images"] == 16
    assert "float: conv_embedding.conv.conv (Conv" in work["log"] and "the stem" in work["log"]
    # each fc3 as a dense FC (int8) plus its conv taps as a depthwise conv (split_local; float): 30 weighted layers
    # + 1 per block, of which the stem and the tap convs stay float
    blocks = sum(len(stage) for stage in deploy.stages)
    assert f"int8: 29 of {30 + blocks} Conv / MatMul / Gemm weights" in work["log"]
    assert f"float: the {blocks} fc3 conv-tap convs" in work["log"] and "agreement" in work["log"]
    inits = {t.name: t.data_type for t in model.graph.initializer}
    local = [n for n in model.graph.node if n.op_type == "Conv" and n.name.endswith("repmlp_block.local")]
    assert len(local) == blocks and all(inits.get(n.input[1]) == TensorProto.FLOAT for n in local)
    fc3 = [n for n in model.graph.node if n.name.endswith("repmlp_block.fc3")]
    assert len(fc3) == blocks and not any(inits.get(n.input[1]) == TensorProto.FLOAT for n in fc3)  # int8 via DQ
    assert json.loads(meta["quantization"])["split_local"] is True
    assert json.loads(meta["quantization"])["fp32_layers"] == ["conv_embedding.conv.conv"] + [n.name for n in local]
    # ORT's advice to pre-process does not apply to export.py's folded graph; the user is not told to
    assert "pre-processing" not in work["log"]


def _validate(path, work, *extra):
    rc, out, err = run("validate.py", "--ckpt_path", path, "--data_dir", work["data"], "--batch_size", 7, *extra,
                       cwd=work["root"])
    assert rc == 0, out + err
    return json.loads(out.strip().splitlines()[-1])


def test_validate_runs_onnx_files_like_the_checkpoint(work):
    """The same network through MindSpore (the .ckpt) and ONNX Runtime (the fp32 file, static batch 4 fed batches
    of 7): the same top-1 and loss; the INT8 file close. --model is read from the file."""
    ckpt = _validate(work["ckpt"], work, "--model", "demo_repmlp")
    fp32 = _validate(work["fp32"], work)
    int8 = _validate(work["int8"], work)
    assert fp32["model"] == "demo_repmlp" and fp32["form"] == "deploy, ONNX fp32" and int8["form"] == "deploy, ONNX int8"
    assert fp32["num_samples"] == ckpt["num_samples"] == 30
    assert fp32["top1"] == ckpt["top1"] and fp32["top5"] == ckpt["top5"]
    assert abs(fp32["loss"] - ckpt["loss"]) < 1e-4
    assert abs(int8["loss"] - ckpt["loss"]) < 0.05 * ckpt["loss"]


def _predictions(path, work, name, mindspore=True):
    out_file = work["root"] / name
    args = ["--ckpt_path", path, "--image_path", os.path.join(work["data"], "val"), "--output", out_file]
    if mindspore:
        rc, out, err = run("infer.py", "--model", "demo_repmlp", *args, cwd=work["root"])
    else:
        rc, out, err = run_without_mindspore(os.path.join(ROOT, "scripts", "infer.py"), *args, cwd=work["root"])
    assert rc == 0, out + err
    return [json.loads(line)["top5"][0] for line in out_file.read_text().splitlines()]


def test_infer_runs_onnx_files_like_the_checkpoint_without_mindspore(work):
    """The .onnx files on a machine without MindSpore (ONNX Runtime, PIL and OpenCV only) predict what the
    checkpoint predicts through MindSpore: the same pixels (mindcv_ext.data.pixels) and the same network."""
    ckpt = _predictions(work["ckpt"], work, "ckpt.jsonl")
    fp32 = _predictions(work["fp32"], work, "fp32.jsonl", mindspore=False)
    int8 = _predictions(work["int8"], work, "int8.jsonl", mindspore=False)
    assert [p["index"] for p in fp32] == [p["index"] for p in ckpt]
    assert [p["class"] for p in fp32] == [p["class"] for p in ckpt] and ckpt[0]["class"]  # names from the file
    assert max(abs(a["prob"] - b["prob"]) for a, b in zip(fp32, ckpt)) < 1e-4
    agree = np.mean([a["index"] == b["index"] for a, b in zip(int8, fp32)])
    assert agree >= 0.9, agree


@pytest.mark.parametrize("case", ["missing", "empty", "not-an-image", "foreign-output"])
def test_bad_input_is_one_line_before_any_work(work, tmp_path, case):
    calib = tmp_path / "calib"
    output = tmp_path / "out.onnx"
    if case == "empty":
        calib.mkdir()
    elif case == "not-an-image":
        (calib / "a").mkdir(parents=True)
        (calib / "a" / "notes.jpg").write_text("not an image")
    elif case == "foreign-output":
        calib = os.path.join(work["data"], "train")
        output.write_bytes(b"someone else's file")
    rc, out, err = run("quantize.py", "--model", "demo_repmlp", "--ckpt_path", work["ckpt"], "--calib_dir", calib,
                       "--output", output, cwd=tmp_path)
    assert rc == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantize.py: error: "), err
    assert "calibrating" not in out
    expected = {"missing": "does not exist", "empty": "holds no image files", "not-an-image": "notes.jpg",
                "foreign-output": "--overwrite True"}[case]
    assert expected in lines[0]
    if case == "foreign-output":
        assert output.read_bytes() == b"someone else's file"
    else:
        assert not output.exists()


def test_fp32_layers_takes_shell_patterns_and_the_layer_report_lists_the_rest(work, tmp_path, monkeypatch):
    """'stem,*.ffn_fc1.conv' keeps the stem and every FFN's first conv in float (the t224 sensitivity measurements
    in docs/performance.md name layer groups, not single layers); everything else stays int8. --layer_report lists
    every int8 layer once, worst first, with the error it makes alone; one layer's figure is recomputed in NumPy."""
    from onnx import TensorProto

    out = tmp_path / "ffn_float.onnx"
    rc, log, err = run("quantize.py", "--model", "demo_repmlp", "--ckpt_path", work["ckpt"], "--calib_dir",
                       os.path.join(work["data"], "train"), "--calib_images", 8, "--batch_size", 4,
                       "--fp32_layers", "stem,*.ffn_fc1.conv", "--layer_report", 1000, "--output", out, cwd=tmp_path)
    assert rc == 0, log + err
    model = onnx.load(str(out))
    inits = {t.name: t.data_type for t in model.graph.initializer}
    fc1 = [n for n in model.graph.node if n.op_type == "Conv" and n.name.endswith("ffn_fc1.conv")]
    assert fc1 and all(inits.get(n.input[1]) == TensorProto.FLOAT for n in fc1)  # weight read as float
    stayed = json.loads({p.key: p.value for p in model.metadata_props}["quantization"])["fp32_layers"]
    local = [n.name for n in model.graph.node if n.name.endswith("repmlp_block.local")]
    assert sorted(stayed) == sorted(["conv_embedding.conv.conv"] + [n.name for n in fc1] + local)
    assert log.count("kept by --fp32_layers") == len(fc1)

    import re
    rows = {m[0]: (m[1], float(m[2])) for m in
            re.findall(r"^  (\S+) \((\w+), [\d.]+ KiB float\): (-?[\d.]+|-?inf) dB$", log, re.M)}
    int8 = [n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and n.name not in stayed]
    assert int8 and sorted(rows) == sorted(int8), log
    assert [v[1] for v in rows.values()] == sorted(v[1] for v in rows.values())  # worst first

    # One layer by hand in NumPy: stage 0's ffn_fc2 (a 1x1 conv) on the float model's input to it, with the INT8
    # file's scales, zero points and int8 / int32 values, against the same conv in float.
    from onnx import numpy_helper
    monkeypatch.syspath_prepend(os.path.join(ROOT, "scripts"))
    import quantize
    from mindcv_ext.config import KEYS

    files = quantize.calibration_files(os.path.join(work["data"], "train"), 8)
    images = quantize.preprocess(files, 64, KEYS["crop_pct"][0], KEYS["interpolation"][0], KEYS["mean"][0],
                                 KEYS["std"][0])
    layer = "stages.0.0.ffn_block.ffn_fc2.conv"
    fmodel = onnx.load(work["fp32"])
    fnode = next(n for n in fmodel.graph.node if n.name == layer)
    fmodel.graph.output.append(onnx.helper.make_tensor_value_info(fnode.input[0], TensorProto.FLOAT, None))
    path = str(tmp_path / "with_input.onnx")
    onnx.save(fmodel, path)
    import onnxruntime
    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    x = np.concatenate([sess.run([fnode.input[0]], {feed: images[i:i + 4]})[0] for i in (0, 4)]).astype(np.float64)
    finits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in fmodel.graph.initializer}
    w, b = finits[fnode.input[1]][:, :, 0, 0], finits[fnode.input[2]]
    by_hand = _conv_alone_db(model, layer, x, w, b)
    assert abs(rows[layer][1] - by_hand) < 0.1, (rows[layer], by_hand)
    assert f"--fp32_layers 'conv_embedding.conv.conv," in log


def test_layer_report_judges_each_layer_on_its_float_input(tmp_path, monkeypatch):
    """Two int8 convs in a row (A feeds B with nothing between): the rounding of A's output is B's input rounding.
    B's figure must be B alone on A's float output, as NumPy computes it from the file's scales and int8 values,
    not B fed A's rounded output."""
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.syspath_prepend(os.path.join(ROOT, "scripts"))
    import quantize

    rng = np.random.default_rng(0)
    w_a, w_b = (rng.standard_normal((4, 4, 1, 1)).astype(np.float32) for _ in range(2))
    b_a, b_b = (rng.standard_normal(4).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
             helper.make_node("Conv", ["a", "wb", "bb"], ["y"], name="B")]
    inits = [numpy_helper.from_array(v, n) for n, v in (("wa", w_a), ("ba", b_a), ("wb", w_b), ("bb", b_b))]
    graph = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])], inits)
    fp32, int8 = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), fp32)
    images = rng.standard_normal((8, 4, 6, 6)).astype(np.float32)
    quantize.quantize(fp32, int8, images, 2, "minmax", [])
    rows, skipped = quantize.layer_errors(fp32, int8, images, 2)
    assert skipped == 0 and sorted(r[0] for r in rows) == ["A", "B"]

    a = _conv1x1(images.astype(np.float64), w_a[:, :, 0, 0], b_a)  # A's float output: B's input
    by_hand = _conv_alone_db(onnx.load(int8), "B", a, w_b[:, :, 0, 0], b_b)
    assert abs(dict((r[0], r[3]) for r in rows)["B"] - by_hand) < 0.05, (rows, by_hand)


def _conv1x1(x, w, b):
    return np.einsum("oc,nchw->nohw", np.asarray(w, np.float64), x) + np.asarray(b, np.float64).reshape(1, -1, 1, 1)


def _conv_alone_db(qmodel, layer, x, w, b):
    """SQNR (dB) of int8 1x1 conv `layer` of a QDQ file alone, by hand in NumPy: its float input x rounded with the
    file's input scale, the file's int8 weights and int32 bias times their scales, the output rounded with the
    file's output scale, against the float conv (w, b)."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    node = next(n for n in qmodel.graph.node if n.name == layer)
    dq_x, dq_w, dq_b = (producer[i] for i in node.input)
    q_out = next(n for n in qmodel.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.output[0])

    def qdq(v, q):  # uint8 per tensor, as QuantizeLinear + DequantizeLinear
        scale, zero = float(inits[q.input[1]]), float(inits[q.input[2]])
        return (np.clip(np.round(v / scale) + zero, 0, 255) - zero) * scale

    wq = inits[dq_w.input[0]][:, :, 0, 0].astype(np.float64) * inits[dq_w.input[1]].reshape(-1, 1)
    bq = inits[dq_b.input[0]].astype(np.float64) * inits[dq_b.input[1]]
    ref = _conv1x1(x, w, b)
    got = qdq(_conv1x1(qdq(x, producer[dq_x.input[0]]), wq, bq), q_out)
    return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())
