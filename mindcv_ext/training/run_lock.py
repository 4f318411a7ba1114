"""One live training run per ckpt_save_dir.

Two runs writing one directory overwrite each other's latest.ckpt and metrics.jsonl. Rank 0 of a run holds a
POSIX lock (fcntl.lockf) on `<ckpt_save_dir>/.train.lock` for the run's whole life and deletes the file when it
ends. The kernel drops the lock when the process ends in any way (SIGKILL included), so a killed run leaves at most
an unlocked file and never a locked directory; a POSIX lock is also not inherited by forked data-pipeline workers,
which may outlive a killed run for a moment.

Under msrun every rank shares the directory, but only rank 0 writes there, so only rank 0 takes the lock; the
other ranks learn its outcome through one all-reduce and stop with it instead of hanging in their first
collective.
"""
import os
import socket
import time
from typing import Optional

from ..checkpoint import creatable_under, remove_temp_files
from ..config import ConfigError

__all__ = ["LOCK_NAME", "check_output_dir", "RunDir", "claim_run_dir"]

LOCK_NAME = ".train.lock"
# Temporary files of the writers in this package that a killed run can leave behind (see metrics.py and
# ckpt_manager.py); checkpoint temporaries are matched by checkpoint.remove_temp_files.
_OTHER_TEMP_SUFFIXES = (".link.tmp", "metrics.jsonl.tmp", ".tmp.png")


def check_output_dir(path: str) -> None:
    """Raise ConfigError (one line) unless `path` is or can become a writable directory. Creates nothing."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"ckpt_save_dir {path} is a file, not a directory; pass a directory (it is created when "
                          f"missing), e.g. --ckpt_save_dir {path}_run.")
    existing, problem = creatable_under(path)
    if problem == "file":
        raise ConfigError(f"ckpt_save_dir {path} cannot be created: {existing} is a file. Pick another "
                          f"--ckpt_save_dir.")
    if problem == "unwritable":
        what = "it" if existing == path else f"its parent {existing}"
        raise ConfigError(f"ckpt_save_dir {path}: {what} is not writable (permissions or a read-only file "
                          f"system). Pick another --ckpt_save_dir.")


class RunDir:
    """The claimed ckpt_save_dir (rank 0) or a stand-in on the other ranks (lock_fd None)."""

    def __init__(self, directory: str, lock_fd: Optional[int], created: bool):
        self.directory = directory
        self.lock_fd = lock_fd
        self.created = created  # this run made the directory: it may remove it again if it never trained

    def release(self) -> None:
        """At the end of the run: delete the lock file (while still holding it), then let go of the lock."""
        if self.lock_fd is None:
            return
        try:
            os.remove(os.path.join(self.directory, LOCK_NAME))
        except OSError:
            pass
        os.close(self.lock_fd)
        self.lock_fd = None

    def remove_if_unused(self) -> bool:
        """For a run that stops before training: delete the directory again if this run created it and it holds
        nothing but this run's lock file, log and empty metrics. Returns True if it was removed."""
        if self.lock_fd is None or not self.created:
            return False
        ours = {LOCK_NAME, "train.log", "metrics.jsonl"}
        try:
            names = set(os.listdir(self.directory))
            metrics = os.path.join(self.directory, "metrics.jsonl")
            if not names <= ours or (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
                return False
            for name in names:
                os.remove(os.path.join(self.directory, name))
            os.rmdir(self.directory)
        except OSError:
            return False
        return True


def _lock(directory: str):
    """(fd holding the lock, None) or (None, reason it is refused)."""
    import fcntl

    path = os.path.join(directory, LOCK_NAME)
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "holder unknown"
            finally:
                os.close(fd)
            return None, holder
        # A finishing run deletes its lock file while still holding the lock: a lock won on that deleted file
        # protects nothing, so check that the name still leads to the locked file, else start over.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        return None, "its lock file keeps being replaced"
    info = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode("utf-8"), 0)
    return fd, None


def claim_run_dir(directory: str, rank: int = 0, group_size: int = 1, agree=None, check=None) -> RunDir:
    """Rank 0: create `directory` if needed, take its run lock and remove temporary files of earlier killed
    runs. Raises ConfigError (on every rank) when another live run holds the directory or it cannot be written,
    or when `check()`, called by rank 0 under the lock, raises ConfigError (the lock is let go then).

    `agree(flag) -> sum of flag over ranks` is needed when group_size > 1 (train.py passes an all-reduce)."""
    directory = os.path.abspath(directory)
    fd, error, created = None, None, False
    if rank == 0:
        try:
            created = not os.path.isdir(directory)
            os.makedirs(directory, exist_ok=True)
            fd, holder = _lock(directory)
            if fd is None:
                error = (f"{directory} is in use by another training run ({holder}); two runs in one ckpt_save_dir "
                         f"overwrite each other's checkpoints and metrics. Wait for it to end, stop it, or pick "
                         f"another --ckpt_save_dir.")
        except OSError as e:
            error = f"Cannot use ckpt_save_dir {directory}: {e.strerror or e}. Pick another --ckpt_save_dir."
        if fd is not None and check is not None:
            try:
                check()
            except ConfigError as e:
                error = str(e)
                RunDir(directory, fd, created).release()
                fd = None
    if group_size > 1:  # every rank must reach this call, so rank 0 reports its failure only after it
        if agree(1 if error else 0) > 0 and error is None:
            error = f"rank 0 could not claim ckpt_save_dir {directory} (see rank 0's error); stopping too."
    if error:
        raise ConfigError(error)
    if fd is not None:
        remove_temp_files(directory)
        for name in os.listdir(directory):
            if name.endswith(_OTHER_TEMP_SUFFIXES):
                try:
                    os.remove(os.path.join(directory, name))
                except OSError:
                    pass
    return RunDir(directory, fd, created)
