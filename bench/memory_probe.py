"""Peak memory per image of RepMLPNet (or one piece of it) in MindSpore, by batch-size slope.

    python bench/memory_probe.py --case model --model repmlp_t224 --form deploy --batch_sizes 2,8,16
    python bench/memory_probe.py --case unit --model repmlp_t224 --stage 0 --form train --task train_step
    python bench/memory_probe.py --case ffn --model repmlp_t224 --stage 0 --mode pynative

Each (case, batch) runs in a fresh process; its peak RSS (VmHWM) minus the RSS before the first call is what the
call took. The slope of that over the batch size is the memory kept per image: graph-mode buffers that are not
reused show up there, while weights and compile caches do not. A "case" is the whole network or a stack of one
piece of it (a unit, the RepMLP block, the FFN, the patch conv) or of one op pattern (--case mul_broadcast, ...
at the chosen stage's shape; --depth 8), so a pattern that is not reused can be bisected.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARK = "PROBE_RESULT "
CASES = ("model", "unit", "repmlp_block", "ffn", "patchconv", "conv1x1", "bn", "relu", "gelu", "gelu_lean",
         "mul_broadcast", "mul_broadcast_to", "add_bias", "bias_add", "transpose_pair", "add_same_shape")
# Single-op stacks on (N, C, h, w) of the chosen stage (inference): which op patterns the runtime reuses.
PATTERNS = CASES[9:]


def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def _build(cfg):
    import mindcv
    import mindspore as ms
    from mindspore import nn

    import mindcv_ext  # noqa: F401
    from mindcv_ext.models import repmlp as R

    deploy = cfg["form"] == "deploy"
    arch = R.ARCHS[cfg["model"]]
    if cfg["case"] == "model":
        net = mindcv.create_model(cfg["model"], num_classes=1000, deploy=deploy)
        size = arch["image_size"]
        return net, (3, size, size)
    s = cfg["stage"]
    c, share = arch["channels"][s], arch["sharesets"][s]
    p = arch["image_size"] // (4 * 2 ** s)
    depth = cfg["depth"]
    if cfg["case"] == "unit":
        make = lambda: R.RepMLPNetUnit(c, p, p, share, deploy=deploy)  # noqa: E731
    elif cfg["case"] == "repmlp_block":
        make = lambda: R.RepMLPBlock(c, p, p, share, deploy=deploy)  # noqa: E731
    elif cfg["case"] == "ffn":
        make = lambda: R.FFNBlock(c)  # noqa: E731
    elif cfg["case"] == "conv1x1":
        make = lambda: nn.Conv2d(c, c, 1, has_bias=False)  # noqa: E731
    elif cfg["case"] == "bn":
        make = lambda: nn.BatchNorm2d(c)  # noqa: E731
    elif cfg["case"] == "gelu":  # MindSpore's exact GELU (ops.gelu: RealDiv by a sqrt(2) tensor, Erf, ...)
        make = lambda: nn.GELU(approximate=False)  # noqa: E731
    elif cfg["case"] in PATTERNS:
        pattern = _pattern_cell()
        make = lambda: pattern(cfg["case"], c, p)  # noqa: E731
    elif cfg["case"] == "relu":
        make = nn.ReLU
    else:  # patchconv: the stem's 4x4/4 GEMM, repeated on its input size
        conv = R.ConvBNReLU(3, c, 4, 4)
        return conv, (3, 4 * p, 4 * p)
    net = nn.SequentialCell([make() for _ in range(depth)])
    return net, (c, p, p)


def _pattern_cell():
    import numpy as np
    from mindspore import Parameter, Tensor, nn, ops

    from mindcv_ext.models.repmlp import GELU

    class Pattern(nn.Cell):
        """One op pattern of RepMLPNet, shape-preserving so that it stacks."""

        def __init__(self, kind, c, p):
            super().__init__()
            self.kind, self.c, self.p = kind, c, p
            self.gate = Parameter(Tensor(np.full((1, c, 1, 1), 0.5, np.float32)), name="gate")
            self.bias = Parameter(Tensor(np.zeros(p * p, np.float32)), name="bias")
            self.lean = GELU()

        def construct(self, x):
            n, k = x.shape[0], self.kind
            if k == "gelu_lean":
                return self.lean(x)
            if k == "mul_broadcast":  # x * gate, gate (1, C, 1, 1)
                return x * self.gate
            if k == "mul_broadcast_to":
                return x * ops.broadcast_to(self.gate, x.shape)
            if k == "add_bias":  # rows + bias (h*w,), as fc3's bias was added
                return (x.reshape(-1, self.p * self.p) + self.bias).reshape(x.shape)
            if k == "bias_add":
                return ops.bias_add(x.reshape(-1, self.p * self.p), self.bias).reshape(x.shape)
            if k == "transpose_pair":  # the (M, S, hw) <-> (S, M, hw) pair around a batched partition matmul
                y = x.reshape(-1, 4, self.p * self.p).transpose(1, 0, 2) * 1.0
                return y.transpose(1, 0, 2).reshape(x.shape)
            return x + x * 0.5  # add_same_shape

    return Pattern


def worker(cfg):
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    ms.set_context(mode=ms.GRAPH_MODE if cfg["mode"] == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    ms.device_context.cpu.op_tuning.threads_num(int(cfg["threads"]))
    if cfg.get("memory_optimize_level"):
        ms.set_context(memory_optimize_level=cfg["memory_optimize_level"])
    net, shape = _build(cfg)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((cfg["batch_size"],) + shape).astype(np.float32))
    if cfg["task"] == "inference":
        net.set_train(False)
        fn = lambda: net(x).asnumpy()  # noqa: E731
    else:
        class Loss(nn.Cell):
            def __init__(self, n):
                super().__init__(auto_prefix=False)
                self.n = n

            def construct(self, v):
                out = self.n(v)
                return ops.mean(out * out)

        opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-3, weight_decay=0.05)
        step = nn.TrainOneStepCell(Loss(net), opt)
        step.set_train(True)
        fn = lambda: step(x).asnumpy()  # noqa: E731
    before = _status_mib("VmRSS")
    for _ in range(cfg["calls"]):
        fn()
    return dict(rss_before_mib=round(before, 1), peak_mib=round(_status_mib("VmHWM"), 1),
                call_peak_mib=round(_status_mib("VmHWM") - before, 1))


def run(cfg):
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"{cfg}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=CASES, default="model")
    p.add_argument("--model", default="repmlp_t224")
    p.add_argument("--form", choices=("train", "deploy"), default="deploy")
    p.add_argument("--task", choices=("inference", "train_step"), default="inference")
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--stage", type=int, default=0, help="stage whose shapes a piece is built with")
    p.add_argument("--depth", type=int, default=4, help="pieces stacked one after another")
    p.add_argument("--batch_sizes", default="2,8")
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--memory_optimize_level", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        sys.path.insert(0, ROOT)
        print(MARK + json.dumps(worker(json.loads(args.worker))), flush=True)
        os._exit(0)
    rows = []
    for bs in [int(v) for v in args.batch_sizes.split(",")]:
        cfg = dict(case=args.case, model=args.model, form=args.form, task=args.task, mode=args.mode,
                   stage=args.stage, depth=args.depth, batch_size=bs, calls=args.calls, threads=args.threads,
                   memory_optimize_level=args.memory_optimize_level)
        res = run(cfg)
        rows.append((bs, res))
        print(json.dumps(dict(cfg, **res)), flush=True)
    if len(rows) > 1:
        (b0, r0), (b1, r1) = rows[0], rows[-1]
        slope = (r1["call_peak_mib"] - r0["call_peak_mib"]) / (b1 - b0)
        print(f"{args.case} {args.model} stage {args.stage} {args.form} {args.task} {args.mode}: "
              f"{slope:.1f} MiB per image (batch {b0} -> {b1})")


if __name__ == "__main__":
    main()
