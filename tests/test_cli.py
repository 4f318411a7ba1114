"""mindcv_ext.cli: the exit-code table's signal half. A process whose main thread is blocked in native code (as in
MindSpore's data iterator on a FIFO) still ends on SIGTERM / Ctrl-C, with one line and 143 / 130."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mindcv_ext import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The main thread relocks a normal pthread mutex: blocked in native code, where Python never runs a handler.
_BLOCKED = textwrap.dedent("""
    import ctypes, sys
    sys.path.insert(0, {root!r})
    from mindcv_ext import cli
    def main():
        libc = ctypes.CDLL(None)
        mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER on Linux
        libc.pthread_mutex_lock(mutex)
        print("ready", flush=True)
        {block}
        return 0
    cli.run_tool(main, "tool.py")
""")


def _run(block: str, signum: int):
    code = _BLOCKED.format(root=ROOT, block=block.replace("\n", "\n    "))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the signal did not end the process")
    return proc.returncode, err


@pytest.mark.parametrize("signum,code,line", [(signal.SIGTERM, cli.TERMINATED, "tool.py: terminated (SIGTERM)"),
                                              (signal.SIGINT, cli.INTERRUPTED, "tool.py: interrupted (Ctrl-C)")])
def test_signal_ends_a_main_thread_blocked_in_native_code(signum, code, line):
    rc, err = _run("libc.pthread_mutex_lock(mutex)", signum)
    assert rc == code
    assert err.strip().splitlines() == [line]


def test_signal_in_python_code_takes_the_ordinary_path():
    rc, err = _run("import time\nwhile True: time.sleep(0.01)", signal.SIGINT)
    assert rc == cli.INTERRUPTED
    assert err.strip().splitlines() == ["tool.py: interrupted (Ctrl-C)"]


def test_exit_at_once_raises_nothing_in_the_main_thread():
    # Inside exit_at_once a Python loop keeps running Python code, so an exception would reach it (and be printed
    # by the except clause); the process must end without one.
    block = ("import time\nwith cli.exit_at_once():\n    try:\n        while True: time.sleep(0.01)\n"
             "    except BaseException as e:\n        print('raised', type(e).__name__, file=sys.stderr, flush=True)")
    rc, err = _run(block, signal.SIGTERM)
    assert rc == cli.TERMINATED
    assert err.strip().splitlines() == ["tool.py: terminated (SIGTERM)"]


def test_exit_codes_follow_the_shell_convention():
    assert (cli.INTERRUPTED, cli.TERMINATED) == (130, 143)
    assert len({cli.OK, cli.FAILED, cli.BAD_INPUT, cli.DIVERGED, cli.INTERRUPTED, cli.TERMINATED}) == 6


def test_run_tool_keeps_compile_dumps_out_of_the_working_directory(tmp_path):
    # export.py and the benchmarks set their own MindSpore context (not set_runtime); a graph that fails to compile
    # under run_tool must still not leave rank_0/om/analyze_fail.ir in the user's cwd.
    script, cwd = tmp_path / "tool.py", tmp_path / "cwd"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        import mindspore as ms
        from mindspore import nn, ops
        from mindcv_ext import cli

        class Net(nn.Cell):
            def construct(self, x):
                if x.shape[2] % 7:
                    raise ValueError("no")
                return x

        def main():
            ms.set_context(mode=ms.GRAPH_MODE)
            try:
                Net()(ops.ones((1, 3, 10, 10)))
            except ValueError:
                return cli.BAD_INPUT
            return cli.OK

        cli.run_tool(main, "tool.py")
    """))  # a file: MindSpore reads construct's source
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MS_OM_PATH"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=str(cwd),
                          env=env)
    assert proc.returncode == cli.BAD_INPUT, proc.stderr[-2000:]
    assert os.listdir(cwd) == []


def test_guarded_maps_a_tools_ways_out_to_the_table(capsys):
    def raising(error):
        def main():
            raise error
        return main

    assert cli.guarded(lambda: cli.OK, "tool.py") == cli.OK
    assert cli.guarded(raising(ValueError("bad\nname")), "tool.py", bad_input=(ValueError,)) == cli.BAD_INPUT
    assert capsys.readouterr().err == "tool.py: error: bad\\nname\n"  # one line, escaped
    assert cli.guarded(raising(RuntimeError("bug")), "tool.py", bad_input=(ValueError,)) == cli.FAILED
    assert "Traceback" in capsys.readouterr().err  # a bug shows where it is
    assert cli.guarded(raising(KeyboardInterrupt()), "tool.py") == cli.INTERRUPTED
    assert cli.guarded(raising(cli.Terminated()), "tool.py") == cli.TERMINATED
    assert cli.guarded(raising(SystemExit(0)), "tool.py") == cli.OK
    assert capsys.readouterr().err == "tool.py: interrupted (Ctrl-C)\ntool.py: terminated (SIGTERM)\n"
