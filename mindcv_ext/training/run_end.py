"""How a training run ends, for train.py and train_seg.py alike: which exit code each kind of stop gets (the table
in mindcv_ext.cli), one "error:" line on stderr and in train.log with the command to continue, and the run directory
let go of exactly once, from whichever thread ends the run (the main thread, or cli's watchdog when the main thread
is blocked in native code)."""
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable

from .. import cli
from ..checkpoint import CheckpointError, CheckpointWriteError, NonFiniteWeightsError
from ..config import ConfigError
from .step import NonFiniteLossError

__all__ = ["RunEnd"]


class RunEnd:
    """The main script sets `latest` (its latest.ckpt path), `run_dir` (the claimed RunDir) and `trained` (a step
    finished: the directory now holds work and is kept) as the run gets there."""

    def __init__(self, logger: str = "train", prog: str = ""):
        self.logger, self.prog = logger, prog
        self.reset()

    def reset(self, argv=None) -> None:
        """`argv`: the command line (default sys.argv's), for the command that continues the run."""
        self.latest, self.run_dir, self.trained = None, None, False
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self._ended = threading.Lock()

    def resume_command(self, latest: str) -> str:
        """The command line that started this run with --ckpt_path <latest> --resume_opt True in place of any it
        had: pasted as it is, it continues the run."""
        import shlex

        from ..config import split_cli

        try:
            config, pairs, _ = split_cli(self.argv)
        except ConfigError:
            config, pairs = None, []
        words = ["python", self.prog or os.path.basename(sys.argv[0]) or "train.py"]
        if config:
            words += ["--config", config]
        for key, value in pairs:
            if key not in ("ckpt_path", "resume_opt", "resume"):
                words += [f"--{key}", "True" if value is True else str(value)]
        words += ["--ckpt_path", latest, "--resume_opt", "True"]
        return " ".join(shlex.quote(w) for w in words)

    def resume_hint(self) -> str:
        latest = self.latest or "<ckpt_save_dir>/latest.ckpt"
        if os.path.exists(latest):
            return f"continue with: {self.resume_command(latest)}"
        return "no checkpoint was written yet; start again"

    def report(self, message) -> None:
        """To stderr, and into train.log when it is open; names read from files are escaped (cli.printable)."""
        line = "error: " + cli.printable(message)
        print(line, file=sys.stderr, flush=True)
        for handler in logging.getLogger(self.logger).handlers:
            if isinstance(handler, logging.FileHandler):
                handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.ERROR, "levelname": "ERROR"}))

    def release(self, exit_code: int) -> None:
        """Once: a run stopped before its first step finished removes the directory it created."""
        if not self._ended.acquire(blocking=False):
            return
        if self.run_dir is not None:
            if exit_code != cli.OK and not self.trained:
                self.run_dir.remove_if_unused()
            self.run_dir.release()

    def on_forced_exit(self, signum: int) -> None:
        """cli's watchdog, when the main thread could not stop by itself: say so, let go; cli exits 130 / 143."""
        if self._ended.locked():
            return  # the main thread is ending the run already and says why
        self.report(f"{cli.signal_line(signum)}; {self.resume_hint()}")
        self.release(128 + signum)

    def run(self, main: Callable[[], int]) -> int:
        """main() with the exit-code table; the run directory is released on every way out."""
        code = cli.FAILED
        try:
            code = main()
        except SystemExit as e:  # --help
            code = e.code if isinstance(e.code, int) else cli.OK
        except CheckpointWriteError as e:  # full disk, read-only: after space is freed the run continues
            self.report(f"{e} Then {self.resume_hint()}.")
            code = cli.BAD_INPUT
        except NonFiniteWeightsError as e:  # a save refused NaN/inf (the loop checks first; this is the safety net)
            self.report(f"{e} Training stopped; {self.resume_hint()} with a lower lr.")
            code = cli.DIVERGED
        except (ConfigError, CheckpointError, FileNotFoundError) as e:
            self.report(e)
            # bad input (2) is what the checks find before the work; the same problem met once training ran (a bad
            # pair with check_data off) is a failed run (1), as the evaluation tools' cli.staged has it
            code = cli.FAILED if self.trained else cli.BAD_INPUT
        except NonFiniteLossError as e:
            self.report(e)
            code = cli.DIVERGED
        except KeyboardInterrupt:
            self.report(f"{cli.signal_line(signal.SIGINT)}; {self.resume_hint()}")
            code = cli.INTERRUPTED
        except cli.Terminated:
            self.report(f"{cli.signal_line(signal.SIGTERM)}; {self.resume_hint()}")
            code = cli.TERMINATED
        except BrokenPipeError:  # the output pipe closed (e.g. `| head`): nobody is left to read a traceback
            code = cli.FAILED
        except ValueError as e:  # a value check before training (e.g. a data_dir holding another demo set)
            if self.trained:  # during training it is a bug: show where
                traceback.print_exc()
            else:
                self.report(e)
                code = cli.BAD_INPUT
        except BaseException:  # noqa: B902  (print it; the caller still skips MindSpore's teardown)
            traceback.print_exc()
        finally:
            self.release(code)
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except BrokenPipeError:
                pass
        return code
