"""Find the images that would stop a MindSpore data pipeline, before a run starts.

MindSpore's JPEG decoder does not just raise on some broken files: on JPEGs cut short inside their header it dies
with SIGFPE or SIGSEGV, or loops forever (measured with MindSpore 2.10 on CPU), taking the training process with it.
So the checks run in separate worker processes (`_scan_worker.py`): a worker that dies or hangs costs one restart,
and the file it was on is reported.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Iterable, List, Optional, Sequence, Tuple

__all__ = ["find_bad_images", "check_images", "list_image_entries", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "val", "validation", "test")
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_scan_worker.py")
_CHUNK = 256  # paths per request: amortises the pipe round trip, small enough to balance the workers


def _split_dirs(root: str, splits: Optional[Sequence[str]] = None) -> List[str]:
    """The ImageFolder split directories under root: the named `splits`, else its train/val/... if it has any,
    else root itself."""
    if splits is not None:
        return [os.path.join(root, s) for s in splits]
    found = [os.path.join(root, s) for s in SPLIT_NAMES if os.path.isdir(os.path.join(root, s))]
    return found or [root]


def list_image_entries(root: str, splits: Optional[Sequence[str]] = None) -> List[str]:
    """Every entry ImageFolderDataset would read as a sample: all entries of every class directory (hidden files
    and subdirectories included: MindSpore reads those too). Files directly in a split directory are not samples.
    `splits` (e.g. ['val']) limits the listing to those directories under root."""
    entries = []
    for split in _split_dirs(root, splits):
        classes = []
        with os.scandir(split) as it:
            for e in it:
                try:
                    if e.is_dir():
                        classes.append(e.path)
                except OSError:  # a symlink loop or similar where a class directory should be: report, not crash
                    entries.append(e.path)
        for cls in sorted(classes):
            with os.scandir(cls) as it:
                entries.extend(e.path for e in it)
    entries.sort()
    return entries


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class _Worker:
    def __init__(self, mode: str, timeout: int, workdir: str):
        self.log = tempfile.TemporaryFile(dir=workdir)
        # cwd in a scratch directory: MindSpore's Decode dumps the images it cannot read into the current directory
        self.proc = subprocess.Popen([sys.executable, _WORKER, "--decode", mode, "--timeout", str(timeout)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=workdir,
                                     text=True, encoding="utf-8", errors="surrogateescape")
        self.timeout = timeout

    def run(self, paths: List[str]) -> Tuple[List[Optional[str]], Optional[str]]:
        """Answers for a prefix of `paths`; if the worker died, also why (for the first unanswered path)."""
        answers = []
        try:
            self.proc.stdin.write(json.dumps(paths) + "\n")
            self.proc.stdin.flush()
            for _ in paths:
                line = self.proc.stdout.readline()
                if not line:
                    break
                answers.append(json.loads(line))
        except BrokenPipeError:
            pass
        if len(answers) == len(paths):
            return answers, None
        rc = self.proc.wait()
        if rc == -signal.SIGALRM:
            return answers, f"MindSpore's decoder hangs on it (no result after {self.timeout} s)"
        if -rc in (signal.SIGFPE, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT):
            return answers, f"MindSpore's decoder crashes on it ({_signal_name(rc)}, the process is killed)"
        if rc < 0:  # e.g. SIGKILL from the OOM killer: still name the file, but do not blame the decoder
            return answers, f"the check process was killed ({_signal_name(rc)}) while reading it"
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"image check worker exited with code {rc}: " + " | ".join(tail))

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        self.log.close()


def _serve(jobs: "queue.Queue", results: dict, errors: list, mode: str, timeout: int, workdir: str):
    worker = None
    try:
        while True:
            try:
                chunk = jobs.get_nowait()
            except queue.Empty:
                return
            while chunk:
                worker = worker or _Worker(mode, timeout, workdir)
                answers, death = worker.run(chunk)
                results.update(zip(chunk, answers))
                if death is None:
                    break
                results[chunk[len(answers)]] = death  # the file it was on when it died
                worker.close()
                worker = None
                chunk = chunk[len(answers) + 1:]
    except Exception as e:  # surfaced by the caller: a thread cannot raise into it
        errors.append(e)
    finally:
        if worker is not None:
            worker.close()


def find_bad_images(root: str, workers: Optional[int] = None, *, full_decode: bool = False,
                    decode_timeout: int = 60, paths: Optional[Iterable[str]] = None,
                    splits: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """List (path, reason) for every sample under `root` that is not a readable image, sorted by path.

    `root` is a dataset root with train/ and val/ (or test/, validation/) split directories, or one split
    directory holding class directories; `splits` (e.g. ['val']) checks only those directories under root. Found:
    empty, truncated and corrupt files, text or other non-image files, formats MindSpore cannot decode, wrong
    extensions, directories inside class directories, and files on which MindSpore's decoder crashes or hangs.

    Default mode checks the file structure as MindSpore's decoder reads it (JPEG markers, tables, frame and scan
    headers, every marker through the end of progressive files, the end-of-image marker; PNG IEND; BMP size) and
    runs MindSpore's decoder only on unusual files; `full_decode=True` decodes every file with it (thorough,
    much slower). `workers` processes run in parallel (default: CPU count).
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Dataset directory not found: {root!r}. Expected an ImageFolder tree "
                                f"root/train/<class>/<image> and root/val/<class>/<image>.")
    entries = list(paths) if paths is not None else list_image_entries(root, splits)
    if not entries:
        return []
    # The workers run in a scratch cwd: give them absolute paths, report the caller's spelling.
    given = {os.path.abspath(p): p for p in entries}
    entries = list(given)
    workers = max(1, min(int(workers or os.cpu_count() or 1), (len(entries) + _CHUNK - 1) // _CHUNK))
    jobs = queue.Queue()
    for i in range(0, len(entries), _CHUNK):
        jobs.put(entries[i:i + _CHUNK])
    results, errors = {}, []
    with tempfile.TemporaryDirectory(prefix="check_data_") as workdir:
        threads = [threading.Thread(target=_serve, args=(jobs, results, errors, "all" if full_decode else "auto",
                                                         int(decode_timeout), workdir), daemon=True)
                   for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    missing = [p for p in entries if p not in results]
    if missing:  # a worker thread stopped early without an exception: never report a partial check as clean
        raise RuntimeError(f"image check incomplete: {len(missing)} files were not checked, e.g. {missing[0]}")
    return sorted((given[p], r) for p, r in results.items() if r is not None)


def check_images(root: str, workers: Optional[int] = None, splits: Optional[Sequence[str]] = None) -> int:
    """Refuse a dataset with files MindSpore's decoder would refuse or crash on, before a run reads them (hours
    into training, or on an evaluation's path, where mindcv's Decode also dumps the file into the working
    directory). Raises ValueError listing them; returns the number of files checked."""
    entries = list_image_entries(root, splits=splits)
    bad = find_bad_images(root, workers=workers, paths=entries)
    if bad:
        shown = "\n".join(f"  {path}: {reason}" for path, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValueError(f"{len(bad)} unreadable image(s) under {root}:\n{shown}{more}\nRemove or replace them "
                         f"(python scripts/check_dataset.py --data_dir {root} lists them all), then start again.")
    return len(entries)
