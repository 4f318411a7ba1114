"""No tool leaves MindSpore's compile dump (rank_0/) in the working directory (issue 14)."""
import os
import shutil
import subprocess
import sys
import textwrap

from _train_utils import explain


def test_a_compile_error_leaves_no_rank_0_in_the_working_directory(tmp_path):
    # MindSpore writes rank_0/om/analyze_fail.ir into the cwd when a graph fails to compile; set_runtime points
    # that dump (MS_OM_PATH) at a temporary directory.
    code = textwrap.dedent("""
        import os, types
        import mindspore as ms
        from mindspore import nn, ops
        from mindcv_ext.training.runtime import set_runtime

        set_runtime(types.SimpleNamespace(mode=0, device_target="CPU", jit_level=""), "")

        class Net(nn.Cell):
            def construct(self, x):
                if x.shape[2] % 7:
                    raise ValueError("no")
                return x

        try:
            Net()(ops.ones((1, 3, 10, 10)))
        except ValueError as e:
            print(os.environ["MS_OM_PATH"], os.environ["MS_OM_PATH"] in str(e))
    """)
    script, cwd = tmp_path / "compile_fail.py", tmp_path / "cwd"
    script.write_text(code)  # a file: MindSpore reads construct's source
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MS_OM_PATH"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=str(cwd),
                          env=env)
    assert len(proc.stdout.split()) == 2, explain(proc)
    dump_dir, named = proc.stdout.split()
    shutil.rmtree(dump_dir, ignore_errors=True)
    assert named == "True", explain(proc)  # MindSpore's message names the moved file
    assert os.listdir(cwd) == []
