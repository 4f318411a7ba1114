"""Turn bench/benchmark.py's JSON lines into a Markdown table for the README.

    python bench/bench_table.py benchmark.jsonl [--output table.md]
"""
import argparse
import json
import os
import sys

CONTENDED_CORES = 0.2  # other processes' average CPU during a timed loop above which a row is flagged
BOUND_NAMES = {"mindspore": "MindSpore", "onnxruntime": "ONNX Runtime"}


def load(*paths):
    """Records of one or more benchmark files (each run carries its own GEMM rows)."""
    out = []
    for path in paths:
        with open(path) as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def _fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def _ips(r):
    # Images per second from the median latency (one preempted iteration should not move it); the JSON also has
    # the total-time figure, throughput_img_s. Older files lack the median one.
    return r.get("throughput_p50_img_s", r["throughput_img_s"])


def _key(r):
    return r.get("model"), r.get("batch_size"), r.get("task"), r.get("form"), r.get("dtype")


def _round(r):
    return r["run_id"], r.get("round", 0)


def shapes_bound_fraction(r, bounds):
    """img/s over the same round's own-shape bound in the row's framework (bench/_bench_worker.run_shapes): the
    batch over the summed time of the deploy graph's matmuls, each timed alone. For fp32 deploy rows of this
    project (MindSpore) and of ONNX Runtime."""
    if r["impl"] not in ("ours", "ort") or not str(r.get("form")).startswith("deploy") or r["task"] != "inference" \
            or r["dtype"] != "fp32":
        return None
    b = bounds.get(_round(r) + (r["framework"], r["model"], r["batch_size"]))
    return _ips(r) / b["bound_img_s"] if b and b.get("bound_img_s") else None


def _median(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _spread(values, fmt):
    """'median' or 'median (min-max)' over rounds."""
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    mid, lo, hi = fmt(_median(v)), fmt(min(v)), fmt(max(v))
    return mid if lo == hi else f"{mid} ({lo}-{hi})"


def gemm_bound_fraction(r, gemm):
    """img/s over the same run's GEMM bound: (GEMM FLOP/s) / (FLOPs per image), with 3x the deploy forward's FLOPs
    for a training step (forward + backward). Each framework against its own GEMM; MindSpore's for mindcv too."""
    if r["framework"] == "onnxruntime":
        return None  # no ORT GEMM is timed; another framework's GEMM would not bound ORT
    fw = "torch" if r["impl"] == "torch" else "mindspore"
    g = gemm.get((r["run_id"], fw))
    if not g or not r.get("flops_per_image"):
        return None
    flops = r["flops_per_image"] * (3 if r["task"] == "train_step" else 1)
    return _ips(r) * flops / (gemm_gflops(g) * 1e9)


def gemm_gflops(g):
    """The GEMM's FLOP/s at its fastest call (older files: its median call)."""
    return g.get("gflops_best", g["gflops"])


def mib_per_image(r):
    """(peak RSS - RSS before the first call) / batch: what compiling and running the batch added, per image.
    Compilation counts because MindSpore's CPU runtime plans part of the activation memory while compiling (it
    grows with the batch); gradients and optimizer state count too, so a training step's figure falls as the
    batch grows. bench/memory_probe.py gives the pure per-image slope over two batch sizes."""
    if r.get("peak_rss_mib") is None or r.get("rss_before_first_call_mib") is None:
        return None
    return (r["peak_rss_mib"] - r["rss_before_first_call_mib"]) / r["batch_size"]


def header(records):
    m = records[0]["machine"]
    fw = f"MindSpore {m['mindspore']} (device_target {m['device_target']}, graph mode), mindcv {m['mindcv']}"
    if m.get("torch"):
        fw += f", torch {m['torch']} (eager)"
    loads = [r["loadavg_1m_before"] for r in records if "loadavg_1m_before" in r]
    if m.get("onnxruntime") and any(r["framework"] == "onnxruntime" for r in records):
        fw += f", onnxruntime {m['onnxruntime']} (CPU provider)"
    rounds = max((r.get("round", 0) for r in records), default=0) + 1
    runs = {}
    for r in records:
        runs.setdefault(r["run_id"], r["command"])
    return (f"Measured on {m['cpu_model']} ({m['cores']} cores, {m['mem_gib']} GiB; no GPU/NPU: every figure is "
            f"{m['device_target']}), {fw}; {m['threads']} threads per framework"
            f"{', idle threads sleep (no spinning)' if m.get('idle_threads') == 'sleep' else ''}; 1-minute load average "
            f"{m['loadavg_1m_at_start']} at start, {min(loads, default=0):.2f}-{max(loads, default=0):.2f} before "
            f"each configuration; {rounds} round(s), implementations alternating within each. "
            + "; ".join(f"run {rid}: `{cmd}`" for rid, cmd in runs.items()) + "\n")


def render(records):
    if not records:
        return "(no measurements)"
    ok = [r for r in records if r["status"] == "ok" and r["task"] not in ("gemm", "gemm-shapes")]
    gemm = {(r["run_id"], r["framework"]): r for r in records if r["task"] == "gemm" and r["status"] == "ok"}
    bounds = {_round(r) + (r["framework"], r["model"], r["batch_size"]): r for r in records
              if r["task"] == "gemm-shapes" and r["status"] == "ok"}
    same_round = {_round(r) + (r["impl"],) + _key(r): r for r in ok}

    def ratio_to(r, impl, dtype=None):
        """img/s over that of `impl` (same model, batch, task; fp32 unless dtype) in the same round."""
        key = _key(r)[:3] + ("deploy" if impl == "ort" else r.get("form"), dtype or "fp32")
        ref = same_round.get(_round(r) + (impl,) + key)
        return _ips(r) / _ips(ref) if ref and ref is not r else None

    groups = {}
    for r in ok:
        groups.setdefault((r["impl"],) + _key(r), []).append(r)
    lines = [header(records),
             "| implementation | model | form | task | dtype | batch | img/s | vs ONNX Runtime fp32 | "
             "fraction of own-shape bound | fraction of GEMM bound | latency p50 (ms) | compile / load (s) | "
             "peak RSS (MiB) | MiB per image | vs PyTorch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    flagged = []
    names = {"ours": "this project", "mindcv": "mindcv 0.3.0", "torch": "PyTorch reimpl.*",
             "ort": "ONNX Runtime"}
    for (impl, model, bs, task, form, dtype), rs in groups.items():
        others = max(r.get("cpu_during_timed_loop", {}).get("other_cpu_cores", 0.0) for r in rs)
        mark = ""
        if others > CONTENDED_CORES:
            flagged.append(others)
            mark = " (!)"
        f2 = lambda v: f"{v:.2f}"  # noqa: E731
        vs_ort = _spread([ratio_to(r, "ort") for r in rs], lambda v: f"{v:.2f}x")
        vs_torch = _spread([ratio_to(r, "torch") for r in rs] if impl != "torch" else [], lambda v: f"{v:.2f}x")
        lines.append(
            f"| {names.get(impl, impl)} | {model} | {form} | {task.replace('_', ' ')} | {dtype} | {bs} | "
            f"{_spread([_ips(r) for r in rs], f2)}{mark} | {vs_ort} | "
            f"{_spread([shapes_bound_fraction(r, bounds) for r in rs], f2)} | "
            f"{_spread([gemm_bound_fraction(r, gemm) for r in rs], f2)} | "
            f"{_spread([r['latency_ms']['p50'] for r in rs], lambda v: f'{v:.0f}')} | "
            f"{_spread([r.get('compile_s') for r in rs], lambda v: f'{v:.1f}')} | "
            f"{_spread([r.get('peak_rss_mib') for r in rs], lambda v: f'{v:.0f}')} | "
            f"{_spread([mib_per_image(r) for r in rs], lambda v: f'{v:.0f}')} | {vs_torch} |")
    if bounds:
        lines += ["", "| own-shape bound: each matmul alone, summed | model | batch | matmul calls | distinct shapes | "
                      "summed time (ms) | img/s if all else were free | GEMM FLOPs per image |",
                  "|---|---|---|---|---|---|---|---|"]
        seen = {}
        for b in bounds.values():
            seen.setdefault((b["model"], b["batch_size"], b["framework"]), []).append(b)
        for (model, bs, fw), bs_ in sorted(seen.items()):
            lines.append(f"| {BOUND_NAMES.get(fw, fw)} | {model} | {bs} | {sum(g['count'] for g in bs_[0]['gemms'])} | "
                         f"{len(bs_[0]['gemms'])} | {_spread([b['bound_ms'] for b in bs_], lambda v: f'{v:.1f}')} | "
                         f"{_spread([b['bound_img_s'] for b in bs_], lambda v: f'{v:.2f}')} | "
                         f"{bs_[0]['gemm_flops_per_image'] / 1e9:.2f} G |")
    notes = []
    if any(r["impl"] == "torch" for r in records):
        notes.append("\\* PyTorch reimplementation of the official RepMLPNet (not the authors' file): "
                     "`tests/torch_repmlp_ref.py`, official semantics (grouped-conv fc3), eager, "
                     "`torch.inference_mode()` for inference, AdamW for the training step.")
    notes.append("img/s = batch / median latency of the timed calls (after a compiling first call and warm-up); "
                 "the JSON also has total images / total time. Training step = forward, backward and AdamW update "
                 "of the train form, fp32, batch as shown. "
                 "Compile = the compile call plus the first call minus the median call (graph compilation; n/a for "
                 "eager PyTorch). Peak RSS "
                 "= high-water mark of the fresh process that ran the configuration (framework import included). "
                 "MiB per image = (peak RSS - RSS before the first call) / batch: graph compilation (which "
                 "plans activation memory on CPU), gradients and optimizer state included. With several rounds a cell "
                 "is the median over rounds (min-max); ratios pair rows of the same round. Fraction of GEMM bound = img/s x FLOPs per image / the same run's "
                 "2048^3 fp32 GEMM FLOP/s at its fastest call (each framework's own GEMM), with the deploy forward's FLOPs (t224: "
                 "5.6 GFLOP, l256: 23.2) for inference and 3x that for a training step.")
    if bounds:
        notes.append("Fraction of own-shape bound = img/s / the same round's own-shape bound in the row's framework: "
                     "every MatMul, BatchMatMul and 1x1 Conv2D the compiled MindSpore deploy graph ran (read from "
                     "MindSpore's profiler record of one step, batch included; a 1x1 conv as the (N*H*W) x C x O GEMM "
                     "it is), each timed alone back to back as a plain matmul of that shape with both operands as "
                     "inputs (MindSpore graph mode; ONNX Runtime: a one-node MatMul model), median call, the fixed "
                     "cost of a call taken off, summed with multiplicity: the step time if everything but the "
                     "matmuls were free. ONNX Runtime pre-packs constant weights in the real model, which a "
                     "one-node model with both operands as inputs does not show.")
    if any(r["impl"] == "ort" for r in ok):
        notes.append("ONNX Runtime rows: the files scripts/export.py --file_format ONNX (fp32) and "
                     "scripts/quantize.py (INT8, calibrated on generated demo images) wrote from the same deploy "
                     "weights as the MindSpore rows, at the same static batch; CPU execution provider, "
                     "intra-op threads as above, sequential, ORT_ENABLE_ALL. compile / load = session creation.")
    if flagged:
        notes.append(f"(!) other processes used up to {max(flagged):.2f} cores during that row's timed loop: "
                     f"the figure is pessimistic.")
    runs = sorted({run for run, _ in gemm})
    for run in runs:
        rows = [r for (rid, _), r in gemm.items() if rid == run]
        n = rows[0]["gemm_shape"][0]
        models = sorted({r["model"] for r in ok if r["run_id"] == run})
        notes.append(f"Plain fp32 GEMM {n}x{n}x{n} in the same run as {', '.join(models) or 'no model'}: "
                     + ", ".join(f"{r['framework']} {gemm_gflops(r):.0f} GFLOP/s" for r in rows)
                     + " (fastest call; median: " + ", ".join(f"{r['gflops']:.0f}" for r in rows) + ").")
    not_run = {}
    for r in records:
        if r["status"] != "ok":
            what = " ".join(str(r.get(k)) for k in ("impl", "model", "form", "task", "dtype") if r.get(k))
            whats = not_run.setdefault((r["status"], r.get("reason", "")), [])
            if what not in whats:
                whats.append(what)
    for (status, reason), whats in not_run.items():
        notes.append(f"{status} ({reason}): " + "; ".join(whats))
    for r in ok:
        if r.get("note"):
            notes.append(f"{r['impl']} {r['model']} {r['dtype']}: {r['note']}")
            break
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jsonl", nargs="+", help="output(s) of bench/benchmark.py")
    p.add_argument("--output", default="", help="write the Markdown here instead of printing it")
    args = p.parse_args(argv)
    missing = [p for p in args.jsonl if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not found")
    text = render(load(*args.jsonl))
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
