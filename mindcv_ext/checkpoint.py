"""Writing checkpoints: atomic (temporary file, then rename), never with NaN/inf values, and with one clear line
when the disk is full. Reading and loading them is `mindcv_ext.weights`' job; CheckpointError is shared by both.
"""
import contextlib
import errno
import glob
import logging
import os
import random
import re
import shutil
import string
import time
from typing import Optional

import numpy as np

__all__ = [
    "CheckpointError",
    "check_output_path",
    "CHECKPOINT_SUFFIXES",
    "creatable_under",
    "checkpoint_format",
    "save_checkpoint",
    "NonFiniteWeightsError",
    "CheckpointWriteError",
    "nonfinite_tensors",
    "describe_nonfinite",
    "remove_temp_files",
    "make_temp",
    "is_temp_name",
]

class CheckpointError(ValueError):
    """A checkpoint that does not fit the network, or cannot be read. The message says why and what to do."""


def checkpoint_format(path: str) -> str:
    """'safetensors' for *.safetensors, else MindSpore's own 'ckpt'."""
    return "safetensors" if str(path).endswith(".safetensors") else "ckpt"


def _as_save_list(obj):
    import mindspore as ms  # here, not at the top: infer.py's .onnx path imports this module without MindSpore
    from mindspore import Parameter, Tensor

    if isinstance(obj, ms.nn.Cell):
        return [{"name": p.name, "data": p} for p in obj.get_parameters()]
    if isinstance(obj, dict):
        return [{"name": k, "data": v if isinstance(v, (Tensor, Parameter)) else Tensor(v)} for k, v in obj.items()]
    return [item if isinstance(item, dict) else {"name": item.name, "data": item} for item in obj]


class NonFiniteWeightsError(CheckpointError):
    """save_checkpoint refused to write NaN/inf values; `bad` lists (name, count of non-finite values)."""

    def __init__(self, message: str, bad=()):
        super().__init__(message)
        self.bad = list(bad)


class CheckpointWriteError(CheckpointError):
    """The file system refused the write (full disk, read-only, ...); the previous file is unchanged."""

    def __init__(self, message: str, directory: str = ""):
        super().__init__(message)
        self.directory = directory


def _host_array(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data
    import mindspore as ms

    if getattr(data, "dtype", None) == getattr(ms, "bfloat16", object()):  # NumPy has no bfloat16
        data = data.astype(ms.float32)
    return data.asnumpy() if hasattr(data, "asnumpy") else np.asarray(data)


def _scan(save_list):
    """([(name, number of NaN/inf values)] of the float tensors, total bytes)."""
    bad, nbytes = [], 0
    for item in save_list:
        value = _host_array(item["data"])
        nbytes += value.nbytes + 64 + len(item["name"])  # + MindSpore's per-tensor record header, roughly
        if value.dtype.kind in "fc":
            count = int(value.size - np.count_nonzero(np.isfinite(value)))
            if count:
                bad.append((item["name"], count))
    return bad, nbytes


def nonfinite_tensors(items) -> list:
    """[(name, number of NaN/inf values)] of the float tensors among `items` (a Cell, a name -> Tensor dict or
    MindSpore's list form), in order."""
    return _scan(_as_save_list(items))[0]


def describe_nonfinite(bad, limit: int = 6) -> str:
    shown = ", ".join(f"{name} ({count})" for name, count in bad[:limit])
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{sum(c for _, c in bad)} NaN/inf value(s) in {len(bad)} tensor(s): {shown}{more}"


# `.<file name>.<pid>-<8 random characters>.tmp...`: our temporary files and folders (make_temp below; the suffix
# tells a writer the format: .ckpt, .safetensors, .png), and
# MindSpore's own `<ours minus extension>.tmp` next to them. The pid tells a killed run's leftovers from a live run's;
# names without one are from versions before it.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]{8}\.tmp(\.(ckpt|safetensors|tmp|png))*$")
_LEGACY_EXPORT_RE = re.compile(r"^\.export-[A-Za-z0-9_]{8}$")  # scripts/export.py's folders before the pid
_PROCESS_START = time.time()
_TEMP_CHARS = string.ascii_letters + string.digits


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(path: str, pid: Optional[str]) -> bool:
    """A temporary of a run that is over: its pid is not alive, or (no pid in the name) it was written before this
    process started. Never one of a live run, this process's included."""
    if pid is not None:
        return int(pid) != os.getpid() and not _pid_alive(int(pid))
    try:
        return os.path.getmtime(path) < _PROCESS_START
    except OSError:
        return False


def is_temp_name(name: str) -> bool:
    """A make_temp temporary's name (a live or a killed run's): never an input, never an output name."""
    return bool(_TEMP_RE.match(os.path.basename(name)))


def make_temp(path: str, suffix: str = "", directory: bool = False) -> str:
    """Create and return a temporary file (or folder) next to `path`, named `.<name>.<pid>-<random>.tmp<suffix>`:
    the same file system, so os.replace is atomic, and a name remove_temp_files can tell from a live run's."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    while True:
        temp = os.path.join(folder, f".{name}.{os.getpid()}-{''.join(random.choices(_TEMP_CHARS, k=8))}.tmp{suffix}")
        try:
            if directory:
                os.mkdir(temp, 0o700)
            else:
                os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return temp
        except FileExistsError:
            continue


def remove_temp_files(directory: str, name: Optional[str] = None, legacy_export: bool = False) -> list:
    """Delete what killed runs left in `directory`: make_temp's files and folders (only those for file `name` if
    given) whose process is gone; with legacy_export, also export.py's `.export-XXXXXXXX` folders of versions
    before the pid was in the name, if older than this process. Returns the removed paths. Never touches finished
    files or a live run's temporaries."""
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(directory, entry)
        m = _TEMP_RE.match(entry)
        if m and (name is None or m.group("name") == name):
            pid = m.group("pid")
        elif legacy_export and _LEGACY_EXPORT_RE.match(entry):
            pid = None
        else:
            continue
        if not _stale(path, pid):
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TB"


def _write_error(error: OSError, path: str, directory: str, need: int) -> CheckpointWriteError:
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        try:
            free = _format_bytes(shutil.disk_usage(directory).free)
        except OSError:
            free = "unknown"
        text = (f"Cannot write {path}: no space left on the device of {directory} ({free} free; this checkpoint "
                f"needs about {_format_bytes(need)}, and replacing a file needs that much on top of the old one). "
                f"The previous {os.path.basename(path)} (if any) is unchanged; free some space there.")
    else:
        reason = error.strerror or str(error)
        text = (f"Cannot write {path}: {reason}. The previous {os.path.basename(path)} (if any) is unchanged; make "
                f"{directory} writable or choose another directory.")
    return CheckpointWriteError(text, directory)


class _DropSaveFailureLog(logging.Filter):
    # MindSpore logs a CRITICAL line before re-raising a failed write; our error already says it, in one line.
    def filter(self, record):
        return "Failed to save the checkpoint file" not in str(record.msg)


def _mindspore_logger():
    try:
        from mindspore import log as ms_log
        return ms_log._get_logger()  # noqa: SLF001  (no public handle to MindSpore's logger)
    except Exception:  # noqa: BLE001  (another MindSpore version: its line just shows)
        return None


def creatable_under(path: str):
    """(nearest existing ancestor of `path`, problem): problem is None when `path` can be created there, "file"
    when that ancestor is a file, "unwritable" when it is a directory we cannot write in (permissions, or a
    read-only file system: access(2) says EROFS even for root). Creates nothing."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return existing, "file"
    return existing, None if os.access(existing, os.W_OK | os.X_OK) else "unwritable"


# The names save_checkpoint writes and mindcv_ext.weights reads back as checkpoints: the format follows the name
# (a MindSpore checkpoint named x.pth or x would be refused by the loaders, which read .pth as PyTorch).
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")


def check_output_path(path: str, what: str = "--output", suffixes: Optional[tuple] = None,
                      tool: Optional[str] = None, overwrite: bool = False) -> str:
    """Refuse (CheckpointError, one line), before any long work, an output file path that cannot be written: a
    directory, a parent that is a file, a read-only location, (with `suffixes`) a name the readers would not take
    back, or an existing file the output rule (mindcv_ext.outputs: only `tool`'s own marked outputs, or any with
    `overwrite`; never a run's training state or a read-only file) does not let `tool` replace. Returns the
    absolute path."""
    if suffixes and not str(path).endswith(tuple(suffixes)):
        stem = os.path.splitext(os.path.basename(os.fspath(path)))[0] or "model"
        raise CheckpointError(f"{what} {path}: name it {' or '.join(stem + s for s in suffixes)} (the format "
                              f"follows the name; {', '.join(suffixes)} are what the loaders read back).")
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path} is a directory; name a file in it, e.g. {os.path.join(path, 'model.ckpt')}")
    existing, problem = creatable_under(os.path.dirname(path))
    if problem == "file":
        raise CheckpointError(f"{what} {path}: {existing} is a file, not a directory; choose another location.")
    if problem == "unwritable":
        raise CheckpointError(f"{what} {path}: cannot write in {existing} (read-only or no permission); choose "
                              f"another location.")
    from .outputs import OutputError, check_replace
    try:
        check_replace(path, tool, overwrite, what)
    except OutputError as e:
        raise CheckpointError(str(e)) from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(obj, path: str, append_dict: Optional[dict] = None) -> str:
    """Save a Cell, a name -> Tensor dict or MindSpore's list form atomically: a temporary file in the same
    directory, then os.replace, so a crash never leaves a half-written file under the final name.

    Refuses (NonFiniteWeightsError) to write NaN/inf float values, so nothing saved is silently broken; a
    failing write (full disk, read-only, ...) raises CheckpointWriteError in one line, and in every case the
    previous file stays as it was and no temporary file is left behind (also none of earlier killed saves into
    the same folder)."""
    path = os.fspath(path)
    fmt = checkpoint_format(path)
    save_list = _as_save_list(obj)
    bad, need = _scan(save_list)
    if bad:
        raise NonFiniteWeightsError(f"Refusing to write {path}: {describe_nonfinite(bad)}. The previous "
                                    f"{os.path.basename(path)} (if any) is unchanged.", bad)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = ".safetensors" if fmt == "safetensors" else ".ckpt"  # MindSpore appends .ckpt to other names
    tmp = None
    ms_logger, quiet = _mindspore_logger(), _DropSaveFailureLog()
    if ms_logger is not None:
        ms_logger.addFilter(quiet)
    try:
        os.makedirs(directory, exist_ok=True)
        remove_temp_files(directory)  # leftovers of killed saves into this folder, whatever file they were for
        tmp = make_temp(path, suffix)
        import mindspore as ms

        ms.save_checkpoint(save_list, tmp, append_dict=append_dict, format=fmt)
        # MindSpore leaves its files read-only (0400); an ordinary mode, so read-only means a user protected a file
        # (mindcv_ext.outputs refuses to replace those)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise _write_error(e, path, directory, need) from None
    finally:
        if ms_logger is not None:
            ms_logger.removeFilter(quiet)
        if tmp is not None:  # ours and MindSpore's own (<ours>.tmp), whatever stage the write stopped at
            for leftover in glob.glob(glob.escape(tmp[:-len(suffix)]) + "*"):
                with contextlib.suppress(OSError):
                    os.remove(leftover)
    return path
