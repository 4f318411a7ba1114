"""Helpers for the train.py tests: a tiny ImageFolder set, the command line, and reading run outputs."""
import contextlib
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
DEMO_RECIPE = os.path.join(ROOT, "configs", "repmlp", "repmlp_demo_cpu.yaml")

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, BATCH = 4, 12, 4, 8
STEPS_PER_EPOCH = CLASSES * TRAIN_PER_CLASS // BATCH  # one process, drop_remainder


def make_data(root) -> str:
    """A tiny copy of the built-in demo set (real JPEGs, ImageFolder layout), generated once per test module."""
    from mindcv_ext.data import ensure_demo_dataset

    return ensure_demo_dataset(str(root), num_classes=CLASSES, image_size=64, train_per_class=TRAIN_PER_CLASS,
                               val_per_class=VAL_PER_CLASS, seed=0)


def train_args(data_dir, out_dir, *extra) -> list:
    """The CPU demo recipe shrunk to seconds: graph mode, demo_repmlp, a few steps per epoch."""
    return ["--config", DEMO_RECIPE, "--dataset", "imagenet", "--data_dir", str(data_dir),
            "--num_classes", str(CLASSES), "--batch_size", str(BATCH), "--num_parallel_workers", "1",
            "--log_interval", "1", "--warmup_epochs", "0", "--epoch_size", "2", "--decay_epochs", "2",
            "--ckpt_save_dir", str(out_dir), *map(str, extra)]


def train_cmd(data_dir, out_dir, *extra) -> list:
    return [sys.executable, TRAIN] + train_args(data_dir, out_dir, *extra)


def run_train(data_dir, out_dir, *extra, timeout=400) -> subprocess.CompletedProcess:
    # cwd next to the run: MindSpore drops compile dumps (rank_0/...) into the working directory on errors.
    return subprocess.run(train_cmd(data_dir, out_dir, *extra), capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(os.path.abspath(str(out_dir))))


def metrics(out_dir, kind=None) -> list:
    path = os.path.join(str(out_dir), "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if kind is None or r["kind"] == kind]


def load_np(path) -> dict:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items() if not isinstance(v, str)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_keys(params: dict) -> list:
    """Names of model parameters in a training checkpoint (not optimizer/EMA state or scalars)."""
    state_prefixes = ("adam_m.", "adam_v.", "ema.", "moments.")
    scalars = {"global_step", "beta1_power", "beta2_power", "scale_sense", "epoch", "best_acc", "learning_rate",
               "steps_per_epoch"}
    return sorted(k for k in params if not k.startswith(state_prefixes) and k not in scalars)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def popen_train(data_dir, out_dir, *extra, log_path, stderr_path=None) -> subprocess.Popen:
    """train.py in the background, stdout and stderr into log_path (stderr into stderr_path when given)."""
    log = open(log_path, "w")
    err = open(stderr_path, "w") if stderr_path else None
    try:
        return subprocess.Popen(train_cmd(data_dir, out_dir, *extra), stdout=log, stderr=err or subprocess.STDOUT,
                                cwd=os.path.dirname(os.path.abspath(str(out_dir))))
    finally:
        log.close()  # the child has its own copies
        if err:
            err.close()


def wait_for(predicate, proc=None, timeout=300, what="the condition"):
    """Poll until predicate() is true; fail if `proc` ends first or the timeout passes."""
    import time

    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


@contextlib.contextmanager
def tmpfs(path, size: str):
    """A small tmpfs mounted at `path` (a real full disk); yields False (nothing mounted) without the rights."""
    os.makedirs(str(path), exist_ok=True)
    mounted = False
    if getattr(os, "geteuid", lambda: 1)() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def temp_leftovers(out_dir) -> list:
    """Temporary files of interrupted writes in a run directory (there should never be any)."""
    return sorted(f for f in os.listdir(str(out_dir)) if ".tmp" in f)


def one_error_line(stderr: str) -> str:
    """The one "error: ..." line a refused or stopped run prints: no traceback, no MindSpore analyzer dump."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr and "analyze_fail" not in stderr, stderr[-3000:]
    return errors[0]


def reported_signal(signum: int, returncode: int) -> int:
    """The signal train.py reports for `signum`. A SIGTERM that arrives while MindSpore's own SIGINT handler is
    installed (during a graph compile or run) is taken for the Ctrl-C that handler turns into a SIGTERM: the two
    cannot be told apart (mindcv_ext.cli._converted_ctrl_c). A Ctrl-C is always a Ctrl-C."""
    import signal

    if signum == signal.SIGTERM and returncode == 128 + signal.SIGINT:
        return signal.SIGINT
    return signum


__all__ = ["ROOT", "TRAIN", "make_data", "train_args", "train_cmd", "run_train", "metrics", "load_np", "free_port",
           "model_keys", "explain", "STEPS_PER_EPOCH", "CLASSES", "BATCH", "popen_train", "wait_for", "tmpfs",
           "temp_leftovers", "one_error_line", "reported_signal"]
