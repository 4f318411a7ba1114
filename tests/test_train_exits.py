"""How train.py ends when it cannot or may not go on (issue 14): model settings that cannot train (an image size
the model does not take, ...) are refused before any work, and Ctrl-C / SIGTERM end a run within seconds wherever
it is (compiling its first step, blocked in MindSpore's data iterator); each with the exit code of mindcv_ext.cli,
one "error:" line, the run lock released, and no half-made run directory or MindSpore dump (rank_0/) left."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from _train_utils import (ROOT, explain, make_data, metrics, one_error_line, popen_train, reported_signal,
                          run_train, wait_for)
from mindcv_ext import cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("demo_data"))


def _nothing_left(cwd, out) -> None:
    assert not (cwd / "rank_0").exists() and not out.exists(), sorted(os.listdir(cwd))


FINETUNE = os.path.join(ROOT, "configs", "repmlp", "repmlp_t224_finetune.yaml")


@pytest.mark.parametrize("extra, start, end", [
    (["--image_resize", "100"], "image_resize 100 does not fit demo_repmlp: demo_repmlp takes (N, C, H, W) images "
                                "with H and W multiples of 64", "pass --image_resize 64."),
    # The fine-tune recipe's 224 with the small model: the size comes from the recipe, and the line says so.
    (["--config", FINETUNE, "--model", "demo_repmlp", "--num_parallel_workers", "1"],
     f"image_resize 224 (from {FINETUNE}) does not fit demo_repmlp", "pass --image_resize 64."),
    (["--pretrained", "True"], "pretrained: True, but there are no published MindSpore weights for demo_repmlp",
     "or set pretrained: False."),
    (["--in_channels", "1"], "in_channels 1: train.py reads images as RGB", "set in_channels: 3."),
    (["--model", "repmlp_t225"], "Unknown model 'repmlp_t225'", "demo_repmlp)."),
], ids=["image_resize", "finetune_recipe", "pretrained", "in_channels", "unknown_model"])
def test_a_model_setting_that_cannot_train_is_refused_before_any_work(data_dir, tmp_path, extra, start, end):
    # Each of these stopped with a compile traceback (exit 1), a half-made run directory and rank_0/ in the cwd,
    # or (unknown model) with another exit code than validate.py's.
    out = tmp_path / "run"
    proc = run_train(data_dir, out, *extra)
    assert proc.returncode == cli.BAD_INPUT, explain(proc)
    line = one_error_line(proc.stderr)
    assert line.startswith("error: " + start) and line.endswith(end), line
    _nothing_left(tmp_path, out)


def test_a_compile_error_leaves_no_rank_0_in_the_working_directory(tmp_path):
    # MindSpore writes rank_0/om/analyze_fail.ir into the cwd when a graph fails to compile; set_runtime points
    # that dump (MS_OM_PATH) at a temporary directory.
    code = textwrap.dedent("""
        import os, types
        import mindspore as ms
        from mindspore import nn, ops
        from mindcv_ext.training.runtime import set_runtime

        set_runtime(types.SimpleNamespace(mode=0, device_target="CPU", jit_level=""), "")

        class Net(nn.Cell):
            def construct(self, x):
                if x.shape[2] % 7:
                    raise ValueError("no")
                return x

        try:
            Net()(ops.ones((1, 3, 10, 10)))
        except ValueError as e:
            print(os.environ["MS_OM_PATH"], os.environ["MS_OM_PATH"] in str(e))
    """)
    script, cwd = tmp_path / "compile_fail.py", tmp_path / "cwd"
    script.write_text(code)  # a file: MindSpore reads construct's source
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MS_OM_PATH"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=str(cwd),
                          env=env)
    assert len(proc.stdout.split()) == 2, explain(proc)
    dump_dir, named = proc.stdout.split()
    shutil.rmtree(dump_dir, ignore_errors=True)
    assert named == "True", explain(proc)  # MindSpore's message names the moved file
    assert os.listdir(cwd) == []


# ---- signals ------------------------------------------------------------------------------------------------------

def _stop(proc, signum):
    proc.send_signal(signum)
    try:
        proc.wait(timeout=120)  # a hang guard: the watchdog ends a blocked process after its few seconds' grace
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"signal {signum} did not end train.py")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_a_signal_while_compiling_is_one_line_and_leaves_nothing(data_dir, tmp_path, signum):
    out, log, err = tmp_path / "run", tmp_path / "out.log", tmp_path / "err.log"
    proc = popen_train(data_dir, out, log_path=log, stderr_path=err)
    try:
        wait_for(lambda: "compiling the training graph" in log.read_text(), proc, what="the compile")
        _stop(proc, signum)
    finally:
        proc.kill()
        proc.wait()
    stderr = err.read_text()
    signum = reported_signal(signum, proc.returncode)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert one_error_line(stderr) == (f"error: {cli.signal_line(signum)}; no checkpoint was written yet; start "
                                       f"again"), stderr[-3000:]
    assert len(stderr.strip().splitlines()) == 1, stderr[-3000:]  # no analyzer dump
    _nothing_left(tmp_path, out)


def _blocked_on_a_fifo(pid: int) -> bool:
    """Some thread of `pid` waits in open() for a FIFO's writer."""
    tasks = f"/proc/{pid}/task"
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/wchan") as f:
                if f.read().strip() == "wait_for_partner":
                    return True
        except OSError:
            pass
    return False


def _settled(out, seen: list) -> bool:
    """True once the run has logged no new step over the last few polls (its main thread is waiting for data)."""
    try:
        rows = len(metrics(out, "step"))
    except (FileNotFoundError, ValueError):
        rows = -1
    seen.append(rows)
    return len(seen) > 60 and len(set(seen[-60:])) == 1  # wait_for polls every 0.05 s: 3 s without a step


@pytest.mark.skipif(not os.path.exists("/proc/self/wchan"), reason="needs Linux /proc")
def test_sigterm_while_the_data_iterator_is_blocked(data_dir, tmp_path):
    # The images turn into FIFOs after the start-up checks read them: MindSpore's reader threads block opening
    # them, and the main thread waits in the iterator's native code, where Python runs no signal handler. No graph
    # runs there, so the SIGTERM is unambiguous (see reported_signal).
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    out, log, err = tmp_path / "run", tmp_path / "out.log", tmp_path / "err.log"
    proc = popen_train(data, out, "--epoch_size", "50", "--decay_epochs", "50", log_path=log, stderr_path=err)
    try:
        wait_for(lambda: "compiled; the first step took" in log.read_text(), proc, what="a training step")
        for root, _, files in os.walk(data / "train"):
            for name in files:
                fifo = os.path.join(root, "." + name + ".fifo")
                os.mkfifo(fifo)
                os.replace(fifo, os.path.join(root, name))  # atomic: the reader finds a file or a FIFO
        wait_for(lambda: _blocked_on_a_fifo(proc.pid), proc, what="a reader blocked on a FIFO")
        seen = []
        wait_for(lambda: _settled(out, seen), proc, what="the steps to stop")
        _stop(proc, signal.SIGTERM)
    finally:
        proc.kill()
        proc.wait()
    stderr = err.read_text()
    assert proc.returncode == cli.TERMINATED, stderr[-3000:]
    line = one_error_line(stderr)
    assert line.startswith("error: terminated (SIGTERM); "), line
    assert not (out / ".train.lock").exists()  # released: the next run may start
    assert not (tmp_path / "rank_0").exists()


def test_missing_starting_weights_say_where_weights_come_from(tmp_path):
    # The fine-tune recipe names ./weights/RepMLPNet-T224-train.pth; without that file the message pointed at
    # resuming (latest.ckpt), not at where a starting weight file comes from.
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "-c", FINETUNE, "--data_dir",
                           str(tmp_path / "my_data"), "--ckpt_save_dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 2, explain(proc)
    line = one_error_line(proc.stderr)
    assert f"(from {FINETUNE}) is not a file" in line, line
    assert "github.com/DingXiaoH/RepMLP" in line and '--ckpt_path "" --pretrained True' in line, line
    assert "resume" not in line and "latest.ckpt" not in line, line
    _nothing_left(tmp_path, tmp_path / "run")


def test_a_resume_never_writes_over_another_folders_run(tmp_path):
    # train_seg.py --ckpt_path A/latest.ckpt --resume_opt True --ckpt_save_dir B was accepted with B holding a run:
    # the resumed run then replaced B's checkpoints and metrics.jsonl
    import re

    from mindcv_ext.config import ConfigError
    from mindcv_ext.training.run_end import RunEnd
    from mindcv_ext.training.run_lock import LOCK_NAME, claim_run_dir
    from mindcv_ext.training.runner import check_run_folder, refuse_existing_run

    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "latest.ckpt").write_bytes(b"\0")
    run = RunEnd("train", "train_seg.py")
    refused = re.escape(f"ckpt_save_dir {b} holds another run ({b / 'latest.ckpt'}); resuming {a / 'latest.ckpt'} "
                        f"there would overwrite it. Continue in the checkpoint's own folder (--ckpt_save_dir {a})")
    with pytest.raises(ConfigError, match=refused):
        check_run_folder(run, str(b), str(a / "latest.ckpt"))
    check_run_folder(run, str(b), str(b / "periodic.ckpt"))  # another file of the same folder: that run goes on
    with pytest.raises(ConfigError, match="already holds a run"):
        check_run_folder(run, str(b), "")
    # checked again by rank 0 under the run lock, inside its one agreement with the other ranks; the lock let go
    with pytest.raises(ConfigError, match=refused):
        claim_run_dir(str(b), 0, 2, agree=lambda flag: flag,
                      check=lambda: refuse_existing_run(run, str(a / "latest.ckpt"), str(b)))
    assert not (b / LOCK_NAME).exists()


def test_bad_input_met_once_training_ran_is_a_failed_run_not_bad_input(capsys):
    # train_seg.py exited 2 for a bad pair met mid-training (check_data off); 2 is for what is found before the work
    from mindcv_ext.seg.data import DataError
    from mindcv_ext.training.run_end import RunEnd

    run = RunEnd("train", "train_seg.py")

    def main(trained):
        def stop():
            run.trained = trained
            raise DataError("label x.png: not single-channel")
        return stop

    assert run.run(main(False)) == cli.BAD_INPUT
    run.reset([])
    assert run.run(main(True)) == cli.FAILED
    assert capsys.readouterr().err.count("error: label x.png: not single-channel") == 2


def test_every_launcher_variable_gets_a_normal_exit(tmp_path):
    # script_exit knew only MS_ROLE / RANK_TABLE_FILE: under another launcher variable it skipped the normal exit
    # (atexit, the worker's end reported to the scheduler)
    code = ("import atexit; from mindcv_ext.training.run_end import RunEnd; "
            "from mindcv_ext.training.runner import script_exit; atexit.register(lambda: print('normal exit')); "
            "script_exit(RunEnd(), lambda: 0)")
    env = {k: v for k, v in os.environ.items() if k not in ("MS_ROLE", "RANK_TABLE_FILE")}
    env["MINDSPORE_HCCL_CONFIG_PATH"] = str(tmp_path / "hccl.json")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "normal exit", explain(proc)
