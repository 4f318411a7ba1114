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


def test_benchmark_smoke_jsonl_schema(tmp_path):
    out = tmp_path / "bench.jsonl"
    baselines = "torch" if _installed("torch") else ""
    rc, log = run_bench("benchmark.py", "--models", "demo_repmlp", "--batch_sizes", 2, "--forms", "deploy",
                        "--tasks", "inference,train_step", "--dtypes", "fp32", "--warmup", 0, "--iters", 1,
                        "--baselines", baselines, "--output", out, "--markdown", "True", cwd=tmp_path)
    assert rc == 0, log
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {("ours", "deploy", "inference"), ("ours", "train", "train_step")}
    if baselines:
        expected |= {("torch", "deploy", "inference"), ("torch", "train", "train_step")}
    assert {(r["impl"], r["form"], r["task"]) for r in recs} == expected
    for r in recs:
        assert r["schema"] == "repmlp-bench/1" and r["status"] == "ok", r
        assert r["model"] == "demo_repmlp" and r["batch_size"] == 2 and r["dtype"] == "fp32"
        assert r["throughput_img_s"] > 0 and r["throughput_p50_img_s"] > 0 and r["peak_rss_mib"] > 0
        assert set(r["latency_ms"]) >= {"mean", "p50", "p90", "p99", "min", "max"}
        assert isinstance(r["loadavg_1m_before"], float)
        assert "other_cpu_cores" in r["cpu_during_timed_loop"]
        m = r["machine"]
        assert m["cores"] >= 1 and m["cpu_model"] and m["mindspore"] and m["device_target"] == "CPU"
        if r["impl"] == "torch":
            assert r["impl_label"] == "PyTorch reimplementation of the official RepMLPNet (not the authors' file)"
            assert r["compile_s"] is None and r["device_target"] == "CPU"
        else:
            assert r["mode"] == "graph" and r["compile_s"] is not None
    assert "| this project | demo_repmlp | deploy | inference | fp32 | 2 |" in log  # --markdown table


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
