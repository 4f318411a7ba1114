"""Runs ONE benchmark configuration in a fresh process and prints its result as `BENCH_RESULT {json}`.

Started by bench/benchmark.py (one process per configuration, so peak memory and compile caches are per
configuration); not meant to be called by hand. Everything measured here runs on the host CPU unless the config
says otherwise.
"""
import json
import os
import resource
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MARK = "BENCH_RESULT "
TORCH_LABEL = "PyTorch reimplementation of the official RepMLPNet (not the authors' file)"
NUM_CLASSES = 1000


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5), so the next peak is that of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_status_mib(field: str):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


class CpuWatch:
    """CPU used by OTHER processes during a window: machine-wide busy time (/proc/stat) minus this process's own
    CPU time (all threads). A clean run shows ~0; a contaminated one shows how many cores others took."""

    HZ = os.sysconf("SC_CLK_TCK")

    @classmethod
    def _machine(cls):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        busy = v[0] + v[1] + v[2] + v[5] + v[6]
        return busy / cls.HZ, (v[7] if len(v) > 7 else 0) / cls.HZ

    @staticmethod
    def _self():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def __enter__(self):
        self.t0, self.own0 = time.perf_counter(), self._self()
        self.busy0, self.steal0 = self._machine()
        return self

    def __exit__(self, *exc):
        busy, steal = self._machine()
        wall = time.perf_counter() - self.t0
        own = self._self() - self.own0
        self.result = dict(
            other_cpu_cores=round(max(busy - self.busy0 - own, 0.0) / wall, 2),
            own_cpu_cores=round(own / wall, 2),
            steal_cores=round((steal - self.steal0) / wall, 2),
            window_s=round(wall, 2),  # /proc/stat ticks are 10 ms: meaningful for windows of a second or more
        )


def timed_loop(fn, warmup: int, iters: int):
    """(first call seconds, [per-iteration seconds]); fn must block until the result is on the host."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    lat = []
    with CpuWatch() as watch:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t)
    return first, lat, watch.result


def summarize(first, lat, batch, cpu, eager=False):
    ms_ = np.asarray(lat) * 1000.0
    p50 = float(np.percentile(ms_, 50))
    out = dict(
        throughput_img_s=round(batch * len(ms_) / (ms_.sum() / 1000.0), 3),  # total images / total time
        throughput_p50_img_s=round(batch / (p50 / 1000.0), 3),  # robust to a few preempted iterations
        latency_ms={k: round(float(v), 2) for k, v in dict(
            mean=ms_.mean(), p50=p50, p90=np.percentile(ms_, 90), p99=np.percentile(ms_, 99),
            min=ms_.min(), max=ms_.max(), std=ms_.std()).items()},
        first_call_s=round(first, 3),
        # Graph mode: the first call compiles. Eager PyTorch has no compile; its first call is only warm-up.
        compile_s=None if eager else round(first - p50 / 1000.0, 3),
        cpu_during_timed_loop=cpu,
    )
    if eager:
        out["first_call_overhead_s"] = round(first - p50 / 1000.0, 3)
    return out


# ---------------------------------------------------------------- MindSpore

def ms_setup(cfg):
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE, device_target=cfg["device_target"])
    if cfg["device_target"] == "CPU" and cfg.get("threads"):
        # MindSpore's CPU kernel pool defaults to 25 threads whatever the core count; oversubscription hurts.
        ms.device_context.cpu.op_tuning.threads_num(int(cfg["threads"]))
    return ms


def ms_build(cfg):
    import mindcv
    import mindcv_ext  # noqa: F401  (registers ours over mindcv's entries)
    deploy = cfg["form"].startswith("deploy")  # deploy_fused: the deploy form + fused_gelu.fuse_for_cpu
    if cfg["impl"] == "ours":
        # The weights benchmark.py saved for this model (the ones ONNX Runtime runs too), when it made them.
        ckpt = (cfg.get("ckpts") or {}).get("deploy" if deploy else "train")
        if ckpt:
            return mindcv_ext.build_model(cfg["model"], ckpt)[0]
        return mindcv.create_model(cfg["model"], num_classes=NUM_CLASSES, deploy=deploy)
    # mindcv 0.3.0's own class, still importable although the registry now points to ours.
    import mindcv.models.repmlp as theirs
    return getattr(theirs, cfg["model"])(num_classes=NUM_CLASSES, deploy=deploy)


class _NetWithLoss:
    """Built lazily (needs mindspore imported): logits cast to fp32 so an fp16 network gets an fp32 loss."""

    @staticmethod
    def make(net):
        import mindspore as ms
        from mindspore import nn, ops

        class NetWithLoss(nn.Cell):
            def __init__(self, network):
                super().__init__(auto_prefix=False)
                self.network = network
                self.loss = nn.CrossEntropyLoss()

            def construct(self, x, y):
                return self.loss(ops.cast(self.network(x), ms.float32), y)

        return NetWithLoss(net)


def train_optimizer(cfg, net):
    """The AdamW a training step of this configuration uses: mindcv's own for the mindcv baseline (its whole stack),
    train.py's for `opt: adamw` otherwise (mindcv's math on the fused kernel)."""
    if cfg["impl"] == "mindcv":
        from mindcv.optim import create_optimizer
        return create_optimizer(net.trainable_params(), opt="adamw", lr=1e-3, weight_decay=0.05)
    from mindcv_ext.training.adamw import create_adamw
    return create_adamw(net, lr=1e-3, weight_decay=0.05, weight_decay_filter="disable")


def run_mindspore(cfg):
    ms = ms_setup(cfg)
    from mindspore import nn

    rss_import = proc_status_mib("VmRSS")
    net = ms_build(cfg)
    params = int(sum(p.size for p in net.trainable_params()))
    if cfg["dtype"] == "fp16":
        from mindcv.utils.amp import auto_mixed_precision
        auto_mixed_precision(net, "O2")  # fp16 network, BN kept in fp32 (mindcv's recipe level)
    rng = np.random.default_rng(0)
    size = cfg["image_size"]
    x = ms.Tensor(rng.standard_normal((cfg["batch_size"], 3, size, size)).astype(np.float32))

    fuse_s = 0.0
    if cfg["task"] == "inference":
        net.set_train(False)
        if cfg["form"] == "deploy_fused":
            from mindcv_ext.models.fused_gelu import fuse_for_cpu
            t0 = time.perf_counter()
            fuse_for_cpu(net, x)  # compiles the network (with AKG kernels, from its cache when warm)
            fuse_s = time.perf_counter() - t0
        compile_args = (net, x)
        fn = lambda: net(x).asnumpy()  # noqa: E731  (.asnumpy() waits for the device)
    else:
        y = ms.Tensor(rng.integers(0, NUM_CLASSES, cfg["batch_size"]).astype(np.int32))
        opt = train_optimizer(cfg, net)
        with_loss = _NetWithLoss.make(net)
        if cfg["dtype"] == "fp16":
            step = nn.TrainOneStepWithLossScaleCell(with_loss, opt, scale_sense=ms.Tensor(1024.0, ms.float32))
            fn = lambda: step(x, y)[0].asnumpy()  # noqa: E731
        else:
            step = nn.TrainOneStepCell(with_loss, opt)
            fn = lambda: step(x, y).asnumpy()  # noqa: E731
        step.set_train(True)
        compile_args = (step, x, y)
    rss_before_call = proc_status_mib("VmRSS")
    # Compile first, on its own: graph compilation's memory is then told apart from the memory running takes.
    t0 = time.perf_counter()
    compile_args[0].compile(*compile_args[1:])
    compile_only = time.perf_counter() - t0 + fuse_s
    mem = dict(rss_before_first_call_mib=rss_before_call, rss_after_compile_mib=proc_status_mib("VmRSS"),
               peak_rss_compile_mib=proc_status_mib("VmHWM"))
    mem["peak_reset"] = reset_peak_rss()
    first, lat, cpu = timed_loop(fn, cfg["warmup"], cfg["iters"])
    res = summarize(first + compile_only, lat, cfg["batch_size"], cpu)
    res.update(mem, peak_rss_run_mib=proc_status_mib("VmHWM"))
    res.update(params=params, rss_after_import_mib=rss_import, mode="graph",
               amp_level="O2" if cfg["dtype"] == "fp16" else "O0")
    return res


def run_gemm_mindspore(cfg):
    ms = ms_setup(cfg)
    from mindspore import nn, ops

    class MatMul(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    n = cfg["gemm_size"]
    rng = np.random.default_rng(0)
    a = ms.Tensor(rng.standard_normal((n, n)).astype(np.float32))
    b = ms.Tensor(rng.standard_normal((n, n)).astype(np.float32))
    net = MatMul()
    return gemm_result(lambda: net(a, b).asnumpy(), cfg, mode="graph")


def gemm_result(fn, cfg, mode):
    n = cfg["gemm_size"]
    first, lat, cpu = timed_loop(fn, cfg["warmup"], cfg["iters"])
    p50 = float(np.percentile(lat, 50))
    # gflops_best (the fastest call) is the bound: MindSpore's median GEMM call swung between 131 and 198 GFLOP/s
    # over four runs in one hour while its fastest stayed at 201-205, like torch's and numpy's medians.
    return dict(gemm_shape=[n, n, n], gflops=round(2 * n ** 3 / p50 / 1e9, 1),
                gflops_best=round(2 * n ** 3 / min(lat) / 1e9, 1),
                latency_ms=dict(p50=round(p50 * 1000, 2), min=round(min(lat) * 1000, 2)),
                first_call_s=round(first, 3), cpu_during_timed_loop=cpu, mode=mode)


# ---------------------------------------------------------------- PyTorch

def run_torch(cfg):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(int(cfg["threads"]))
    rss_import = proc_status_mib("VmRSS")
    if cfg["impl"] == "gemm-torch":
        n = cfg["gemm_size"]
        a, b = torch.randn(n, n), torch.randn(n, n)
        with torch.inference_mode():
            return gemm_result(lambda: torch.mm(a, b), cfg, mode="eager")
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch_repmlp_ref as ref

    torch.manual_seed(0)
    model = ref.build(tuple(tuple(v) if isinstance(v, list) else v for v in cfg["arch"]),
                      num_classes=NUM_CLASSES, deploy=cfg["form"] == "deploy")
    params = sum(p.numel() for p in model.parameters())
    size = cfg["image_size"]
    x = torch.randn(cfg["batch_size"], 3, size, size)
    if cfg["task"] == "inference":
        model.eval()

        def fn():
            with torch.inference_mode():
                return model(x)  # CPU eager ops are synchronous: returning means done
    else:
        model.train()
        y = torch.randint(0, NUM_CLASSES, (cfg["batch_size"],))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

        def fn():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()
    rss_before_call, peak_before = proc_status_mib("VmRSS"), proc_status_mib("VmHWM")
    peak_reset = reset_peak_rss()
    first, lat, cpu = timed_loop(fn, cfg["warmup"], cfg["iters"])
    res = summarize(first, lat, cfg["batch_size"], cpu, eager=True)
    res.update(params=params, rss_after_import_mib=rss_import, rss_before_first_call_mib=rss_before_call,
               rss_after_compile_mib=rss_before_call, peak_reset=peak_reset, peak_rss_before_mib=peak_before,
               peak_rss_run_mib=proc_status_mib("VmHWM"), mode="eager", impl_label=TORCH_LABEL)
    return res


def run_gemm_numpy(cfg):
    n = cfg["gemm_size"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    return gemm_result(lambda: a @ b, cfg, mode="numpy")


def forward_flops(channels, num_blocks, sharesets, image_size, num_classes=NUM_CLASSES, patch=4, ffn_expand=4,
                  gp_reduce=4):
    """FLOPs (2 x multiply-adds) of one image through the deploy form at its native size: the convs, fc3 and
    the head; element-wise ops, BN and pooling are left out (they are not GEMM work). repmlp_t224: 5.6 GFLOP."""
    macs = (image_size // patch) ** 2 * channels[0] * 3 * patch * patch  # stem
    for i, (c, n) in enumerate(zip(channels, num_blocks)):
        hw = (image_size // (patch * 2 ** i)) ** 2
        fc3 = c * hw * hw  # C rows (the partitions of S sharesets) of an (hw x hw) FC each
        ffn = 2 * c * c * ffn_expand * hw
        gp = 2 * c * (c // gp_reduce)
        macs += n * (fc3 + ffn + gp)
        if i + 1 < len(channels):
            macs += (hw // 4) * channels[i + 1] * c * 4  # 2x2/2 downsampling
    macs += channels[-1] * num_classes
    return 2 * macs


def run_prepare(cfg):
    """One set of weights per model for every row: a train-form net with random BN statistics (fresh BNs are
    identities, which would flatter nothing but also test nothing), saved, re-parameterized and saved again."""
    import mindcv
    import mindspore as ms

    import mindcv_ext
    from mindcv_ext.verify import perturb_bn

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target=cfg["device_target"])
    ms.set_seed(0)
    net = perturb_bn(mindcv.create_model(cfg["model"], num_classes=NUM_CLASSES), seed=0)
    mindcv_ext.save_checkpoint(net, cfg["ckpts"]["train"])
    mindcv_ext.save_checkpoint(mindcv_ext.reparameterize(net), cfg["ckpts"]["deploy"])
    out = dict(saved=cfg["ckpts"])
    if cfg.get("calib"):
        from mindcv_ext.data.demo import ensure_demo_dataset
        per_class = -(-cfg["calib"]["images"] // 10)  # 10 classes
        root = ensure_demo_dataset(cfg["calib"]["root"], train_per_class=per_class, val_per_class=1)
        out["calib_dir"] = os.path.join(root, "train")
    return out


# ---------------------------------------------------------------- ONNX Runtime

def ort_session(cfg, model):
    """An ONNX Runtime CPU session for a file or serialized model, with the benchmark's threads and idle policy."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(cfg["threads"])
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cfg.get("idle_threads") == "sleep":  # as OMP_WAIT_POLICY=PASSIVE does for MindSpore's OpenMP kernels
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def run_ort(cfg):
    """The ONNX file scripts/export.py (fp32) or scripts/quantize.py (INT8) wrote, on ONNX Runtime's CPU provider
    with the same thread count, at full graph optimization (ORT's default)."""
    import onnxruntime as ort

    rss_import = proc_status_mib("VmRSS")
    t0 = time.perf_counter()
    sess = ort_session(cfg, cfg["onnx"])
    load_s = time.perf_counter() - t0
    inp = sess.get_inputs()[0]
    size = cfg["image_size"]
    x = np.random.default_rng(0).standard_normal((cfg["batch_size"], 3, size, size)).astype(np.float32)
    rss_before_call = proc_status_mib("VmRSS")
    peak_before = proc_status_mib("VmHWM")
    peak_reset = reset_peak_rss()
    first, lat, cpu = timed_loop(lambda: sess.run(None, {inp.name: x}), cfg["warmup"], cfg["iters"])
    res = summarize(first, lat, cfg["batch_size"], cpu, eager=True)
    res.update(compile_s=round(load_s, 3), rss_after_import_mib=rss_import, rss_before_first_call_mib=rss_before_call,
               peak_rss_before_mib=peak_before, peak_reset=peak_reset, peak_rss_run_mib=proc_status_mib("VmHWM"),
               mode="onnxruntime " + ort.__version__, onnx_file_mb=round(os.path.getsize(cfg["onnx"]) / 1e6, 1))
    return res


# ---------------------------------------------------------------- the model's own matmul shapes

def deploy_gemms(cfg):
    """[(batch, m, k, n, count, op)] of every matmul the compiled deploy graph runs (MatMul, BatchMatMul, Conv2D,
    Dense), read from the MindSpore profiler's record of one inference step: the graph's own ops and shapes."""
    import tempfile
    import shutil
    from collections import Counter

    import mindspore as ms

    from profile_model import read_ops, run_profiler

    net = ms_build(dict(cfg, impl="ours", form="deploy"))
    net.set_train(False)
    size = cfg["image_size"]
    x = ms.Tensor(np.random.default_rng(0).standard_normal((cfg["batch_size"], 3, size, size)).astype(np.float32))
    net(x).asnumpy()
    out_dir = tempfile.mkdtemp(prefix="repmlp-shapes-")
    try:
        ops_ = read_ops(run_profiler(lambda: net(x).asnumpy(), 1, out_dir))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    gemms = Counter()
    for o in ops_:
        gemm = as_gemm(o["type"], [[int(d) for d in s.strip("[]").split(",") if d.strip()] for s in o["shapes"]])
        if gemm:
            gemms[gemm + (o["type"],)] += 1
    if not gemms:
        raise RuntimeError("the profiler recorded no matmul of the deploy graph (shapes not joined?)")
    return [k[:4] + (n, k[4]) for k, n in sorted(gemms.items())]


def as_gemm(op_type, shapes):
    """(batch, m, k, n) of one matmul-like op from its input shapes, None for any other op.
    MatMul (m, k) x (k, n) or (n, k) [transpose_b]; BatchMatMul (b, m, k) x (b, k, n) or (b, n, k), or a 2-d
    right side broadcast over the batch; Conv2D 1x1 on (N, C, H, W) with weight (O, C, 1, 1): (N*H*W) x C x O,
    the GEMM a 1x1 conv is. Other convs: an error (the deploy form has none; the bound would be wrong)."""
    base = op_type.split("-")[0]
    if base in ("MatMul", "MatMulExt", "Dense", "BatchMatMul", "BatchMatMulExt") and len(shapes) >= 2:
        a, b = shapes[0], shapes[1]
        batch = int(np.prod(a[:-2])) if len(a) > 2 else 1
        m, k = a[-2], a[-1]
        n = b[-1] if b[-2] == k else b[-2]  # (k, n), else transposed (n, k)
        return (batch, m, k, n)
    if base == "Conv2D" and len(shapes) >= 2:
        (nb, c, h, w), (o, ci, kh, kw) = shapes[0], shapes[1]
        if (kh, kw) != (1, 1) or ci != c:
            raise RuntimeError(f"Conv2D {shapes}: not a 1x1 dense conv, its GEMM shape is not read here")
        return (1, nb * h * w, c, o)
    return None


def mindspore_matmul(cfg):
    """matmul(a, b) -> a callable that runs it in MindSpore graph mode (ms_setup done) and waits for the result."""
    import mindspore as ms
    from mindspore import nn, ops

    class MatMul(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    net = MatMul()

    def bind(a, b):
        a, b = ms.Tensor(a), ms.Tensor(b)
        return lambda: net(a, b).asnumpy()
    return bind


def ort_matmul(cfg):
    """The same in ONNX Runtime: a one-node MatMul model per shape, both operands inputs (as in MindSpore's
    loop; in the exported model the weights are constants, which ONNX Runtime may pre-pack)."""
    from onnx import TensorProto, helper

    def bind(a, b):
        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in (("a", a), ("b", b))]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "matmul", ins, [out])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = ort_session(cfg, model.SerializeToString())
        return lambda: sess.run(None, {"a": a, "b": b})
    return bind


def run_shapes(cfg):
    """Each of the deploy graph's matmuls timed alone, back to back, as a plain matmul of the same shape in one
    framework (shapes-mindspore: MindSpore graph mode; shapes-ort: ONNX Runtime); summed over the graph (with
    multiplicity) = the step time if everything else were free. The shapes are MindSpore's deploy graph's in
    both. A call's fixed cost (launch + sync, measured on a 1x1x1 matmul) is taken off each shape's time."""
    ms_setup(cfg)  # graph mode: the profiler reads the compiled graph's ops (and sets MindSpore's threads once)
    gemms = deploy_gemms(cfg)
    bind = ort_matmul(cfg) if cfg["impl"] == "shapes-ort" else mindspore_matmul(cfg)
    rng = np.random.default_rng(0)

    def time_shape(batch, m, k, n):
        lead = (batch,) if batch > 1 else ()
        fn = bind(rng.standard_normal(lead + (m, k)).astype(np.float32),
                  rng.standard_normal(lead + (k, n)).astype(np.float32))
        first = timed_loop(fn, cfg["warmup"], 1)[1][0]
        # Small shapes take ~0.1 ms: time at least ~0.3 s of them, so a median is one of many calls.
        iters = int(min(max(cfg["iters"], 0.3 / max(first, 1e-6)), 200))
        _, lat, _ = timed_loop(fn, 0, iters)
        return float(np.median(lat)), float(min(lat))

    null_p50, null_min = time_shape(1, 1, 1, 1)
    rows, total_p50, total_min, flops = [], 0.0, 0.0, 0
    for batch, m, k, n, count, op in gemms:
        p50, best = time_shape(batch, m, k, n)
        p50, best = max(p50 - null_p50, 0.0), max(best - null_min, 0.0)
        total_p50 += count * p50
        total_min += count * best
        flops += count * 2 * batch * m * k * n
        rows.append(dict(op=op, gemm=[batch, m, k, n], count=count, ms_p50=round(p50 * 1e3, 3),
                         ms_min=round(best * 1e3, 3), gflops=round(2 * batch * m * k * n / p50 / 1e9, 1) if p50 else None))
    bs = cfg["batch_size"]
    return dict(gemms=rows, call_overhead_ms=dict(p50=round(null_p50 * 1e3, 3), min=round(null_min * 1e3, 3)),
                bound_ms=round(total_p50 * 1e3, 2), bound_ms_min=round(total_min * 1e3, 2),
                # None: every matmul took less than a call's fixed cost (tiny models), no bound to divide by
                bound_img_s=round(bs / total_p50, 3) if total_p50 > 0 else None,
                bound_img_s_best=round(bs / total_min, 3) if total_min > 0 else None,
                gemm_flops_per_image=flops // bs,
                mode="graph" if cfg["impl"] == "shapes-mindspore" else "onnxruntime")


def run_info(cfg):
    """Facts the parent needs without importing a framework itself: architectures and defaults per model."""
    import mindcv

    import mindcv_ext  # noqa: F401
    from mindcv_ext.models.repmlp import ARCHS
    models = {}
    for name in cfg["models"]:
        if not mindcv.is_model(name) or name not in ARCHS:
            models[name] = None
            continue
        a = ARCHS[name]
        models[name] = dict(arch=[list(a["channels"]), list(a["num_blocks"]), list(a["sharesets"]),
                                  a["image_size"]], image_size=a["image_size"],
                            flops_per_image=forward_flops(a["channels"], a["num_blocks"], a["sharesets"],
                                                          a["image_size"]))
    import mindcv.models.repmlp as theirs
    return dict(models=models, mindcv_own=sorted(n for n in dir(theirs) if n.startswith("repmlp_")))


RUNNERS = {"ours": run_mindspore, "mindcv": run_mindspore, "torch": run_torch, "gemm-mindspore": run_gemm_mindspore,
           "gemm-torch": run_torch, "gemm-numpy": run_gemm_numpy, "info": run_info, "prepare": run_prepare,
           "ort": run_ort, "shapes-mindspore": run_shapes, "shapes-ort": run_shapes}


def main():
    cfg = json.loads(sys.argv[1])
    result = RUNNERS[cfg["impl"]](cfg)
    # The process's high-water mark, compilation included (VmHWM may have been reset after compiling).
    result["vm_hwm_mib"] = max(proc_status_mib("VmHWM"), result.get("peak_rss_compile_mib") or 0.0,
                               result.get("peak_rss_before_mib") or 0.0)
    print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip MindSpore's noisy Cell.__del__ tracebacks at interpreter exit
