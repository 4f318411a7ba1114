"""Find the images that would stop a MindSpore data pipeline, before a run starts.

MindSpore's JPEG decoder does not just raise on some broken files: on JPEGs cut short inside their header it dies
with SIGFPE or SIGSEGV, or loops forever (measured with MindSpore 2.10 on CPU), taking the training process with it.
So the checks run in separate worker processes (`_scan_worker.py`): a worker that dies or hangs costs one restart,
and the file it was on is reported.
"""
import concurrent.futures
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Iterable, List, Optional, Sequence, Tuple

from ..cli import printable
from ._scan_worker import check_format, read_head, reason_of, stat_regular, stat_sample

__all__ = ["find_bad_images", "check_images", "list_image_entries", "scan_entries", "quick_check",
           "why_not_regular", "special_files", "find_images", "IMAGE_EXTENSIONS", "SPLIT_NAMES"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff")  # what MindSpore decodes

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


def _class_dirs(root: str, splits: Optional[Sequence[str]]) -> Tuple[List[str], List[str]]:
    """(the class directories of every split, sorted; entries of a split that cannot even be stat'ed as a
    directory, such as a symbolic-link loop: reported as bad samples rather than a crash)."""
    classes, odd = [], []
    for split in _split_dirs(root, splits):
        with os.scandir(split) as it:
            for e in it:
                try:
                    if e.is_dir():
                        classes.append(e.path)
                except OSError:  # a symlink loop or similar where a class directory should be: report, not crash
                    odd.append(e.path)
    return sorted(classes), odd


def list_image_entries(root: str, splits: Optional[Sequence[str]] = None) -> List[str]:
    """Every entry ImageFolderDataset would read as a sample: all entries of every class directory (hidden files
    and subdirectories included: MindSpore reads those too). Files directly in a split directory are not samples.
    `splits` (e.g. ['val']) limits the listing to those directories under root. Lists names only: nothing is
    opened (see `scan_entries` for the quick check)."""
    classes, entries = _class_dirs(root, splits)
    for cls in classes:
        with os.scandir(cls) as it:
            entries.extend(e.path for e in it)
    entries.sort()
    return entries


_HEAD_BYTES = 64  # enough for every signature `sniff` knows, and a text/binary guess for the message


def why_not_regular(path: str) -> Optional[str]:
    """None for a regular file (or a link to one); else what it is (directory, FIFO, socket, device, broken link,
    link loop), from stat alone: safe to call on anything, it never opens the path (a FIFO would block)."""
    return reason_of(stat_regular, path)


def special_files(paths: Iterable[str]) -> List[Tuple[str, str]]:
    """(path, why) for each of `paths` that is not a regular file: FIFOs, sockets, devices, directories, broken
    links, link loops. From stat alone, so it is safe before anything opens the files (a FIFO blocks its reader)."""
    return [(p, r) for p, r in ((p, why_not_regular(p)) for p in paths) if r]


def find_images(image_path: str, what: str = "--image_path") -> Tuple[List[str], List[Tuple[str, str]]]:
    """(image files, [(path, why)] left out) for an image or a folder searched recursively (sorted, symlinked
    folders not followed) for IMAGE_EXTENSIONS: the one finder of the prediction tools (infer.py, predict_seg.py).
    Special files in the folder are left out from their stat, never opened; one named directly, or a path that
    does not exist, is a ValueError (bad input)."""
    if not os.path.isdir(image_path):
        if not os.path.lexists(image_path):
            raise ValueError(f"{what} {image_path!r} does not exist; pass an image file or a folder of images.")
        reason = why_not_regular(image_path)
        if reason:
            raise ValueError(f"{what} {image_path!r}: {reason}; pass an image file or a folder of images.")
        return [image_path], []  # named explicitly: checked like any other, whatever its extension
    found = []
    for root, dirs, files in os.walk(image_path):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
    skipped = special_files(found)
    left_out = {p for p, _ in skipped}
    return [p for p in found if p not in left_out], skipped


def quick_check(path: str) -> Optional[str]:
    """Why `path` cannot be read as an image, from its name, its stat and its first bytes; or None. Never opens a
    non-regular file (a FIFO would block forever). Catches what needs no decoding: hidden files, directories,
    FIFOs, sockets, devices, broken links, empty files, and files whose first bytes are not an image format
    MindSpore decodes (text, .DS_Store, GIF, WebP, ...). Truncated or corrupt images need the full check."""
    return reason_of(_sample_format, path)


def _sample_format(path: str) -> None:
    stat_sample(path)
    check_format(read_head(path, _HEAD_BYTES))


def _scan_class(cls: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    entries, bad = [], []
    with os.scandir(cls) as it:
        for e in it:
            entries.append(e.path)
            reason = quick_check(e.path)
            if reason is not None:
                bad.append((e.path, reason))
    return entries, bad


def scan_entries(root: str, splits: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None) -> Tuple[List[str], List[Tuple[str, str]]]:
    """The quick pre-scan train.py runs by default: (every entry list_image_entries lists, sorted; (path, reason)
    for those `quick_check` refuses, sorted). Per file one stat and one read of its first bytes, in `threads`
    threads (default 8: the time goes to system calls and disk latency, which threads overlap)."""
    classes, odd = _class_dirs(root, splits)
    entries = list(odd)
    bad = [(p, quick_check(p)) for p in odd]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(threads or 8))) as pool:
        for found, refused in pool.map(_scan_class, classes):
            entries.extend(found)
            bad.extend(refused)
    return sorted(entries), sorted(bad)


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
    extensions, hidden files, directories, FIFOs and other special files inside class directories (never opened),
    and files on which MindSpore's decoder crashes or hangs.

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


def check_images(root: str, workers: Optional[int] = None, splits: Optional[Sequence[str]] = None, *,
                 full: bool = True) -> int:
    """Refuse a dataset with files MindSpore's decoder would refuse, crash or hang on, before a run reads them
    (hours into training, or on an evaluation's path, where mindcv's Decode also dumps the file into the working
    directory). Always the quick pre-scan (`scan_entries`); with `full`, then the structure check of
    `find_bad_images` on the files that passed it. Raises ValueError with one line: the first bad files, their
    count and the fix; returns the number of files checked."""
    entries, bad = scan_entries(root, splits)
    if full:
        refused = {p for p, _ in bad}
        bad = sorted(bad + find_bad_images(root, workers=workers, paths=[p for p in entries if p not in refused]))
    if bad:
        first = "; ".join(f"{printable(path)}: {printable(reason)}" for path, reason in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{len(bad)} unreadable image(s) under {printable(root)}: {first}{more}. Every entry of a "
                         f"class folder is read as an image: delete these or move them out of the class folders "
                         f"(python scripts/check_dataset.py --data_dir {printable(root)} lists them all), then start "
                         f"again.")
    return len(entries)
