"""Console output: logging setup (stdout + train.log on rank 0) and the step-time / ETA tracker with a one-line
progress bar when stdout is a terminal."""
import logging
import os
import sys
import time
from typing import Optional

__all__ = ["setup_logging", "Progress", "format_duration"]


class _Formatter(logging.Formatter):
    """Escapes what UTF-8 cannot encode: a file name that is not UTF-8 (say, a bad image's in an error) reaches
    Python as lone surrogates, and writing one raises in the middle of logging."""

    def format(self, record):
        text = super().format(record)
        try:  # the name's original bytes, shown as \xNN like scripts/check_dataset.py does
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def setup_logging(save_dir: str, rank: int, group_size: int) -> logging.Logger:
    """Rank 0 logs INFO to stdout and to <save_dir>/train.log (appended, so a resumed run continues it);
    other ranks log warnings and errors only (msrun keeps one log file per worker)."""
    log = logging.getLogger("train")
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO)
    prefix = f"[rank {rank}] " if group_size > 1 else ""
    fmt = _Formatter(f"%(asctime)s {prefix}%(message)s", "%Y-%m-%d %H:%M:%S")
    out = logging.StreamHandler(sys.stdout)
    out.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    out.setFormatter(fmt)
    log.addHandler(out)
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        file = logging.FileHandler(os.path.join(save_dir, "train.log"), encoding="utf-8",
                                   errors="backslashreplace")
        file.setFormatter(fmt)
        log.addHandler(file)
    return log


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Tracks step times for img/s and ETA. The first step of a run includes graph compilation, so it does not
    count towards the speed estimate."""

    def __init__(self, total_epochs: int, steps_per_epoch: int, global_batch: int, enabled: bool = True,
                 stream=None):
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = global_batch
        self.stream = stream or sys.stdout
        self.bar = enabled and self.stream.isatty()
        self.timed_steps = 0
        self.timed_seconds = 0.0
        self.eval_seconds: Optional[float] = None
        self._last = None

    def start_step(self):
        self._last = time.perf_counter()

    def end_step(self, first_of_run: bool) -> float:
        dt = time.perf_counter() - self._last
        if not first_of_run:
            self.timed_steps += 1
            self.timed_seconds += dt
        return dt

    @property
    def step_seconds(self) -> Optional[float]:
        return self.timed_seconds / self.timed_steps if self.timed_steps else None

    def img_per_s(self) -> float:
        s = self.step_seconds
        return self.global_batch / s if s else 0.0

    def eta(self, epoch: int, step: int, evals_left: int) -> Optional[float]:
        s = self.step_seconds
        if s is None:
            return None
        steps_left = (self.total_epochs - epoch) * self.steps_per_epoch + (self.steps_per_epoch - step)
        return steps_left * s + evals_left * (self.eval_seconds or 0.0)

    def draw(self, epoch: int, step: int, loss: float, lr: float, evals_left: int):
        if not self.bar:
            return
        width = 24
        done = int(width * step / self.steps_per_epoch)
        eta = self.eta(epoch, step, evals_left)
        self.stream.write(f"\repoch {epoch}/{self.total_epochs} [{'=' * done}{' ' * (width - done)}] "
                          f"{step}/{self.steps_per_epoch} loss {loss:.4f} lr {lr:.3e} {self.img_per_s():.1f} img/s "
                          f"ETA {format_duration(eta) if eta is not None else '?'}  ")
        self.stream.flush()

    def clear(self):
        if self.bar:
            self.stream.write("\r" + " " * 110 + "\r")
            self.stream.flush()
