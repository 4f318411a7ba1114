"""Where does the time go? Per-op profile of one RepMLPNet configuration in graph mode (MindSpore Profiler, CPU).

    python bench/profile_model.py --model repmlp_t224 --form deploy --batch_size 8
    python bench/profile_model.py --model repmlp_t224 --task train_step --batch_size 8 --output prof.json

Prints the time per step by op type, by module (stage indices folded: `repmlp_block.fc3` sums every block's fc3)
and the hot spots (op type, module, input shapes). Read stages and sizes off the input shapes: MindSpore names the
ops of structurally identical sub-Cells after the first one (all GELUs look like stage 0's), and ops created by
graph kernel expansion (`Expand/...`, e.g. what ops.matmul turns into) have no Cell scope at all. Shapes are
joined from the profiler's execution-order records. The profiler adds overhead per op; the unprofiled step time
is printed for scale.
"""
import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import _common  # noqa: E402  (scripts/_common.py, shared with the user tools: import path + helpers)
import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="repmlp_t224")
    p.add_argument("--form", default="deploy", choices=["train", "deploy"], help="inference form")
    p.add_argument("--task", default="inference", choices=["inference", "train_step"],
                   help="train_step = forward + backward + AdamW of the train form")
    p.add_argument("--impl", default="ours", choices=["ours", "mindcv"], help="mindcv = mindcv 0.3.0's own class")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--fused_gelu", type=_common.str2bool, default=False,
                   help="inference with mindcv_ext.models.fused_gelu.fuse_for_cpu (one AKG kernel per GELU)")
    p.add_argument("--iters", type=int, default=5, help="profiled steps (after compile + 2 warm-up steps); "
                                                       "each op's time is its median over them")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--top", type=int, default=15, help="rows of the single-op table")
    p.add_argument("--output", default="", help="also write the aggregated profile as JSON")
    return p.parse_args(argv)


def build_step(args):
    """(callable running one synchronised step, model) for the configuration, compiled and warmed up."""
    import mindspore as ms
    from mindspore import nn

    from _bench_worker import NUM_CLASSES, _NetWithLoss, ms_build, ms_setup, train_optimizer

    cfg = dict(impl=args.impl, model=args.model, form="train" if args.task == "train_step" else args.form,
               device_target="CPU", threads=args.threads)
    ms_setup(cfg)
    net = ms_build(cfg)
    from mindcv_ext.models.repmlp import ARCHS
    size = ARCHS[args.model]["image_size"]
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((args.batch_size, 3, size, size)).astype(np.float32))
    if args.task == "inference":
        net.set_train(False)
        if args.fused_gelu:
            from mindcv_ext.models.fused_gelu import fuse_for_cpu
            fuse_for_cpu(net, x)
        fn = lambda: net(x).asnumpy()  # noqa: E731
    else:
        y = ms.Tensor(rng.integers(0, NUM_CLASSES, args.batch_size).astype(np.int32))
        step = nn.TrainOneStepCell(_NetWithLoss.make(net), train_optimizer(cfg, net))
        step.set_train(True)
        fn = lambda: step(x, y).asnumpy()  # noqa: E731
    for _ in range(3):  # compile + warm-up
        fn()
    return fn


def run_profiler(fn, iters, out_dir):
    from mindspore import Profiler  # deprecated in 2.10 in favour of mindspore.profiler.profile; same CPU output
    prof = Profiler(output_path=out_dir)
    for _ in range(iters):
        fn()
    prof.stop()
    prof.analyse()
    found = glob.glob(os.path.join(out_dir, "**", "FRAMEWORK", "cpu_op_execute_timestamp_0.txt"), recursive=True)
    if not found:
        raise SystemExit(f"error: the MindSpore profiler wrote no CPU op timings under {out_dir}")
    return os.path.dirname(found[0])


def read_ops(fw_dir):
    """One dict per op of the graph, in execution order: full name, type, ms per step, input shapes."""
    ops_ = []
    with open(os.path.join(fw_dir, "cpu_op_execute_timestamp_0.txt")) as f:
        for line in f:
            name, _, rest = line.strip().split(";", 2)
            runs = [(int(r.split(",")[0]), float(r.split(",")[1])) for r in rest.split()]  # (start ns, ms)
            # Median over the profiled steps: one preempted run should not make an op look expensive.
            ops_.append(dict(name=name, start=runs[0][0], ms=float(np.median([d for _, d in runs])), runs=runs))
    ops_.sort(key=lambda o: o["start"])
    # cpu_framework_0.txt lists executions in the same order with input shapes but short names only.
    with open(os.path.join(fw_dir, "cpu_framework_0.txt")) as f:
        fw = [line.rstrip("\n;").split(";") for line in f]
    aligned = len(fw) >= len(ops_) and all(o["name"].rsplit("/", 1)[-1] == r[1] for o, r in zip(ops_, fw))
    for i, o in enumerate(ops_):
        o["type"] = re.sub(r"-op\d+$", "", o["name"].rsplit("/", 1)[-1])
        o["shapes"] = [s.split(":", 1)[1] for s in fw[i][3:] if "NoShape" not in s] if aligned else []
        o["scope"] = o["name"].rsplit("/", 1)[0]
    return ops_


def step_span_ms(ops_):
    """Median over profiled steps of first op start -> last op end: the step as the runtime saw it. Much more
    than the sum of op times means gaps between kernels (scheduling, allocation) or a contended machine."""
    steps = min(len(o["runs"]) for o in ops_)
    spans = [(max(o["runs"][i][0] + o["runs"][i][1] * 1e6 for o in ops_) - min(o["runs"][i][0] for o in ops_)) / 1e6
             for i in range(steps)]
    return float(np.median(spans))


def classify(scope):
    """(direction, module path with indices folded) of a scope like
    'Gradients/Default/network-X/stages-CellList/0-CellList/1-RepMLPNetUnit/repmlp_block-RepMLPBlock/fc3-PartitionFC'.
    """
    if scope.startswith("Expand/"):  # created by graph kernel expansion (e.g. ops.matmul): no Cell scope
        return "forward?", "(expanded) " + scope.split("/", 1)[1]
    parts = [p.split("-", 1)[0] for p in scope.split("/") if p]
    direction = "backward" if parts and parts[0] == "Gradients" else "forward"
    if any(p.startswith("optimizer") for p in parts):
        return "optimizer", "optimizer"
    if "stages" in parts:
        i = parts.index("stages")
        return direction, ".".join(p for p in parts[i + 3:] if not p.isdigit()) or "(unit)"
    names = [p for p in parts if p not in ("Default", "Gradients", "network") and not p.isdigit()]
    return direction, ".".join(names) or "(top level)"


def aggregate(ops_):
    total = sum(o["ms"] for o in ops_)
    tables = {"direction": defaultdict(float), "op type": defaultdict(float), "module": defaultdict(float)}
    spots = defaultdict(lambda: [0.0, 0])
    for o in ops_:
        direction, module = classify(o["scope"])
        tables["op type"][o["type"]] += o["ms"]
        tables["module"][f"{direction[:3]} {module}"] += o["ms"]
        tables["direction"][direction] += o["ms"]
        spot = spots[(o["type"], module, " x ".join(o["shapes"]))]
        spot[0] += o["ms"]
        spot[1] += 1
    out = {k: sorted(v.items(), key=lambda kv: -kv[1]) for k, v in tables.items()}
    out["hot spots"] = sorted(([f"{t} {m}", ms_, n, sh] for (t, m, sh), (ms_, n) in spots.items()),
                              key=lambda r: -r[1])
    return total, out


def print_table(title, rows, total, limit=20):
    print(f"\n{title:<58} {'ms/step':>9} {'share':>7}")
    for name, ms_ in rows[:limit]:
        print(f"  {name[:56]:<56} {ms_:>9.2f} {100 * ms_ / total:>6.1f}%")
    if len(rows) > limit:
        rest = sum(v for _, v in rows[limit:])
        print(f"  {'(' + str(len(rows) - limit) + ' more)':<56} {rest:>9.2f} {100 * rest / total:>6.1f}%")


def main(argv=None):
    args = parse_args(argv)
    fn = build_step(args)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        fn()
    wall_ms = (time.perf_counter() - t0) / args.iters * 1000
    out_dir = tempfile.mkdtemp(prefix="repmlp-prof-")
    try:
        ops_ = read_ops(run_profiler(fn, args.iters, out_dir))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    total, tables = aggregate(ops_)
    what = f"{args.impl} {args.model} {args.task} ({'train' if args.task == 'train_step' else args.form} form" \
           f"{', fused GELU' if args.fused_gelu else ''}), " \
           f"batch {args.batch_size}, fp32, graph mode, CPU, {args.threads} threads"
    span = step_span_ms(ops_)
    print(f"{what}\nunprofiled step: {wall_ms:.1f} ms ({args.batch_size * 1000 / wall_ms:.2f} img/s); profiled step "
          f"span {span:.1f} ms, of which op time {total:.1f} ms ({100 * total / span:.0f}%; ops may overlap); "
          f"1-minute load average {os.getloadavg()[0]:.2f}")
    print("(module = MindSpore's op scope, which can name another instance, e.g. every Transpose after the first "
          "Cell that made one; input shapes are the reliable locator)")
    for title in ("direction", "op type", "module"):
        if title != "direction" or len(tables[title]) > 1:
            print_table(f"by {title}", tables[title], total)
    print(f"\n{'hot spots: op, module, input shapes (x instances)':<58} {'ms/step':>9} {'share':>7}")
    for label, ms_, n, shapes in tables["hot spots"][: args.top]:
        print(f"  {label[:56]:<56} {ms_:>9.2f} {100 * ms_ / total:>6.1f}%  {shapes} (x{n})")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(dict(config=vars(args), unprofiled_step_ms=wall_ms, profiled_total_ms=total, step_span_ms=span,
                           tables={k: [[r[0], round(r[1], 3)] + list(r[2:]) for r in rows] for k, rows in tables.items()},
                           ops=[{k: o[k] for k in ("name", "type", "ms", "shapes")} for o in ops_]),
                      f, indent=1)
        print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
    _common.quiet_exit(0)
