"""Check Locality Injection on full-size variants: train form vs deploy form logits, with random BN statistics.

    python bench/verify_reparam.py                      # all six variants, PyNative and graph mode
    python bench/verify_reparam.py --models repmlp_t224 --modes graph

Prints one JSON line per (variant, mode) and exits 1 if any relative error exceeds --tol (default 1e-5), 2 for an
unknown model name.
Each check builds the model twice (once to compare names with create_model(deploy=True)), about 40 s per
variant and mode on a 2-core CPU.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import _common  # noqa: E402  (scripts/_common.py, shared with the user tools: import path + helpers)
import numpy as np

from mindcv_ext.cli import BAD_INPUT, FAILED, OK, run_tool

PROG = "verify_reparam.py"

VARIANTS = ["repmlp_t224", "repmlp_t256", "repmlp_b224", "repmlp_b256", "repmlp_d256", "repmlp_l256"]


def check(name: str, mode: str, batch: int = 1, seed: int = 0) -> dict:
    import mindcv
    import mindspore as ms

    from mindcv_ext.verify import perturb_bn, reparam_error

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    net = perturb_bn(mindcv.create_model(name), seed)
    size = net.image_size
    x = ms.Tensor(np.random.default_rng(seed + 1).standard_normal((batch, 3, size, size)).astype(np.float32))
    err = reparam_error(net, x)
    layout = [(p.name, tuple(p.shape)) for p in net.get_parameters()]
    deploy_layout = [(p.name, tuple(p.shape)) for p in mindcv.create_model(name, deploy=True).get_parameters()]
    return {"model": name, "mode": mode, "rel_err": err, "same_layout_as_deploy": layout == deploy_layout}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=VARIANTS)
    p.add_argument("--modes", nargs="+", default=["pynative", "graph"], choices=["pynative", "graph"])
    p.add_argument("--tol", type=float, default=1e-5)
    args = p.parse_args(argv)
    import mindcv

    import mindcv_ext  # noqa: F401  (registers the models)

    unknown = [m for m in args.models if not mindcv.is_model(m)]
    if unknown:  # before the first (40 s) check
        print(f"{PROG}: error: unknown model(s) {', '.join(map(repr, unknown))}; RepMLPNets: "
              f"{', '.join(mindcv.list_models('*repmlp*'))}", file=sys.stderr)
        return BAD_INPUT
    ok = True
    for name in args.models:
        for mode in args.modes:
            r = check(name, mode)
            r["ok"] = r["rel_err"] <= args.tol and r["same_layout_as_deploy"]
            ok &= r["ok"]
            print(json.dumps(r), flush=True)
    return OK if ok else FAILED


if __name__ == "__main__":
    run_tool(main, PROG)  # Ctrl-C / SIGTERM: one line, 130 / 143; exits without MindSpore's shutdown noise
