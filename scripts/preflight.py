"""Check a training command before msrun starts any worker: the recipe and its overrides load, and the device
exists here (in the number the launcher asks for).

    python scripts/preflight.py --local_workers 8 -- --config RECIPE.yaml [--key value ...]

Everything after `--` is train.py's command line. Prints one line and exits 0 when the run can start; otherwise
prints one "error: ..." line naming the problem and the fix and exits 2. The launch scripts run it first because
a worker that fails under msrun reports only into its own log while the scheduler waits for it for minutes.
"""
import argparse
import os
import sys

# Before anything imports MindSpore: its warnings about missing Ascend/GPU drivers would bury the one line here.
os.environ.setdefault("GLOG_v", "3")

import _common  # noqa: E402,F401  (import path)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def check_device(target: str, local_workers: int) -> str:
    """'' when `target` can run `local_workers` processes on this machine, else the reason and the fix."""
    import mindspore as ms

    try_cpu = ("or try the recipe on CPU: WORKERS=2 with --device_target CPU --jit_level O0 --amp_level O0 "
               "(slow; for checking the setup)")
    if not ms.hal.is_available(target):
        return (f"device_target {target} is not available on this machine (MindSpore {ms.__version__} here runs "
                f"on: {', '.join(t for t in ('CPU', 'GPU', 'Ascend') if ms.hal.is_available(t))}). Run on a machine "
                f"with {target} devices and the MindSpore build for them, {try_cpu}.")
    try:
        ms.set_device(target)  # what train.py does first: it raises on a build or driver that cannot run it
    except (RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"device_target {target} cannot be used here ({reason}). Check the driver installation, {try_cpu}."
    if target != "CPU":
        count = ms.hal.device_count(target)
        if count < local_workers:
            return (f"{local_workers} workers per node need {local_workers} {target} devices; this machine has "
                    f"{count}. Set WORKERS (or --cards_per_node) to {count} and scale lr with the global batch.")
    return ""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return _fail("usage: python scripts/preflight.py --local_workers N -- --config RECIPE.yaml [--key value ...]")
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local_workers", type=int, default=1, help="processes msrun starts on this node")
    args = p.parse_args(argv[:split])
    train_argv = argv[split + 1:]

    from mindcv_ext.config import ConfigError
    from mindcv_ext.training.config import load_config

    try:
        cfg = load_config(train_argv)
    except (ConfigError, FileNotFoundError) as e:
        return _fail(str(e))
    if not cfg.distribute:
        return _fail("the msrun launchers run data-parallel training: drop --distribute False, or run "
                     "python train.py --config ... directly for one process.")
    problem = check_device(cfg.device_target, args.local_workers)
    if problem:
        return _fail(problem)
    print(f"preflight: recipe {cfg.config or ''} loads; {args.local_workers} x {cfg.device_target} available",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
