"""validate_seg.py / scripts/predict_seg.py at the classification tools' standard (issue 18): nothing replaced
silently, no name collisions, special files refused or skipped from their stat, slide settings that leave pixels
uncovered refused, segmentation defaults without a recipe, one line per error with the table's exit code."""
import errno
import json
import os
import shutil
import subprocess
import sys
import threading

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import predict_seg  # noqa: E402
import validate_seg  # noqa: E402
from mindcv_ext.checkpoint import save_checkpoint  # noqa: E402
from mindcv_ext.outputs import written_by  # noqa: E402
from mindcv_ext.seg.data import DataError, list_pairs  # noqa: E402
from mindcv_ext.seg.demo import ensure_seg_demo  # noqa: E402
from mindcv_ext.seg.inference import infer_logits, resolve_test_cfg  # noqa: E402
from mindcv_ext.seg.model import create_seg_model, seg_metadata  # noqa: E402
from mindcv_ext.verify import perturb_bn  # noqa: E402


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """(data root, a random-weight demo_repmlp + UPerNet checkpoint recording a 64x64 training crop)."""
    d = tmp_path_factory.mktemp("segtools")
    data = ensure_seg_demo(str(d / "data"), train_images=2, val_images=2, height=64, width=128)
    ms.set_seed(0)
    model, _ = create_seg_model("demo_repmlp", head="upernet", num_classes=6, channels=8)
    perturb_bn(model, 3)
    ckpt = str(d / "seg.ckpt")
    save_checkpoint(model, ckpt, append_dict=seg_metadata(False, (64, 64)))
    return data, ckpt


def _no_hang(fn, *args, timeout=120):
    """fn(*args) in a thread: a call blocked on a FIFO fails the test instead of hanging the suite."""
    out = {}

    def call():
        try:
            out["r"] = fn(*args)
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            out["e"] = e
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked"
    if "e" in out:
        raise out["e"]
    return out["r"]


def _images(folder, names, size=(96, 64)):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        path = os.path.join(folder, n)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return folder


def _one_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    return lines[0]


# ------------------------------------------------------------------------------------------- names and outputs

def test_collisions_and_users_files_refused_before_any_work(seg, tmp_path, capsys):
    _, ckpt = seg
    photos = _images(tmp_path / "p", ["a.png", "a.jpg"])
    assert predict_seg.run(["--ckpt_path", ckpt, "--image_path", str(photos)]) == 2
    assert f"a.jpg and {photos / 'a.png'} would both write {photos / 'a_mask.png'}" in \
        _one_error(capsys.readouterr().err)
    assert not [n for n in os.listdir(photos) if "_mask" in n]

    own = _images(tmp_path / "q", ["photo.png"])
    users = own / "photo_mask.png"
    Image.new("L", (4, 4), 77).save(users)  # the user's own file, named as our output would be
    before = users.read_bytes()
    assert predict_seg.run(["--ckpt_path", ckpt, "--image_path", str(own / "photo.png")]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "photo_mask.png exists (not written by predict_seg.py)" in line and "--overwrite True" in line
    assert users.read_bytes() == before
    assert predict_seg.run(["--ckpt_path", ckpt, "--image_path", str(own / "photo.png"), "--overwrite", "True"]) == 0
    assert written_by(str(users)) == "predict_seg.py"
    capsys.readouterr()
    # a re-run replaces its own outputs, and does not take them for inputs
    assert predict_seg.run(["--ckpt_path", ckpt, "--image_path", str(own)]) == 0
    out = capsys.readouterr().out
    assert "1 mask(s) written" in out and "photo_mask_mask" not in out


def test_same_names_in_two_folders_keep_their_folders_under_output(seg, tmp_path, capsys):
    _, ckpt = seg
    photos = _images(tmp_path / "in", ["s1/x.png", "s2/x.png"])
    out = tmp_path / "out"
    assert predict_seg.run(["--ckpt_path", ckpt, "--image_path", str(photos), "--output", str(out),
                            "--overlay", "0"]) == 0
    assert "2 mask(s) written" in capsys.readouterr().out
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["s1/x_mask.png", "s2/x_mask.png"]


def test_output_not_created_before_a_wrong_checkpoint_is_refused(seg, tmp_path, capsys):
    import mindcv
    cls = str(tmp_path / "cls.ckpt")
    save_checkpoint(mindcv.create_model("demo_repmlp", num_classes=3), cls)
    photos = _images(tmp_path / "p", ["a.png"])
    out = tmp_path / "masks"
    assert predict_seg.run(["--ckpt_path", cls, "--image_path", str(photos), "--output", str(out)]) == 2
    assert "not a segmentation checkpoint" in _one_error(capsys.readouterr().err)
    assert not out.exists()
    (tmp_path / "afile").write_text("x")
    assert predict_seg.run(["--ckpt_path", seg[1], "--image_path", str(photos), "--output",
                            str(tmp_path / "afile" / "sub")]) == 2
    assert "afile is a file" in _one_error(capsys.readouterr().err)


def test_disk_full_while_writing_an_overlay_is_one_line_exit_1(seg, tmp_path, capsys, monkeypatch):
    _, ckpt = seg
    photos = _images(tmp_path / "p", ["a.png", "b.png"])
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if "overlay" in os.fspath(fp):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    assert predict_seg.run(["--ckpt_path", ckpt, "--image_path", str(photos)]) == 1
    line = _one_error(capsys.readouterr().err)
    assert "No space left on device" in line and "1 of 2 mask(s) written" in line
    assert not [n for n in os.listdir(photos) if ".tmp" in n]  # no temporary left


def test_thin_image_and_escaped_names_and_a_killed_runs_temporary(seg, tmp_path, capsys):
    _, ckpt = seg
    photos = tmp_path / "p"
    _images(photos, ["thin.png"], size=(3000, 1))  # a traceback before
    _images(photos, ["evil\x1b[31m\nname.png"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = photos / f".thin_mask.png.{int(dead.stdout)}-abcdEFGH.tmp.png"
    leftover.write_bytes(b"\x89PNG\r\n")  # what a kill -9 during a save leaves: the next run must not refuse it
    assert predict_seg.run(["--ckpt_path", ckpt, "--image_path", str(photos), "--overlay", "0"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b[31m\\nname.png" in out and "2 mask(s) written" in out
    with Image.open(photos / "thin_mask.png") as m:
        assert m.size == (3000, 1)
    assert not leftover.exists()


# ------------------------------------------------------------------------------------------- special files

def test_fifo_among_images_is_skipped_and_counted(seg, tmp_path, capsys):
    _, ckpt = seg
    photos = _images(tmp_path / "p", ["a.png"])
    os.mkfifo(photos / "x.png")
    assert _no_hang(predict_seg.run, ["--ckpt_path", ckpt, "--image_path", str(photos), "--overlay", "0"]) == 0
    captured = capsys.readouterr()
    assert "skipped " + str(photos / "x.png") + ": a FIFO" in captured.err
    assert "1 mask(s) written, 1 skipped" in captured.out


@pytest.mark.parametrize("where", ["leftImg8bit", "gtFine"])
def test_fifo_among_seg_images_or_labels_refused_from_stat(seg, tmp_path, capsys, where):
    data = str(tmp_path / "d")
    shutil.copytree(seg[0], data)
    sfx = "_leftImg8bit.png" if where == "leftImg8bit" else "_gtFine_labelTrainIds.png"
    victim = sorted((tmp_path / "d" / where / "val").rglob("*" + sfx))[0]
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(DataError, match="FIFO"):
        _no_hang(list_pairs, "cityscapes", data, "val")
    for check in ("True", "False"):
        assert _no_hang(validate_seg.run, ["--ckpt_path", seg[1], "--dataset", "cityscapes", "--num_classes", "6",
                                           "--data_dir", data, "--check_data", check]) == 2
        assert "a FIFO (named pipe)" in _one_error(capsys.readouterr().err)
    if where == "gtFine":  # train_seg.py lists its pairs the same way (its val split holds the FIFO)
        import train_seg
        recipe = os.path.join(ROOT, "configs", "seg", "demo_seg_cpu.yaml")
        assert _no_hang(train_seg.run, ["--config", recipe, "--dataset", "cityscapes", "--num_classes", "6",
                                        "--data_dir", data, "--check_data", "False", "--ckpt_save_dir",
                                        str(tmp_path / "run")]) == 2
        assert "a FIFO (named pipe)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- windows and defaults

def test_stride_larger_than_window_is_refused(seg, capsys):
    data, ckpt = seg
    common = ["--ckpt_path", ckpt, "--dataset", "cityscapes", "--num_classes", "6", "--data_dir", data,
              "--eval_mode", "slide"]
    assert validate_seg.run(common + ["--eval_crop", "[64, 64]", "--eval_stride", "[64, 96]"]) == 2
    assert "larger than eval_crop" in _one_error(capsys.readouterr().err)
    # no window given: the checkpoint's 64x64 crop, against which this stride leaves gaps too
    assert validate_seg.run(common + ["--eval_stride", "[80, 32]"]) == 2
    assert "eval_stride [80, 32] is larger than eval_crop [64, 64]" in _one_error(capsys.readouterr().err)
    with pytest.raises(ValueError, match="never be predicted"):  # never NaN logits, whoever calls it
        infer_logits(None, np.zeros((3, 64, 128), np.float32), mode="slide", crop_size=(32, 32), stride=(64, 32))


def test_without_a_recipe_images_keep_their_size_and_the_window_is_the_training_crop(seg, capsys):
    data, ckpt = seg
    common = ["--ckpt_path", ckpt, "--dataset", "cityscapes", "--num_classes", "6", "--data_dir", data]
    assert validate_seg.run(common) == 0
    bare = capsys.readouterr().out
    assert "at their own size" in bare
    # the same as naming the images' own size: before, Cityscapes' 2048x1024 scale upsampled them 16x
    assert validate_seg.run(common + ["--eval_scale", "[128, 64]"]) == 0
    assert json.loads(bare.strip().splitlines()[-1]) == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert validate_seg.run(common + ["--eval_mode", "slide"]) == 0
    assert "window 64x64, stride 42x42" in capsys.readouterr().out
    arch = {"crop_size": None}
    with pytest.raises(ValueError, match="does not record its training crop; pass --eval_crop"):
        resolve_test_cfg(arch, 64, mode="slide")
    assert resolve_test_cfg({"crop_size": (128, 256)}, 64, mode="slide")["stride"] == (85, 170)


# ------------------------------------------------------------------------------------------- help and errors

@pytest.mark.parametrize("tool", [validate_seg, predict_seg])
def test_help_lists_the_tools_own_keys_first_and_no_training_keys(tool, capsys):
    assert tool.run(["--help"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    usage = lines[0]
    assert "--model NAME" not in usage and "--ckpt_path FILE" in usage
    assert ("scripts/predict_seg.py" in usage and "--image_path" in usage) if tool is predict_seg \
        else "python validate_seg.py" in usage
    assert lines[2].endswith("keys (the command line wins over -c):") and lines[3].lstrip().startswith("--ckpt_path")
    keys = [ln.split()[0] for ln in lines if ln.startswith("  --")]
    for training_only in ("--opt", "--total_iters", "--lr", "--backbone"):
        assert training_only not in keys
    assert ("--overlay" in keys) == (tool is predict_seg) and ("--save_deploy" in keys) == (tool is validate_seg)
    assert "not used by" in lines[-1] and "total_iters" in lines[-1]


def test_training_key_on_the_command_line_is_refused(seg, capsys):
    assert validate_seg.run(["--ckpt_path", seg[1], "--total_iters", "5"]) == 2
    assert "--total_iters is train_seg.py's; validate_seg.py does not use it" in _one_error(capsys.readouterr().err)


def test_a_bad_pair_found_mid_evaluation_is_not_bad_input(seg, tmp_path, capsys):
    """check_data off: a colour label is found by the loader during the evaluation: one line and 1 (2 means bad
    input found before the work; before, any ValueError gave 2)."""
    data = str(tmp_path / "d")
    shutil.copytree(seg[0], data)
    label = sorted((tmp_path / "d" / "gtFine" / "val").rglob("*_labelTrainIds.png"))[-1]
    Image.new("RGB", Image.open(label).size).save(label)
    assert validate_seg.run(["--ckpt_path", seg[1], "--dataset", "cityscapes", "--num_classes", "6",
                             "--data_dir", data, "--check_data", "False"]) == 1
    assert "3-channel image" in _one_error(capsys.readouterr().err)


def test_save_deploy_refuses_latest_and_replaces_its_own(seg, tmp_path, capsys):
    data, ckpt = seg
    common = ["--ckpt_path", ckpt, "--dataset", "cityscapes", "--num_classes", "6", "--data_dir", data]
    run = tmp_path / "run"
    run.mkdir()
    latest = run / "latest.ckpt"
    save_checkpoint({"w": np.ones(2, np.float32), "global_step": np.array([3], np.int32)}, str(latest))
    before = latest.read_bytes()
    assert validate_seg.run(common + ["--save_deploy", str(latest), "--overwrite", "True"]) == 2
    assert "training state" in _one_error(capsys.readouterr().err) and latest.read_bytes() == before
    deploy = str(tmp_path / "d.ckpt")
    for _ in range(2):
        assert validate_seg.run(common + ["--save_deploy", deploy]) == 0
    assert written_by(deploy) == "validate_seg.py"


@pytest.mark.parametrize("sig, code, line", [(2, 130, "interrupted (Ctrl-C)"), (15, 143, "terminated (SIGTERM)")])
def test_signal_mid_run_is_one_line_with_its_code(seg, tmp_path, sig, code, line):
    """Images of different sizes compile the graph again each; a signal there printed pages of MindSpore's analyzer
    dump before the tool's line (seen by hand with Ctrl-C and SIGTERM)."""
    import signal as _signal
    _, ckpt = seg
    photos = tmp_path / "p"
    for i in range(12):
        _images(photos, [f"{i:02d}.png"], size=(64 + 64 * (i % 4), 64 + 64 * (i // 4)))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "predict_seg.py"), "--ckpt_path", ckpt,
                             "--image_path", str(photos), "--mode", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    while first.startswith("note: "):  # the configuration's notes (e.g. workers fitted to the cores) come first
        first = proc.stdout.readline()
    assert "image(s)" in first  # the header: the model is loaded
    assert " -> " in proc.stdout.readline()  # one mask written: the next image, of another size, compiles now
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    got = (proc.returncode, err.strip().splitlines())
    allowed = [(code, [f"predict_seg.py: {line}"])]
    if sig == 15:  # docs/reference.md: a SIGTERM landing inside a graph run is indistinguishable from the SIGTERM
        allowed.append((130, ["predict_seg.py: interrupted (Ctrl-C)"]))  # MindSpore's Ctrl-C handler sends
    assert got in allowed, err[-2000:]  # one line either way: no analyzer dump, no traceback
    assert not [n for n in os.listdir(photos) if ".tmp" in n]


def test_predict_and_validate_preprocess_alike(seg):
    """predict_seg.py repeated validate_seg.py's preprocessing; both now go through one (eval_preprocess): the mask
    inference_segmentor gives for a file is the one the evaluation loader's item gives, at a scale that resizes."""
    from types import SimpleNamespace

    from mindcv_ext.seg.data import build_seg_eval_loader
    from mindcv_ext.seg.inference import init_segmentor, inference_segmentor, predict_mask

    data, ckpt = seg
    model = init_segmentor(ckpt, scale=(96, 48))
    pairs = list_pairs("cityscapes", data, "val")[:1]
    cfg = SimpleNamespace(reduce_zero_label=False, eval_scale=(96, 48), mean=model.test_cfg["mean"],
                          std=model.test_cfg["std"], num_classes=6, num_parallel_workers=1)
    img, label, _ = next(build_seg_eval_loader(pairs, cfg).create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert img.shape[1:] == (48, 96) and label.shape == (64, 128)
    want = predict_mask(model, img, out_size=label.shape, mode="whole")
    np.testing.assert_array_equal(inference_segmentor(model, pairs[0][0]), want)


def test_a_one_pixel_side_survives_the_eval_resize():
    from mindcv_ext.seg.data import eval_preprocess
    # 3000x1 to a 16x16 scale: the short side rounded to 0 before, and PIL refused a 16x0 resize mid-run
    assert eval_preprocess(np.zeros((1, 3000, 3), np.uint8), (16, 16), (0, 0, 0), (1, 1, 1)).shape == (3, 1, 16)


def test_an_output_that_is_also_an_input_is_refused_even_with_overwrite(seg, tmp_path, capsys):
    photos = _images(tmp_path / "p", ["a.png", "a_mask.png"])  # the user's own a_mask.png is an input here
    before = (photos / "a_mask.png").read_bytes()
    assert predict_seg.run(["--ckpt_path", seg[1], "--image_path", str(photos), "--overwrite", "True"]) == 2
    assert "is also an input of this run" in _one_error(capsys.readouterr().err)
    assert (photos / "a_mask.png").read_bytes() == before


def test_predict_seg_prints_the_configurations_notes_as_validate_seg_does(tmp_path, capsys):
    # the recipe's Ascend -> CPU switch was said by validate_seg.py only; predict_seg.py switched silently
    recipe, ckpt = tmp_path / "r.yaml", tmp_path / "m.ckpt"
    recipe.write_text("device_target: Ascend\n")
    ckpt.write_bytes(b"")  # refused later (no --image_path), before it is read
    assert predict_seg.run(["-c", str(recipe), "--ckpt_path", str(ckpt)]) == 2
    out, err = capsys.readouterr()
    assert f"note: {recipe}'s device_target Ascend is not available here: evaluating on CPU" in out
    assert "needs --image_path" in err
