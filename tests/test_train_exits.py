"""How train.py ends when it cannot or may not go on (issue 14): an image size the model does not take is refused
before any work, and Ctrl-C / SIGTERM end a run within seconds wherever it is (compiling its first step, blocked
in MindSpore's data iterator), each with the exit code of mindcv_ext.cli, one "error:" line, the run lock
released, and no half-made run directory or MindSpore dump (rank_0/) left behind."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from _train_utils import ROOT, explain, make_data, run_train
from mindcv_ext import cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("demo_data"))


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr and "analyze_fail" not in stderr, stderr[-3000:]
    return errors[0]


def _nothing_left(cwd, out) -> None:
    assert not (cwd / "rank_0").exists() and not out.exists(), sorted(os.listdir(cwd))


FINETUNE = os.path.join(ROOT, "configs", "repmlp", "repmlp_t224_finetune.yaml")


@pytest.mark.parametrize("extra, start, end", [
    (["--image_resize", "100"], "image_resize 100 does not fit demo_repmlp: demo_repmlp takes (N, C, H, W) images "
                                "with H and W multiples of 64", "pass --image_resize 64."),
    # The fine-tune recipe's 224 with the small model: the size comes from the recipe, and the line says so.
    (["--config", FINETUNE, "--model", "demo_repmlp", "--num_parallel_workers", "1"],
     f"image_resize 224 (from {FINETUNE}) does not fit demo_repmlp", "pass --image_resize 64."),
    (["--pretrained", "True"], "pretrained: True, but there are no published MindSpore weights for demo_repmlp",
     "or set pretrained: False."),
    (["--in_channels", "1"], "in_channels 1: train.py reads images as RGB", "set in_channels: 3."),
    (["--model", "repmlp_t225"], "Unknown model 'repmlp_t225'", "demo_repmlp)."),
], ids=["image_resize", "finetune_recipe", "pretrained", "in_channels", "unknown_model"])
def test_a_model_setting_that_cannot_train_is_refused_before_any_work(data_dir, tmp_path, extra, start, end):
    # Each of these stopped with a compile traceback (exit 1), a half-made run directory and rank_0/ in the cwd,
    # or (unknown model) with another exit code than validate.py's.
    out = tmp_path / "run"
    proc = run_train(data_dir, out, *extra)
    assert proc.returncode == cli.BAD_INPUT, explain(proc)
    line = _one_error_line(proc.stderr)
    assert line.startswith("error: " + start) and line.endswith(end), line
    _nothing_left(tmp_path, out)


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
