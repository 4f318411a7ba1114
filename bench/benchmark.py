"""Inference and training-step benchmark of RepMLPNet in MindSpore graph mode, with optional baselines.

    python bench/benchmark.py --models repmlp_t224 --batch_sizes 8 --baselines mindcv,torch,gemm \\
        --output bench.jsonl --markdown True
    python bench/benchmark.py --models repmlp_t224 --batch_sizes 1,8 --forms deploy --tasks inference \\
        --baselines ort,shapes,gemm --rounds 2 --output bench.jsonl --markdown True   # deployment side by side

Baselines: mindcv (mindcv 0.3.0's class), torch (PyTorch reimplementation), gemm (one 2048^3 fp32 GEMM per
framework), shapes (the deploy graph's own matmuls, each timed alone and summed: the step time if everything
but the matmuls were free; in MindSpore, and with ort also in ONNX Runtime), ort (ONNX Runtime on the fp32 file
scripts/export.py writes and the INT8 file scripts/quantize.py writes, both made here as subprocesses from the
same weights). Every row of a model uses
one set of weights (random, with random BN statistics, saved once; train and deploy form). --rounds repeats the
whole sequence, so implementations alternate and each is measured several times in one run.

Each configuration (implementation x model x batch x form x task x dtype) runs in a fresh subprocess, so its
peak memory (ru_maxrss of that process) and compile time are its own. One JSON line per measurement goes to
--output, each with the machine it ran on. Measurements are of the device given by --device_target (CPU here).
Nothing else heavy should run meanwhile: every line records the 1-minute load average before it started and
the CPU other processes took during its timed loop (`cpu_during_timed_loop.other_cpu_cores`).
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import _common  # noqa: E402  (scripts/_common.py, shared with the user tools: import path + helpers)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_bench_worker.py")
MARK = "BENCH_RESULT "
SCHEMA = "repmlp-bench/1"
BASELINES = ("mindcv", "torch", "gemm", "shapes", "ort")
ROOT = os.path.dirname(HERE)
LABELS = {
    "ours": "this project (MindSpore)",
    "mindcv": "mindcv 0.3.0 repmlp (MindSpore)",
    "torch": "PyTorch reimplementation of the official RepMLPNet (not the authors' file)",
    "ort": "ONNX Runtime (CPU) on scripts/export.py's file (fp32) / scripts/quantize.py's (int8)",
    "shapes-mindspore": "the deploy graph's own matmuls, each alone, summed (MindSpore)",
    "shapes-ort": "the deploy graph's own matmuls, each alone, summed (ONNX Runtime)",
}


def csv(kind):
    def parse(s):
        return [kind(v.strip()) for v in s.split(",") if v.strip()]
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=csv(str), default=["repmlp_t224"])
    p.add_argument("--batch_sizes", type=csv(int), default=[8])
    p.add_argument("--forms", type=csv(str), default=["train", "deploy"],
                   help="inference forms: train,deploy,deploy_fused (deploy_fused = the deploy form with "
                        "mindcv_ext.models.fused_gelu.fuse_for_cpu: one AKG kernel per GELU; this project only)")
    p.add_argument("--tasks", type=csv(str), default=["inference", "train_step"],
                   help="inference,train_step (the training step always uses the train form)")
    p.add_argument("--dtypes", type=csv(str), default=["fp32"], help="fp32,fp16 (fp16 = mindcv AMP level O2)")
    p.add_argument("--baselines", type=csv(str), default=[], help=f"any of {','.join(BASELINES)}, or all")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls after the first (compiling) one")
    p.add_argument("--iters", type=int, default=10, help="timed calls")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="CPU threads for every framework (default: the cores this process may use)")
    p.add_argument("--device_target", default="CPU")
    p.add_argument("--gemm_size", type=int, default=2048, help="n of the n x n x n GEMM baseline")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    p.add_argument("--rounds", type=int, default=1, help="repeat every configuration this many times, alternating")
    p.add_argument("--idle_threads", choices=("default", "sleep"), default="default",
                   help="sleep: worker threads wait without spinning in every framework (OMP_WAIT_POLICY=PASSIVE, "
                        "ONNX Runtime allow_spinning 0); on a machine other jobs share, spinning threads of one "
                        "pool take the cores another pool's threads need (default: each framework's own default)")
    p.add_argument("--calib_images", type=int, default=32,
                   help="images scripts/quantize.py calibrates on (generated demo images: speed does not depend "
                        "on what they show)")
    p.add_argument("--work_dir", default="", help="keep the weights and ONNX files here (default: a temporary "
                                                  "directory, removed at the end)")
    p.add_argument("--output", default="benchmark.jsonl", help="JSON-lines file (overwritten)")
    p.add_argument("--markdown", type=_common.str2bool, default=False, help="print a Markdown table at the end")
    args = p.parse_args(argv)
    if "all" in args.baselines:
        args.baselines = list(BASELINES)
    bad = [f"--forms {v}" for v in args.forms if v not in ("train", "deploy", "deploy_fused")]
    bad += [f"--tasks {v}" for v in args.tasks if v not in ("inference", "train_step")]
    bad += [f"--dtypes {v}" for v in args.dtypes if v not in ("fp32", "fp16")]
    bad += [f"--baselines {v}" for v in args.baselines if v not in BASELINES]
    bad += [f"--batch_sizes {v}" for v in args.batch_sizes if v < 1]
    if bad:
        p.error("unknown or invalid value(s): " + ", ".join(bad))
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1 or args.calib_images < 1:
        p.error("--iters, --rounds and --calib_images must be >= 1 and --warmup >= 0")
    return args


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(args):
    cpu = "unknown"
    flags = []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return dict(
        cpu_model=cpu, cores=os.cpu_count(), cores_usable=len(os.sched_getaffinity(0)),
        # Whether fp16 / bf16 arithmetic is native matters for reading the fp16 lines.
        cpu_fp_flags=sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_fp16", "avx512_bf16", "amx_bf16",
                                                      "amx_fp16", "f16c", "fma")),
        mem_gib=round(mem_kib / 2**20, 1), platform=platform.platform(), python=platform.python_version(),
        mindspore=_version("mindspore"), mindcv=_version("mindcv"), torch=_version("torch"),
        onnxruntime=_version("onnxruntime"),
        numpy=_version("numpy"), device_target=args.device_target, threads=args.threads,
        idle_threads=args.idle_threads,
        loadavg_1m_at_start=round(os.getloadavg()[0], 2),
    )


def run_worker(cfg, args):
    """Run one configuration in a fresh process; (result dict or None, error text, peak RSS MiB)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    if args.idle_threads == "sleep":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cfg = dict(cfg, idle_threads=args.idle_threads)
    proc = subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=HERE)
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, f"timed out after {args.timeout:.0f} s", None
    # communicate() reaped the child; its peak RSS is in RUSAGE_CHILDREN only as a running max over all
    # children, so the worker reports its own VmHWM (the same high-water mark, per process).
    for line in out.splitlines():
        if line.startswith(MARK):
            res = json.loads(line[len(MARK):])
            return res, "", res.pop("vm_hwm_mib", None)
    lines = [l for l in (err or "").strip().splitlines() if l.strip() and "WARNING" not in l]
    # The Python exception line ("RuntimeError: ...") says more than MindSpore's C++ stack after it.
    errors = [l for l in lines if re.match(r"^[\w.]*(Error|Exception)\b", l)]
    return None, f"exit code {proc.returncode}: " + (errors[-1] if errors else " | ".join(lines[-3:])), None


def configs(args, info, files=None):
    """Yield (cfg, skip reason or None) in run order. files: what prepare_files made (weights, ONNX files)."""
    files = files or {}
    impls = ["ours"] + [b for b in ("mindcv", "torch") if b in args.baselines]
    for model in args.models:
        m = info["models"][model]
        for bs in args.batch_sizes:
            base = dict(model=model, batch_size=bs, image_size=m["image_size"], arch=m["arch"],
                        flops_per_image=m.get("flops_per_image"), warmup=args.warmup, iters=args.iters,
                        threads=args.threads, device_target=args.device_target,
                        ckpts=files.get(model, {}).get("ckpts"))
            for impl in impls:
                for task in args.tasks:
                    forms = args.forms if task == "inference" else ["train"]
                    for form in forms:
                        for dtype in args.dtypes:
                            cfg = dict(base, impl=impl, form=form, task=task, dtype=dtype)
                            yield cfg, skip_reason(cfg, info)
            if "ort" in args.baselines:
                made = files.get(model, {}).get(bs, {})
                for dtype in ("fp32", "int8"):
                    path, why = made.get(dtype, (None, "not made"))
                    yield dict(base, impl="ort", form="deploy", task="inference", dtype=dtype, onnx=path), why
            if "shapes" in args.baselines:
                yield dict(base, impl="shapes-mindspore", form="deploy", task="gemm-shapes", dtype="fp32"), None
                if "ort" in args.baselines:  # the same shapes in the framework the ort rows run in
                    yield dict(base, impl="shapes-ort", form="deploy", task="gemm-shapes", dtype="fp32"), \
                        (None if _version("onnxruntime") else "onnxruntime is not installed")
    if "gemm" in args.baselines:
        for impl in ("gemm-mindspore", "gemm-torch", "gemm-numpy"):
            cfg = dict(impl=impl, model=None, task="gemm", dtype="fp32", gemm_size=args.gemm_size,
                       warmup=args.warmup, iters=args.iters, threads=args.threads, device_target=args.device_target)
            yield cfg, ("torch is not installed" if impl == "gemm-torch" and not _version("torch") else None)


def skip_reason(cfg, info):
    if cfg.get("form") == "deploy_fused" and (cfg["impl"] != "ours" or cfg["dtype"] != "fp32"):
        return "deploy_fused is this project's fp32 inference option"
    if cfg["impl"] == "mindcv" and cfg["model"] not in info["mindcv_own"]:
        return f"mindcv 0.3.0 has no {cfg['model']}"
    if cfg["impl"] == "torch":
        if not _version("torch"):
            return "torch is not installed (pip install torch==2.13.0)"
        if cfg["dtype"] == "fp16":
            return "the PyTorch baseline is fp32 only (CPU fp16 is not a PyTorch deployment path)"
    if cfg["dtype"] == "fp16" and cfg["task"] == "train_step" and cfg["device_target"] == "CPU":
        # MindSpore's loss-scaled train step checks overflow with NPUGetFloatStatusV2, which has no CPU kernel.
        return "fp16 training (AMP O2 + loss scale) needs the Ascend/GPU overflow-status ops; not runnable on CPU"
    return None  # MindSpore fp16 inference on CPU is measured; its lines carry a note on native fp16 support


def record(cfg, args, machine, run_id):
    framework = {"gemm-numpy": "numpy", "ort": "onnxruntime", "shapes-ort": "onnxruntime"}.get(
        cfg["impl"], "torch" if "torch" in cfg["impl"] else "mindspore")
    rec = dict(schema=SCHEMA, run_id=run_id, impl=cfg["impl"], impl_label=LABELS.get(cfg["impl"], cfg["impl"]),
               framework=framework,
               model=cfg["model"], task=cfg["task"], dtype=cfg["dtype"],
               device_target="CPU" if framework != "mindspore" else cfg["device_target"],
               threads=args.threads, warmup=args.warmup, iters=args.iters)
    if cfg["task"] != "gemm":
        rec.update(form=cfg["form"], batch_size=cfg["batch_size"], image_size=cfg["image_size"],
                   flops_per_image=cfg.get("flops_per_image"))
    if cfg.get("onnx"):
        rec["onnx_file"] = os.path.basename(cfg["onnx"])
    rec["machine"] = machine
    rec["command"] = " ".join(["python", "bench/benchmark.py"] + sys.argv[1:])
    return rec


def describe(rec):
    what = f"{rec['impl']:<14} {rec.get('model') or '':<12} {rec.get('form') or '':<6} {rec['task']:<10} " \
           f"{rec['dtype']:<4} bs={rec.get('batch_size', '-')}"
    if rec["status"] != "ok":
        return f"{what}: {rec['status']}: {rec.get('reason', '')}"
    if rec["task"] == "gemm":
        return f"{what}: {rec['gflops']} GFLOP/s"
    if rec["task"] == "gemm-shapes":
        return (f"{what}: {len(rec['gemms'])} matmul shapes, {sum(g['count'] for g in rec['gemms'])} calls: "
                f"{rec['bound_ms']:.1f} ms per batch = "
                + (f"{rec['bound_img_s']:.2f} img/s if all else were free" if rec.get("bound_img_s") else
                   "every matmul below a call's fixed cost"))
    lat = rec["latency_ms"]
    return (f"{what}: {rec['throughput_p50_img_s']:.2f} img/s (median; mean {rec['throughput_img_s']:.2f}), "
            f"p50 {lat['p50']:.1f} ms, compile "
            f"{rec['compile_s'] if rec['compile_s'] is not None else '-'} s, peak {rec['peak_rss_mib']} MiB, "
            f"load {rec['loadavg_1m_before']}, others {rec['cpu_during_timed_loop']['other_cpu_cores']} cores")


def run_tool_script(name, *argv, args):
    """Run one of the user tools (scripts/NAME) as a user would; (ok, last error line)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    try:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *map(str, argv)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return False, f"scripts/{name} timed out after {args.timeout:.0f} s"
    if proc.returncode == 0:
        return True, ""
    lines = [l for l in (proc.stdout + proc.stderr).strip().splitlines() if l.strip() and "WARNING" not in l]
    return False, f"scripts/{name} exit code {proc.returncode}: " + (lines[-1] if lines else "")


def prepare_files(args, work):
    """Per model: one set of weights (train and deploy form); with the ort baseline, per batch size the fp32 ONNX
    file (scripts/export.py) and the INT8 one (scripts/quantize.py). {model: {"ckpts": .., bs: {dtype: (path,
    None) or (None, why not)}}}; an error preparing the weights stops the run."""
    files = {}
    quantize = os.path.isfile(os.path.join(ROOT, "scripts", "quantize.py"))
    for model in args.models:
        ckpts = {form: os.path.join(work, f"{model}_{form}.ckpt") for form in ("train", "deploy")}
        # Calibration images for quantize.py: the demo set's generated images (made once, in the worker).
        calib = dict(root=os.path.join(work, "calib"), images=args.calib_images) \
            if quantize and "ort" in args.baselines else None
        res, err, _ = run_worker(dict(impl="prepare", model=model, ckpts=ckpts, calib=calib,
                                      device_target=args.device_target, threads=args.threads), args)
        if err:
            raise SystemExit(f"benchmark.py: error: could not make the {model} weights: {err}")
        files[model] = {"ckpts": ckpts}
        if "ort" not in args.baselines:
            continue
        for bs in args.batch_sizes:
            made = files[model][bs] = {}
            fp32 = os.path.join(work, f"{model}_b{bs}.onnx")
            ok, why = run_tool_script("export.py", "--model", model, "--ckpt_path", ckpts["deploy"], "--file_format",
                                      "ONNX", "--batch_size", bs, "--output", fp32, args=args)
            made["fp32"] = (fp32, None) if ok else (None, why)
            print(f"{model} batch {bs}: fp32 ONNX " + ("written by scripts/export.py" if ok else f"failed: {why}"),
                  flush=True)
            if not quantize:
                made["int8"] = (None, "scripts/quantize.py does not exist yet (issue 19 item 1): no INT8 file")
                continue
            int8 = os.path.join(work, f"{model}_b{bs}_int8.onnx")
            ok, why = run_tool_script("quantize.py", "--model", model, "--ckpt_path", ckpts["deploy"], "--calib_dir",
                                      res["calib_dir"], "--calib_images", args.calib_images, "--batch_size", bs, "--output",
                                      int8, args=args)
            made["int8"] = (int8, None) if ok else (None, why)
            print(f"{model} batch {bs}: INT8 ONNX " + ("written by scripts/quantize.py" if ok else f"failed: {why}"),
                  flush=True)
    return files


def main(argv=None):
    args = parse_args(argv)
    run_id = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info(args)
    print(f"machine: {machine['cpu_model']}, {machine['cores']} cores, MindSpore {machine['mindspore']} "
          f"({args.device_target}), threads {args.threads}, load average {machine['loadavg_1m_at_start']}")
    if machine["loadavg_1m_at_start"] > 0.5:
        print(f"warning: 1-minute load average {machine['loadavg_1m_at_start']} before starting: other processes "
              f"are running; figures will be low and noisy")
    if "ort" in args.baselines and not _version("onnxruntime"):
        raise SystemExit("benchmark.py: error: --baselines ort needs onnxruntime (pip install onnxruntime)")
    info, err, _ = run_worker(dict(impl="info", models=args.models, device_target=args.device_target,
                                   threads=args.threads), args)
    if info is None:
        raise SystemExit(f"error: could not import the project / MindSpore: {err}")
    unknown = [m for m, v in info["models"].items() if v is None]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {unknown}")

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    work = os.path.abspath(args.work_dir) if args.work_dir else tempfile.mkdtemp(prefix="repmlp-bench-")
    os.makedirs(work, exist_ok=True)
    failed = 0
    try:
        files = prepare_files(args, work)
        with open(args.output, "w") as f:
            for rnd in range(args.rounds):
                for cfg, skip in configs(args, info, files):
                    rec = record(cfg, args, machine, run_id)
                    rec["round"] = rnd
                    rec["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
                    if skip:
                        rec.update(status="skipped", reason=skip)
                    else:
                        t0 = time.time()
                        res, err, peak = run_worker(cfg, args)
                        if res is None:
                            failed += 1
                            rec.update(status="error", reason=err)
                        else:
                            rec.update(status="ok", **res, peak_rss_mib=peak, wall_s=round(time.time() - t0, 1))
                            if cfg["dtype"] == "fp16" and args.device_target == "CPU":
                                rec["note"] = ("CPU fp16: " + (
                                    "native avx512_fp16" if "avx512_fp16" in machine["cpu_fp_flags"]
                                    else "no native fp16 arithmetic on this CPU; MindSpore's CPU kernels convert, "
                                         "so this is not a deployment figure"))
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    print(describe(rec), flush=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.output}")
    if args.markdown:
        import bench_table
        print(bench_table.render(bench_table.load(args.output)))
    return 1 if failed else 0


if __name__ == "__main__":
    _common.quiet_exit(main())
