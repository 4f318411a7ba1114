"""The msrun launch scripts: recipe and device checked before any worker starts, failures propagated with the
worker's error on the console, nothing left running; and git ignoring what training and msrun leave behind."""
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".git")) or shutil.which("git") is None,
                    reason="not a git checkout")
def test_git_ignores_run_outputs():
    paths = ["ckpt/latest.ckpt", "ckpt/train.log", "scheduler.log", "worker_0.log", "worker_7.log",
             "outputs/msrun_logs/worker_1.log", "data/demo/train/x.jpg"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(proc.stdout.split()) == sorted(paths)
    kept = subprocess.run(["git", "check-ignore", "--no-index", "train.py", "scripts/run_distribute_8p.sh"],
                          cwd=ROOT, capture_output=True, text=True)
    assert kept.stdout == ""


SCRIPTS = os.path.join(ROOT, "scripts")
ASCEND_RECIPE = os.path.join(ROOT, "configs", "repmlp", "repmlp_t224_ascend.yaml")


def _env(tmp_path, **extra):
    # the launchers run `python` and `msrun` from PATH: this interpreter first
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PATH=path, LOG_DIR=str(tmp_path / "logs"), **extra)


@pytest.mark.parametrize("launcher", ["run_distribute_8p.sh", "run_multinode.sh"])
def test_ascend_recipe_on_cpu_fails_before_any_worker_starts(tmp_path, launcher):
    # used to print the device error 8 times among 32 warnings and hang while msrun's scheduler retried
    opts = ["--node_rank", "0", "--master_addr", "127.0.0.1", "--log_dir", str(tmp_path / "logs")] \
        if launcher == "run_multinode.sh" else []
    start = time.monotonic()
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, launcher), *opts, ASCEND_RECIPE, "--data_dir",
                           str(tmp_path / "data")], capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                          env=_env(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - start < 60
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device_target Ascend is not available"), proc.stderr
    assert "--device_target CPU" in lines[0]
    assert not (tmp_path / "logs").exists()  # msrun never started


def test_preflight_refuses_a_bad_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: demo_repmlp\ndevice_target: CPU\nlearning_rate_typo: 0.1\n")
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "preflight.py"), "--local_workers", "2", "--",
                           "--config", str(bad), "--distribute", "True"], capture_output=True, text=True,
                          timeout=120, env=_env(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "learning_rate_typo" in proc.stderr, \
        proc.stderr


# Stand-in for msrun (the guard's logic, in seconds): a scheduler in msrun's process group, workers in sessions of
# their own (as msrun starts them), one with a child of its own; worker 0 fails, msrun itself hangs on.
_FAKE_MSRUN = r"""
import os, subprocess, sys, time
log_dir, pid_file, mode = sys.argv[1:4]
os.makedirs(log_dir, exist_ok=True)
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
procs = [subprocess.Popen(sleeper)]  # the "scheduler"
worker1 = [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
           "'import time; time.sleep(300)']); print('grandchild started', flush=True); time.sleep(300)"]
with open(os.path.join(log_dir, "worker_1.log"), "w") as log:
    procs.append(subprocess.Popen(worker1, stdout=log, start_new_session=True))
with open(os.path.join(log_dir, "worker_0.log"), "w") as log:
    script = ("print('epoch 1/2 step 1/3 loss 2.3', flush=True)\nimport sys, time\ntime.sleep(1)\n"
              + ("print('error: boom: set --data_dir to a folder with train/ and val/', flush=True)\nsys.exit(2)"
                 if mode == "fail" else "sys.exit(0)"))
    procs.append(subprocess.Popen([sys.executable, "-c", script], stdout=log, start_new_session=True))
if mode == "ok":
    for p in procs:
        p.kill()
    procs[2].wait()
    print("All workers successfully exit!", flush=True)
    sys.exit(0)
time.sleep(1.5)
with open(pid_file, "w") as f:
    f.write(" ".join(str(p.pid) for p in procs))
print("msrun: waiting for the scheduler", flush=True)
time.sleep(300)
"""


def _all_pids(pid_file):
    with open(pid_file) as f:
        pids = [int(p) for p in f.read().split()]
    # plus the grandchild started by worker 1
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid in pids:
                pids.append(int(entry))
    return pids


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_guard_reports_the_worker_error_and_leaves_nothing_running(tmp_path):
    fake = tmp_path / "fake_msrun.py"
    fake.write_text(_FAKE_MSRUN)
    logs, pid_file = tmp_path / "logs", tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "msrun_guard.py"), "--log_dir", str(logs),
                             "--grace", "1", "--", sys.executable, str(fake), str(logs), str(pid_file), "fail"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = _all_pids(pid_file)
    assert len(pids) == 4  # scheduler, two workers, worker 1's child
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert err.strip().splitlines()[-1] == "error: boom: set --data_dir to a folder with train/ and val/"
    assert "worker 0 failed" in err and "epoch 1/2 step 1/3" in err  # the end of worker 0's log
    assert "msrun: waiting for the scheduler" in out  # msrun's own output still reaches the console
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)]


def test_guard_passes_a_clean_run_through(tmp_path):
    fake = tmp_path / "fake_msrun.py"
    fake.write_text(_FAKE_MSRUN)
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "msrun_guard.py"), "--log_dir", str(logs), "--",
                           sys.executable, str(fake), str(logs), str(tmp_path / "pids"), "ok"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All workers successfully exit!" in proc.stdout and proc.stderr == ""


def test_guard_timeout_stops_everything(tmp_path):
    fake = tmp_path / "fake_msrun.py"
    fake.write_text(_FAKE_MSRUN.replace("else \"sys.exit(0)\")", "else \"time.sleep(300)\")"))
    logs, pid_file = tmp_path / "logs", tmp_path / "pids"
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "msrun_guard.py"), "--log_dir", str(logs),
                           "--timeout", "4", "--", sys.executable, str(fake), str(logs), str(pid_file), "hang"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 124, proc.stdout + proc.stderr
    assert "did not finish within --timeout 4 s" in proc.stderr
    time.sleep(0.5)
    assert not [p for p in _all_pids(pid_file) if _alive(p)]
