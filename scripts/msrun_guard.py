"""Run an msrun command so that a failed worker fails the launch, with its error on the console, and nothing is
left running.

    python scripts/msrun_guard.py --log_dir DIR [--timeout SECONDS] -- msrun ... --log_dir DIR ... python train.py ...

Why: msrun starts every worker in a session of its own and writes its output only to DIR/worker_<rank>.log. When a
worker fails before it joins the cluster, msrun (even with --join True) waits for the scheduler, which keeps
retrying for up to --cluster_time_out (10 minutes by default); without --join it exits 0 at once. This wrapper:

- forwards msrun's console output;
- watches the worker logs for train.py's "error: ..." line or a Python traceback, and msrun for "exit with
  exception"; after either it gives msrun --grace seconds (5) to finish, then stops everything;
- stops everything on --timeout, Ctrl-C or SIGTERM too: msrun, the scheduler and every worker with the processes
  they started (this process adopts orphans as a Linux child subreaper, so none escapes);
- on failure prints the end of the failing worker's log and, last, its error line; exits non-zero (msrun's code,
  1 when msrun said 0, 124 on timeout).
"""
import argparse
import ctypes
import glob
import os
import re
import signal
import subprocess
import sys
import threading
import time

_FATAL = re.compile(r"^(error: |Traceback \(most recent call last\))")
_CHATTER = re.compile(r"^\[(INFO|WARNING|DEBUG)\] ")
_MSRUN_FAILED = ("exit with exception", "Distributed job exited with exception")


def _descendants(root: int) -> list:
    """(pid, pgid) of every live process below `root`, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), int(fields[2]), fields[0]))
    found, todo = [], [root]
    while todo:
        for pid, pgid, state in children.get(todo.pop(), []):
            if state != b"Z":
                found.append((pid, pgid))
            todo.append(pid)
    return found


def _stop_all(keep: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process this one started (directly or not), group by group."""
    own_group = os.getpgid(0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = _descendants(os.getpid())
        if not procs:
            break
        for pid, pgid in procs:
            try:
                if pgid != own_group:
                    os.killpg(pgid, sig)
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _descendants(os.getpid()):
            _reap(keep)
            time.sleep(0.1)
    _reap(keep)


def _reap(keep: int) -> None:
    """Collect the exited orphans this subreaper adopted; not `keep` (msrun), whose status subprocess reads."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == keep:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) == me and fields[0] == b"Z":
                os.waitpid(int(entry), os.WNOHANG)
        except (OSError, ChildProcessError):
            continue


class _LogWatch:
    """Reads the worker logs msrun (re)writes during this run, remembering the first fatal line of each."""

    def __init__(self, log_dir: str, since: float):
        self.pattern = os.path.join(log_dir or ".", "worker_*.log")
        self.since = since
        self.offsets, self.fatal = {}, {}

    def scan(self) -> None:
        for path in glob.glob(self.pattern):
            try:
                st = os.stat(path)
                if st.st_mtime < self.since:  # left from an earlier run: msrun truncates it when it starts
                    continue
                offset = self.offsets.get(path, 0)
                if st.st_size < offset:
                    offset = 0
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # whole lines only
            self.offsets[path] = offset + end
            if path in self.fatal:
                continue
            for line in chunk[:end].decode("utf-8", "replace").splitlines():
                if _FATAL.match(line):
                    self.fatal[path] = line
                    break

    def report(self) -> str:
        """The end of the first failing worker's log and, last, its error line; '' when no worker failed."""
        if not self.fatal:
            return ""
        path = min(self.fatal, key=_rank)
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        errors = [ln for ln in lines if ln.startswith("error: ")]
        # MindSpore's own INFO/WARNING lines (cluster set-up chatter) would push the error out of the excerpt
        tail = [ln for ln in lines if ln.strip() and not _CHATTER.match(ln)][-15:]
        head = f"worker {_rank(path)} failed; the end of {path}:"
        last = errors[-1] if errors else f"error: worker {_rank(path)} failed (traceback above; all logs: " \
                                         f"{os.path.dirname(path) or '.'}/worker_*.log)"
        return "\n".join([head] + ["    " + ln for ln in tail] + [last])


def _rank(path: str) -> int:
    digits = re.findall(r"\d+", os.path.basename(path))
    return int(digits[-1]) if digits else 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python scripts/msrun_guard.py --log_dir DIR [--timeout S] -- msrun ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log_dir", default="", help="msrun's --log_dir (where worker_<rank>.log are written)")
    p.add_argument("--timeout", type=float, default=0, help="stop everything after this many seconds (0: never)")
    p.add_argument("--grace", type=float, default=5,
                   help="seconds msrun gets to finish by itself after a worker failed")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]

    # Orphans (the scheduler and workers when msrun dies first) become our children, so they can still be found.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass
    interrupted = []

    def on_signal(signum, _frame):
        interrupted.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    start = time.time()
    logs = _LogWatch(args.log_dir, start - 1)
    msrun_failed = []
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def forward():
        for raw in proc.stdout:
            sys.stdout.buffer.write(raw)
            sys.stdout.flush()
            if any(s.encode() in raw for s in _MSRUN_FAILED):
                msrun_failed.append(raw)

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()

    failed_at = timed_out = None
    while proc.poll() is None:
        time.sleep(0.5)
        _reap(proc.pid)
        logs.scan()
        now = time.time()
        if failed_at is None and (logs.fatal or msrun_failed):
            failed_at = now
        if interrupted:
            break
        if args.timeout and now - start > args.timeout:
            timed_out = True
            break
        if failed_at is not None and now - failed_at > args.grace:
            break
    running = proc.poll() is None
    _stop_all(proc.pid)
    rc = proc.wait()
    reader.join(timeout=5)
    logs.scan()

    where = f"logs: {args.log_dir or '.'}/worker_*.log, scheduler.log"
    if interrupted:
        print(f"\nerror: interrupted; stopped msrun and all its workers ({where})", file=sys.stderr)
        return 128 + interrupted[0]
    if timed_out:
        print(f"error: the run did not finish within --timeout {args.timeout:g} s; stopped msrun and all its workers "
              f"({where})", file=sys.stderr)
        return 124
    report = logs.report()
    if report or rc != 0 or msrun_failed:
        if report:
            print(report, file=sys.stderr)
        else:
            print(f"error: msrun {'was stopped' if running else f'exited with code {rc}'} without a worker error "
                  f"line; see the {where}", file=sys.stderr)
        return rc if rc > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
