"""bench/: the benchmark driver and its table (smoke test on the demo model; nothing here asserts on speed)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

BENCH = os.path.join(ROOT, "bench")


def run_bench(name, *args, cwd):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_benchmark_plan_skips_what_cannot_run(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import benchmark

    args = benchmark.parse_args(["--models", "demo_repmlp", "--dtypes", "fp32,fp16", "--baselines", "mindcv"])
    info = {"models": {"demo_repmlp": {"image_size": 64, "arch": None}}, "mindcv_own": ["repmlp_t224"]}
    plan = {(c["impl"], c["form"], c["task"], c["dtype"]): skip for c, skip in benchmark.configs(args, info)}
    assert plan[("ours", "deploy", "inference", "fp16")] is None  # measured (with a note) on CPU
    assert "overflow-status" in plan[("ours", "train", "train_step", "fp16")]
    assert plan[("mindcv", "train", "inference", "fp32")] == "mindcv 0.3.0 has no demo_repmlp"
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--dtypes", "int8"])


def _installed(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _demo_deploy_gemm_flops_per_image():
    """By hand from demo_repmlp's architecture: every matmul of its deploy forward, 2 x multiply-adds per image."""
    channels, blocks, size = (16, 32, 64, 128), (1, 1, 2, 1), 64
    macs = (size // 4) ** 2 * channels[0] * 3 * 4 * 4  # 4x4/4 stem
    for i, (c, n) in enumerate(zip(channels, blocks)):
        hw = (size // 4 // 2 ** i) ** 2
        # fc3 (one hw x hw FC per channel's map), FFN 1x1 convs (c -> 4c -> c), perceptron fc1/fc2 (c -> c/4 -> c)
        # on the pooled vector, the pooling itself (a ones-vector matmul over hw)
        macs += n * (c * hw * hw + 2 * c * 4 * c * hw + 2 * c * (c // 4) + c * hw)
        if i + 1 < len(channels):
            macs += hw // 4 * channels[i + 1] * c * 2 * 2  # 2x2/2 downsampling
    macs += channels[-1] * (size // 32) ** 2 + channels[-1] * 1000  # head: pooling + classifier
    return 2 * macs


def test_benchmark_rows_schema_ort_and_own_shape_bound(tmp_path):
    """One small run of every kind of row: this project's inference and training step, the PyTorch baseline, ONNX
    Runtime on the files export.py and quantize.py write, and the own-shape bound in both frameworks."""
    out = tmp_path / "bench.jsonl"
    torch = ",torch" if _installed("torch") else ""
    ort = ",ort" if _installed("onnxruntime") and _installed("onnx") else ""  # the optional 'onnx' extra
    rc, log = run_bench("benchmark.py", "--models", "demo_repmlp", "--batch_sizes", 2, "--forms", "deploy",
                        "--tasks", "inference,train_step", "--dtypes", "fp32", "--warmup", 0, "--iters", 1,
                        "--baselines", "shapes" + ort + torch, "--calib_images", 10, "--output", out,
                        "--markdown", "True", cwd=tmp_path)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {("ours", "deploy", "inference", "fp32"), ("ours", "train", "train_step", "fp32"),
                ("shapes-mindspore", "deploy", "gemm-shapes", "fp32")}
    if ort:
        expected |= {("ort", "deploy", "inference", "fp32"), ("ort", "deploy", "inference", "int8"),
                     ("shapes-ort", "deploy", "gemm-shapes", "fp32")}
    if torch:
        expected |= {("torch", "deploy", "inference", "fp32"), ("torch", "train", "train_step", "fp32")}
    rows = {(r["impl"], r["form"], r["task"], r["dtype"]): r for r in recs}
    assert set(rows) == expected and len(recs) == len(expected), log
    for r in recs:
        assert r["schema"] == "repmlp-bench/1" and r["status"] == "ok", r
        assert r["model"] == "demo_repmlp" and r["batch_size"] == 2
        m = r["machine"]
        assert m["cores"] >= 1 and m["cpu_model"] and m["mindspore"] and m["device_target"] == "CPU"
        if r["task"] == "gemm-shapes":
            continue
        assert r["throughput_img_s"] > 0 and r["throughput_p50_img_s"] > 0 and r["peak_rss_mib"] > 0
        assert set(r["latency_ms"]) >= {"mean", "p50", "p90", "p99", "min", "max"}
        assert isinstance(r["loadavg_1m_before"], float)
        assert "other_cpu_cores" in r["cpu_during_timed_loop"]
        if r["impl"] == "torch":
            assert r["impl_label"] == "PyTorch reimplementation of the official RepMLPNet (not the authors' file)"
            assert r["compile_s"] is None and r["device_target"] == "CPU"
        elif r["impl"] == "ours":
            assert r["mode"] == "graph" and r["compile_s"] is not None
    # The bound's shapes come from the compiled graph (profiler): exactly the model's matmuls (a hand count).
    bound = rows[("shapes-mindspore", "deploy", "gemm-shapes", "fp32")]
    assert bound["gemm_flops_per_image"] == _demo_deploy_gemm_flops_per_image()
    assert bound["framework"] == "mindspore"
    assert rc == 0, log
    assert "| this project | demo_repmlp | deploy | inference | fp32 | 2 |" in log  # --markdown table
    assert "| MindSpore | demo_repmlp | 2 |" in log  # bound row
    if ort:  # the same shapes timed in ONNX Runtime; ORT rows run export.py's and quantize.py's files
        ort_bound = rows[("shapes-ort", "deploy", "gemm-shapes", "fp32")]
        assert [(g["op"], g["gemm"], g["count"]) for g in ort_bound["gemms"]] == \
            [(g["op"], g["gemm"], g["count"]) for g in bound["gemms"]]
        assert ort_bound["framework"] == "onnxruntime" and ort_bound["mode"] == "onnxruntime"
        assert rows[("ort", "deploy", "inference", "fp32")]["onnx_file"] == "demo_repmlp_b2.onnx"
        assert "| ONNX Runtime | demo_repmlp | deploy | inference | fp32 | 2 |" in log
        assert "| ONNX Runtime | demo_repmlp | 2 |" in log
    assert sorted(os.listdir(tmp_path)) == ["bench.jsonl"]  # weights and ONNX files went to a temporary dir


def _rec(impl, ips, rnd, framework="mindspore", dtype="fp32", task="inference", **kw):
    return dict(dict(status="ok", impl=impl, framework=framework, run_id="r", round=rnd, model="m", batch_size=8,
                     task=task, form="deploy", dtype=dtype, throughput_img_s=ips, throughput_p50_img_s=ips,
                     latency_ms={"p50": 8000 / ips}, machine={}), **kw)


BOUND = dict(gemms=[dict(count=2)], bound_ms=320.0, gemm_flops_per_image=5e9)


def test_table_pairs_rows_of_the_same_round(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import bench_table

    recs = [_rec("ours", 20.0, 0), _rec("ort", 16.0, 0, "onnxruntime"), _rec("ort", 32.0, 0, "onnxruntime", "int8"),
            dict(_rec("shapes-mindspore", 1, 0, task="gemm-shapes"), bound_img_s=25.0, **BOUND),
            _rec("ours", 10.0, 1), _rec("ort", 10.0, 1, "onnxruntime"), _rec("ort", 15.0, 1, "onnxruntime", "int8"),
            dict(_rec("shapes-mindspore", 1, 1, task="gemm-shapes"), bound_img_s=20.0, **BOUND),
            dict(_rec("shapes-ort", 1, 1, "onnxruntime", task="gemm-shapes"), bound_img_s=12.5, **BOUND)]
    bounds = {("r", r["round"], r["framework"], "m", 8): r for r in recs if r["task"] == "gemm-shapes"}
    # Each round against its own bound in its own framework: 20/25 and 10/20, never 20/20; ORT fp32 10/12.5.
    assert [bench_table.shapes_bound_fraction(r, bounds) for r in recs if r["impl"] == "ours"] == [0.8, 0.5]
    assert bench_table.shapes_bound_fraction(recs[5], bounds) == 0.8
    assert bench_table.shapes_bound_fraction(recs[1], bounds) is None  # no ORT bound in round 0
    assert bench_table.shapes_bound_fraction(recs[6], bounds) is None  # INT8: the bound is fp32
    # A tiny model's matmuls can all take less than a call's fixed cost: the worker records no bound (None), and
    # neither the fraction nor the console line divides by it.
    zero = dict(_rec("shapes-mindspore", 1, 0, task="gemm-shapes"), **dict(BOUND, bound_ms=0.0), bound_img_s=None)
    assert bench_table.shapes_bound_fraction(recs[0], {("r", 0, "mindspore", "m", 8): zero}) is None
    monkeypatch.syspath_prepend(BENCH)
    import benchmark
    assert "every matmul below a call's fixed cost" in benchmark.describe(dict(zero, form="deploy"))
    for r in recs:
        r.update(run_id="r", command="c", machine=dict(cpu_model="x", cores=2, mem_gib=1, mindspore="2", mindcv="0",
                                                        device_target="CPU", threads=2, loadavg_1m_at_start=0.0))
    table = bench_table.render(recs)
    # vs ORT fp32 within each round: ours 1.25x and 1.00x (median 1.12x), INT8 2.00x and 1.50x (median 1.75x).
    assert "| this project | m | deploy | inference | fp32 | 8 | 15.00 (10.00-20.00) | 1.12x (1.00x-1.25x) | " \
           "0.65 (0.50-0.80) |" in table
    assert "| ONNX Runtime | m | deploy | inference | int8 | 8 | 23.50 (15.00-32.00) | 1.75x (1.50x-2.00x) |" in table
    assert "| ONNX Runtime | m | deploy | inference | fp32 | 8 | 13.00 (10.00-16.00) | - | 0.80 |" in table
    assert "| MindSpore | m | 8 | 2 | 1 | 320.0 | 22.50 (20.00-25.00) |" in table
    assert "| ONNX Runtime | m | 8 | 2 | 1 | 320.0 | 12.50 |" in table


def test_as_gemm_reads_matmul_shapes(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    from _bench_worker import as_gemm

    assert as_gemm("MatMul", [[512, 3136], [3136, 3136]]) == (1, 512, 3136, 3136)
    assert as_gemm("MatMul", [[8, 512], [1000, 512]]) == (1, 8, 512, 1000)  # transpose_b weight (out, in)
    assert as_gemm("BatchMatMul", [[4, 256, 784], [4, 784, 784]]) == (4, 256, 784, 784)
    assert as_gemm("BatchMatMul", [[16, 128, 196], [16, 100, 196]]) == (16, 128, 196, 100)
    assert as_gemm("Conv2D", [[8, 256, 14, 14], [1024, 256, 1, 1]]) == (1, 8 * 14 * 14, 256, 1024)
    assert as_gemm("Erf", [[8, 256, 56, 56]]) is None
    with pytest.raises(RuntimeError):
        as_gemm("Conv2D", [[8, 4, 14, 14], [4, 1, 3, 3]])
