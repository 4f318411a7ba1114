"""train_seg.py's configuration: segmentation's own defaults, values refused before work, its --help."""
import os

import pytest

from mindcv_ext.config import ConfigError
from mindcv_ext.seg.config import load_seg_config, load_seg_eval_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "configs", "seg")


def test_num_classes_0_is_refused_not_the_datasets_count():
    # `num_classes or default` turned an explicit 0 into Cityscapes' 19 without a word
    with pytest.raises(ConfigError, match="num_classes must be in 2..255.*got 0"):
        load_seg_config(["--backbone", "demo_repmlp", "--crop_size", "[64, 64]", "--num_classes", "0"])


def test_without_a_recipe_the_defaults_are_segmentations():
    cfg = load_seg_config(["--model", "repmlp_t256", "--dataset", "demo", "--device_target", "CPU"])
    assert cfg.batch_size == 2  # mmseg's 2 images per card, not classification's 128
    assert cfg.gelu_approximate is False


def test_ade20k_classes_are_named():
    cfg = load_seg_config(["--config", os.path.join(RECIPES, "repmlp_t256_upernet_ade20k_ascend.yaml")])
    assert len(cfg.class_names) == 150 == len(set(cfg.class_names))
    # objectInfo150: index 1 wall, 2 building, 3 sky, ..., 13 person, ..., 150 flag; label 0 (other) is ignored
    assert cfg.class_names[:3] == ["wall", "building", "sky"] and cfg.class_names[12] == "person"
    assert cfg.class_names[-1] == "flag" and not any(n.startswith("class_") for n in cfg.class_names)


def test_help_lists_its_own_keys_first_and_no_evaluation_keys(capsys):
    with pytest.raises(SystemExit):
        load_seg_config(["--help"])
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "usage: python train_seg.py --config RECIPE.yaml [--key value ...]"
    keys = [line.split()[0] for line in lines if line.startswith("  --")]
    assert keys.index("--backbone") < keys.index("--mode") and keys.index("--crop_size") < keys.index("--opt")
    for eval_only in ("--overlay", "--save_deploy", "--image_path", "--output", "--reparameterize"):
        assert eval_only not in keys
    assert "6 demo" in text  # the demo set has 6 classes
    with pytest.raises(ConfigError, match="Unknown option --overlay"):
        load_seg_config(["--backbone", "demo_repmlp", "--crop_size", "[64, 64]", "--overlay", "0.3"])


def test_an_unknown_key_is_matched_against_the_tools_own_keys():
    # the suggestions came from train.py's table: train_seg.py --warmup_epochs suggested warmup_epochs itself
    with pytest.raises(ConfigError, match=r"Unknown option --warmup_epochs\. Did you mean warmup_iters") as e:
        load_seg_config(["--backbone", "demo_repmlp", "--warmup_epochs", "3"])
    assert "epoch" not in str(e.value).split("Did you mean")[1]


def test_eval_windows_are_checked_by_the_inference_apis_check():
    """One check of eval_crop / eval_stride (seg.inference.check_slide), the one the evaluation tools meet."""
    base = ["--backbone", "demo_repmlp", "--crop_size", "[64, 64]", "--eval_mode", "slide"]
    with pytest.raises(ConfigError, match=r"eval_stride \[96, 32\] is larger than eval_crop \[64, 64\] in height"):
        load_seg_config(base + ["--eval_stride", "[96, 32]"])
    with pytest.raises(ConfigError, match=r"eval_crop \[96, 96\] must be multiples of the encoder's native size 64"):
        load_seg_config(base + ["--eval_crop", "[96, 96]"])
    # the eval window defaults to crop_size: the message names what the user set
    with pytest.raises(ConfigError, match=r"^crop_size \[96, 96\] must be multiples of demo_repmlp's native size"):
        load_seg_config(["--backbone", "demo_repmlp", "--crop_size", "[96, 96]"])


@pytest.mark.parametrize("args, message", [
    (["--clip_grad", "True", "--clip_value", "0"], r"clip_value must be > 0"),  # train_seg.py accepted it
    (["--lr", "0.01", "--min_lr", "0.1"], r"0 <= min_lr <= lr"),
    (["--resume_opt", "True"], r"resume_opt.*--ckpt_path"),
    (["--hflip", "1.5"], r"^hflip must be in \[0, 1\]; got 1\.5"),  # config.in_unit, one message per key
])
def test_optimizer_keys_are_checked_as_train_py_checks_them(args, message):
    # one check for both training tools (config.check_precision_and_optimizer_keys), so their rules cannot drift
    with pytest.raises(ConfigError, match=message):
        load_seg_config(["--backbone", "demo_repmlp", "--crop_size", "[64, 64]", *args])


@pytest.mark.parametrize("args, message", [
    (["--mean", "[1, 2]"], r"^mean must be 3 finite numbers \(R, G, B"),  # a broadcast traceback mid-run
    (["--std", "[0, 0, 0]"], r"^std must be 3 finite numbers > 0"),  # NaN masks and exit 0
    (["--head_channels", "0"], r"^head_channels must be >= 1"),
    (["--aux_weight", "-0.4"], r"^aux_weight must be >= 0"),
    (["--warmup_ratio", "2"], r"^warmup_ratio must be in \[0, 1\]"),
])
def test_normalization_and_head_values_are_refused_before_work(args, message):
    with pytest.raises(ConfigError, match=message):
        load_seg_config(["--backbone", "demo_repmlp", "--crop_size", "[64, 64]", *args])


def test_the_slide_window_is_checked_only_when_slide_is_used():
    # whole (the default) never reads eval_crop: a window it ignores refused the training
    base = ["--backbone", "demo_repmlp", "--crop_size", "[64, 64]", "--eval_crop", "[100, 100]"]
    assert load_seg_config(base).eval_mode == "whole"
    with pytest.raises(ConfigError, match=r"eval_crop \[100, 100\] must be multiples"):
        load_seg_config(base + ["--eval_mode", "slide"])


@pytest.mark.parametrize("prog, keys, owner", [
    ("validate_seg.py", ["--image_path"], "predict_seg.py"),  # said train_seg.py's
    ("predict_seg.py", ["--batch_size", "--dataset"], "train_seg.py"),  # said validate_seg.py's (from --dataset)
    ("predict_seg.py", ["--save_deploy"], "validate_seg.py"),
])
def test_a_key_of_another_tool_names_that_tool(prog, keys, owner):
    with pytest.raises(ConfigError, match=rf"^{keys[0]} is {owner}'s; {prog} does not use it"):
        load_seg_eval_config(["--ckpt_path", "x.ckpt"] + [w for k in keys for w in (k, "2")], prog)


def test_a_recipes_lowercase_ascend_falls_back_to_cpu(tmp_path):
    recipe, ckpt = tmp_path / "r.yaml", tmp_path / "m.ckpt"
    recipe.write_text("device_target: ascend\n")
    ckpt.write_bytes(b"")  # not read here: the configuration only checks the file is there
    cfg = load_seg_eval_config(["-c", str(recipe), "--ckpt_path", str(ckpt)])
    assert cfg.device_target == "CPU" and any("evaluating on CPU" in n for n in cfg.notes)


@pytest.mark.parametrize("args", [["--save_deploy", "d.ckpt"], ["--reparameterize", "True"],
                                  ["--gelu_approximate", "False"]])
def test_options_that_cannot_apply_to_an_onnx_file_are_refused(tmp_path, args):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    base = ["--ckpt_path", str(onnx), "--device_target", "CPU"]
    assert load_seg_eval_config(base).ckpt_path == str(onnx)  # the file alone is fine
    with pytest.raises(ConfigError, match=rf"^{args[0]} does not apply to .*m\.onnx: an \.onnx file is already a "
                                          r"deploy file"):
        load_seg_eval_config(base + args)
