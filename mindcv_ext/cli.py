"""How every command-line tool of the project ends: one table of exit codes, and signals that stop a run within
seconds wherever it is blocked.

Exit codes (README, "Exit codes"):
    0    done
    1    failed without a named cause (a traceback: a bug worth reporting), or did not finish (its output pipe closed),
         or met a problem once the work had started (a bad data pair read mid-run): one "error:" line
    2    bad input, found before the work: the command, recipe, data, weights or output place; one "error:" line
         names it and the fix
    3    training stopped on a non-finite loss or non-finite weights
    130  interrupted (Ctrl-C)
    143  terminated (SIGTERM)

Why a watchdog thread: Python runs signal handlers only in the main thread, between bytecodes. A main thread blocked
in native code (MindSpore's data iterator waiting on a FIFO, a graph compile) never gets there, so SIGTERM was
ignored and the run kept its lock. The C-level handler still writes the signal number to the wakeup fd at once; the
watchdog reads it, gives the main thread `grace` seconds to stop the ordinary way (KeyboardInterrupt / Terminated,
so the tool prints its own line), and otherwise runs the tool's clean-up, prints one line and exits itself.
"""
import os
import signal
import socket
import sys
import threading
import time
import traceback
import unicodedata
from contextlib import contextmanager
from typing import Callable, Optional, Tuple

__all__ = ["OK", "FAILED", "BAD_INPUT", "DIVERGED", "INTERRUPTED", "TERMINATED", "Terminated", "install_signals",
           "exit_at_once", "signal_line", "guarded", "run_tool", "staged", "quiet_exit", "printable", "keep_sigint"]

OK, FAILED, BAD_INPUT, DIVERGED = 0, 1, 2, 3
INTERRUPTED, TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM

GRACE_SECONDS = 5.0

# Invisible controls that reorder what a terminal shows (bidi overrides and isolates), escaped like C0/C1 controls.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text) -> str:
    """`text` (a class name, a file name, a message quoting them) safe for a console line: control characters,
    line and paragraph separators and bidi controls as backslash escapes, so a name read from a file can neither
    start a forged output line nor send escape sequences to the terminal; a file name's undecodable bytes
    (surrogate escapes) as \\xNN. Everything else, non-ASCII letters included, is kept. Not for JSON, which
    json.dumps escapes itself."""
    text = str(text)
    if text.isascii() and text.isprintable():
        return text
    out = []
    for c in text:
        cat = unicodedata.category(c)
        if c in _NAMED:
            out.append(_NAMED[c])
        elif cat == "Cs" and 0xDC80 <= ord(c) <= 0xDCFF:  # os.fsdecode's stand-in for a non-UTF-8 byte
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif cat in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI:
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


class Terminated(Exception):
    """SIGTERM (a scheduler, msrun, kill), raised in the main thread like KeyboardInterrupt is for Ctrl-C."""


_state = {"at_once": 0, "on_forced_exit": None, "installed": False}


def signal_line(signum: int) -> str:
    return "interrupted (Ctrl-C)" if signum == signal.SIGINT else "terminated (SIGTERM)"


def _python_handler(signum, frame):
    if _state["at_once"]:
        return  # inside exit_at_once(): the watchdog ends the process; an exception here would only add noise
    if signum == signal.SIGINT or _converted_ctrl_c(signum):
        raise KeyboardInterrupt
    raise Terminated()


def _force_exit(signum: int) -> None:
    try:
        if _state["on_forced_exit"] is not None:
            _state["on_forced_exit"](signum)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)


def _action(signum: int = signal.SIGINT):
    """(libc, the raw `struct sigaction` of `signum` as installed now), or None where libc cannot be asked."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        action = ctypes.create_string_buffer(512)  # more than glibc's struct sigaction (152 bytes)
        return (libc, action) if libc.sigaction(signum, None, action) == 0 else None
    except (OSError, AttributeError):
        return None


def _taken(signum: int) -> bool:
    """`signum`'s handler is not ours now: MindSpore replaced it (see keep_sigint)."""
    ours, now = _state.get(f"action_{signum}"), _action(signum)
    return ours is not None and now is not None and now[1].raw[:8] != ours[1].raw[:8]


def _sigint_taken() -> bool:
    return _taken(signal.SIGINT)


def _converted_ctrl_c(signum: int) -> bool:
    """A SIGTERM while MindSpore's SIGINT handler is installed is taken for a Ctrl-C: that handler's only action
    is to send the process SIGTERM. (A SIGTERM from outside in that moment is reported as Ctrl-C: the signal
    carries no sender that Python can see.)"""
    return signum == signal.SIGTERM and _sigint_taken()


def keep_sigint() -> None:
    """MindSpore's runtime installs its own SIGINT handler at its first op (in graph mode at every run), one that
    sends the process SIGTERM: Ctrl-C ended as "terminated", 143. Put ours back whenever it was replaced; the
    watchdog calls this ten times a second, a tool also right after each forward (in graph mode each run installs
    MindSpore's handler again). A Ctrl-C that still meets MindSpore's handler is recognized by _converted_ctrl_c.
    SIGTERM too: MindData installs its own SIGTERM handler when a GeneratorDataset with several workers first runs
    (train_seg.py's, built after install_signals), which ended a run with exit 0, no line and its folder locked."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if _taken(signum):
            libc, action = _state[f"action_{signum}"]
            libc.sigaction(signum, action, None)


def _watch(reader: socket.socket) -> None:
    reader.settimeout(0.1)
    while True:
        try:
            data = reader.recv(64)
        except socket.timeout:
            keep_sigint()
            continue
        except OSError:
            return
        for signum in data:
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            signum = signal.SIGINT if _converted_ctrl_c(signum) else signum
            if _state["at_once"]:
                _force_exit(signum)
            # The main thread normally stops within milliseconds and exits the process; if it is still here
            # after the grace period, it is blocked in native code.
            deadline = time.monotonic() + GRACE_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.05)
                if _state["at_once"]:
                    break
            _force_exit(signum)


def install_signals(on_forced_exit: Optional[Callable[[int], None]] = None) -> None:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM raises Terminated in the main thread; if the process is still
    alive GRACE_SECONDS later, `on_forced_exit(signum)` runs (print the tool's line, release what it holds) and the
    process exits with 128 + signum. Call from the main thread, once, before any long work."""
    _state["on_forced_exit"] = on_forced_exit
    if _state["installed"]:
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    _state["sockets"] = (reader, writer)  # kept alive for the life of the process
    signal.signal(signal.SIGINT, _python_handler)
    signal.signal(signal.SIGTERM, _python_handler)
    for signum in (signal.SIGINT, signal.SIGTERM):  # to restore them after MindSpore replaces them (keep_sigint)
        _state[f"action_{signum}"] = _action(signum)
    threading.Thread(target=_watch, args=(reader,), name="signal-watchdog", daemon=True).start()
    _state["installed"] = True


@contextmanager
def exit_at_once():
    """A stretch where a signal should end the process at once, with no exception in the main thread: MindSpore's
    graph compile turns a KeyboardInterrupt into pages of analyzer dump and a rank_0/ folder."""
    _state["at_once"] += 1
    try:
        yield
    finally:
        _state["at_once"] -= 1


def quiet_exit(code: int) -> None:
    """Exit without MindSpore 2.10's Cell.__del__ tracebacks at interpreter shutdown (one per live Cell)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def guarded(main: Callable[[], int], prog: str, bad_input: Tuple[type, ...] = ()) -> int:
    """main()'s exit code, with the ways out a tool expects turned into one line and a code from the table:
    `bad_input` exceptions (raised before the work) -> 2, Ctrl-C -> 130, SIGTERM -> 143, --help -> 0; anything
    else is a bug: its traceback, 1. For the tools' run() functions, which tests also call in-process."""
    try:
        return main()
    except SystemExit as e:  # --help, argparse's usage errors (2)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (OK if e.code is None else BAD_INPUT)
    except bad_input as e:
        print(f"{prog}: error: {printable(e)}", file=sys.stderr, flush=True)
        return BAD_INPUT
    except BrokenPipeError:  # the reader stopped early (`tool --help | head`): no traceback, the table's 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return FAILED
    except KeyboardInterrupt:
        print(f"{prog}: {signal_line(signal.SIGINT)}", file=sys.stderr)
        return INTERRUPTED
    except Terminated:
        print(f"{prog}: {signal_line(signal.SIGTERM)}", file=sys.stderr)
        return TERMINATED
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return FAILED


def run_tool(main: Callable[[], int], prog: str, bad_input: Tuple[type, ...] = ()) -> None:
    """The __main__ block of validate.py and the scripts: guarded(main) under the signal watchdog, then an exit
    without MindSpore's shutdown noise. Tools that set their own MindSpore context (export, benchmarks) get the
    compile-dump redirect too: no rank_0/ in the cwd."""
    try:
        from .training.runtime import keep_compile_dumps_out_of_cwd
    except ImportError:  # no MindSpore (infer.py serving an .onnx file): nothing is compiled
        pass
    else:
        keep_compile_dumps_out_of_cwd()
    install_signals(lambda signum: print(f"{prog}: {signal_line(signum)}", file=sys.stderr))
    quiet_exit(guarded(main, prog, bad_input))


def staged(prepare: Callable[[], object], work: Callable[[object], int], prog: str,
           bad_input: Tuple[type, ...] = (), failed: Tuple[type, ...] = ()) -> int:
    """How every evaluation tool runs: prepare() does every check before the work (the command, the recipe, the
    data, the weights, the output places) and builds what the work needs; one of its `bad_input` exceptions is
    one 'prog: error:' line and 2. work(prepared) does the work: one of its `failed` exceptions (a file that
    turned bad mid-run, a full disk) is one line and 1, never 2, since the input passed its checks. For run_tool /
    guarded, which add the signals, --help and a bug's traceback."""
    try:
        prepared = prepare()
    except bad_input as e:
        if isinstance(e, BrokenPipeError):  # `--help | head` (an OSError): guarded's quiet way out, not bad input
            raise
        print(f"{prog}: error: {printable(e)}", file=sys.stderr, flush=True)
        return BAD_INPUT
    try:
        return work(prepared)
    except failed as e:
        if isinstance(e, BrokenPipeError):
            raise
        text = str(e).strip()
        print(f"{prog}: error: {printable(text.splitlines()[0] if text else type(e).__name__)}", file=sys.stderr,
              flush=True)
        return FAILED
