"""train.py's configuration: mindcv key names, YAML + command-line precedence, value types, and early errors."""
import glob
import logging
import os
import re
import subprocess
import sys

import pytest

from mindcv_ext.config import KEYS, ConfigError, parse_config
from mindcv_ext.training.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "repmlp", "*.yaml")))
T224 = os.path.join(ROOT, "configs", "repmlp", "repmlp_t224_ascend.yaml")
ONE_WORKER = ["--num_parallel_workers", "1"]  # the recipe's 8 would add a note on a machine with fewer cores

# A recipe in the style of mindcv's own repmlp_t224_ascend.yaml (older mindcv keys included): floats like 1e-5 that
# YAML reads as strings, quoted strings, lowercase loss name, filter_bias_and_bn instead of weight_decay_filter.
MINDCV_STYLE = """
mode: 0
distribute: True
num_parallel_workers: 8
val_while_train: True
dataset: 'imagenet'
data_dir: '/path/to/imagenet'
shuffle: True
dataset_download: False
batch_size: 128
drop_remainder: True
image_resize: 224
scale: [0.08, 1.0]
ratio: [0.75, 1.333]
hflip: 0.5
vflip: 0.0
interpolation: 'bilinear'
crop_pct: 0.875
color_jitter: 0.4
re_prob: 0.25
re_ratio: [0.3, 3.333]
mixup: 0.2
cutmix: 1.0
cutmix_prob: 1.0
auto_augment: 'randaug-m9-mstd0.5-inc1'
model: 'repmlp_t224'
num_classes: 1000
in_channels: 3
pretrained: False
ckpt_path: ''
keep_checkpoint_max: 10
ckpt_save_dir: './ckpt'
epoch_size: 300
dataset_sink_mode: True
amp_level: 'O2'
loss: 'ce'
label_smoothing: 0.1
scheduler: 'cosine_decay'
lr: 0.005
min_lr: 1e-5
warmup_epochs: 10
decay_epochs: 290
decay_rate: 0.01
opt: 'adamw'
filter_bias_and_bn: True
momentum: 0.9
weight_decay: 2e-05
loss_scale: 1024
use_nesterov: False
"""


@pytest.fixture
def mindcv_recipe(tmp_path):
    path = tmp_path / "mindcv_t224.yaml"
    path.write_text(MINDCV_STYLE)
    return str(path)


def test_mindcv_style_recipe_loads_with_types(mindcv_recipe):
    cfg = load_config(["--config", mindcv_recipe])
    assert cfg.min_lr == pytest.approx(1e-5) and isinstance(cfg.min_lr, float)  # YAML gave the string '1e-5'
    assert cfg.weight_decay == pytest.approx(2e-5)
    assert cfg.loss == "CE" and cfg.amp_level == "O2" and cfg.loss_scale == 1024.0
    assert cfg.scale == (0.08, 1.0) and cfg.re_ratio == (0.3, 3.333)
    assert cfg.weight_decay_filter == "norm_and_bias"  # the older key, mapped
    assert cfg.distribute is True and cfg.epoch_size == 300
    assert cfg.device_target == "Ascend"  # mindcv's default


def test_command_line_wins_and_is_parsed_as_yaml(mindcv_recipe):
    cfg = load_config(["--config", mindcv_recipe, "--lr", "1e-3", "--ema", "True", "--batch_size=32",
                       "--scale", "[0.5, 1.0]", "--data_dir", "123", "--auto_augment", "None", "--distribute"])
    assert cfg.lr == pytest.approx(1e-3)
    assert cfg.ema is True and cfg.batch_size == 32 and cfg.scale == (0.5, 1.0)
    assert cfg.data_dir == "123"  # a string key keeps the text
    assert cfg.auto_augment is None
    assert cfg.distribute is True  # a bare bool flag means True, as in mindcv


def test_defaults_are_mindcvs():
    cfg = parse_config([])
    assert (cfg.batch_size, cfg.epoch_size, cfg.opt, cfg.lr, cfg.ckpt_save_dir) == (128, 90, "adam", 0.001, "./ckpt")
    assert set(KEYS) >= {"mode", "distribute", "val_while_train", "dataset", "data_dir", "batch_size",
                         "image_resize", "auto_augment", "mixup", "cutmix", "re_prob", "model", "ckpt_path",
                         "resume_opt", "keep_checkpoint_max", "ckpt_save_dir", "epoch_size", "dataset_sink_mode",
                         "amp_level", "loss_scale", "loss_scale_type", "scheduler", "lr", "min_lr",
                         "warmup_epochs", "opt", "weight_decay", "weight_decay_filter", "ema", "ema_decay",
                         "clip_grad", "clip_value", "device_target"}


def test_unknown_yaml_key_names_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: demo_repmlp\nepoch_sise: 3\n")
    with pytest.raises(ConfigError, match=r"epoch_sise.*bad\.yaml.*epoch_size"):
        load_config(["--config", str(path)])


@pytest.mark.parametrize("flag, suggestion", [("--learning_rate", "lr"), ("--warmup_epoch", "warmup_epochs"),
                                              ("--lable_smoothing", "label_smoothing")])
def test_unknown_cli_key_names_closest(flag, suggestion):
    with pytest.raises(ConfigError, match=rf"Unknown option {flag}\..*\b{suggestion}\b"):
        load_config([flag, "1"])


@pytest.mark.parametrize("args, message", [
    (["--mode", "2"], r"mode must be one of 0, 1"),
    (["--device_target", "TPU"], r"device_target must be one of Ascend, GPU, CPU"),
    (["--amp_level", "O4"], r"amp_level must be one of O0, O1, O2, O3"),
    (["--loss_scale_type", "auto"], r"loss_scale_type must be one of fixed, dynamic"),
    (["--device_target", "CPU", "--loss_scale_type", "dynamic"], r"dynamic.*CPU"),
    (["--device_target", "CPU", "--drop_overflow_update", "True"], r"drop_overflow_update.*CPU"),
    (["--device_target", "CPU", "--jit_level", "O2"], r"O2.*only on Ascend"),
    (["--jit_level", "O5"], r"jit_level must be one of"),
    (["--loss_scale", "0.5"], r"loss_scale must be >= 1"),
    (["--resume_opt", "True"], r"resume_opt.*--ckpt_path"),
    (["--batch_size", "0"], r"batch_size must be a positive integer; got 0"),
    (["--batch_size", "ten"], r"batch_size must be an integer; got 'ten'"),
    # loader arguments, checked by the loaders' own check (data.loaders.check_args) before any work and named by
    # their config keys; these four were found only when the loader was built, after the model
    (["--interpolation", "bilinaer"], r"Unknown interpolation 'bilinaer'"),
    # MindSpore's ANTIALIAS resizes PIL images; mindcv's pipeline decodes to NumPy and failed at the first image
    (["--interpolation", "antialias"], r"Unknown interpolation 'antialias'; use one of: nearest, bilinear"),
    (["--auto_augment", "rand-m9-mstd0.5"], r"Unknown auto_augment policy 'rand-m9-mstd0.5'"),  # timm's spelling
    (["--num_samples", "0"], r"num_samples must be a positive integer; got 0"),
    (["--mixup", "0.2", "--batch_size", "7"], r"mixup/cutmix .* even batch_size"),
    (["--image_resize", "0"], r"^image_resize must be a positive integer; got 0"),
    (["--cutmix_prob", "1.5"], r"^cutmix_prob must be in \[0, 1\]"),
    (["--ema", "maybe"], r"ema must be True or False"),
    (["--opt", "adamx"], r"opt must be one of"),
    (["--weight_decay_filter", "bias"], r"weight_decay_filter must be one of"),
    (["--dataset", "cifar10"], r"dataset must be one of imagenet, demo"),
    (["--gradient_accumulation_steps", "4"], r"gradient_accumulation_steps.*not supported"),
    (["--ema", "True", "--ema_decay", "1.5"], r"ema_decay must be in \(0, 1\)"),
    (["--scale", "[0.5]"], r"scale must be two numbers"),
    (["--ckpt_save_policy", "top_k"], r"top_k.*val_while_train"),
    # mindcv eval()s amp_cast_list: a typo was a traceback from inside mindcv, and any expression would run
    (["--amp_cast_list", "[nn.Conv2d, nn.Foo]"], r"amp_cast_list is a list of mindspore\.nn cells.*nn\.Foo is not one"),
    (["--amp_cast_list", "__import__('os').getpid()"], r"amp_cast_list is a list of mindspore\.nn cells.*got "),
])
def test_bad_values_are_refused_with_the_fix(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(args)


def test_shortened_runs_of_a_recipe_run_with_a_note_on_the_schedule():
    """mindcv's train.py runs its t224 recipe with --epoch_size 1 (a smoke test); so do we, saying what the lr does."""
    cfg = load_config(["--config", T224, "--epoch_size", "1", *ONE_WORKER])
    assert len(cfg.notes) == 1 and "warmup_epochs (10) is longer than the run" in cfg.notes[0]
    assert f"{cfg.lr * 0.1:.3g}" in cfg.notes[0] and "never decays" in cfg.notes[0]
    cfg = load_config(["--config", T224, "--epoch_size", "20", *ONE_WORKER])
    assert len(cfg.notes) == 1 and "cosine decay is cut off" in cfg.notes[0]
    assert load_config(["--config", T224, *ONE_WORKER]).notes == []


def test_mindcv_schedule_warning_is_dropped_only_where_our_note_explains_it(caplog):
    from mindcv_ext.training.optim import build_lr_schedule

    mindcv_line = "warmup_epochs + decay_epochs > num_epochs"
    with caplog.at_level("WARNING", logger="mindcv.scheduler.scheduler_factory"):
        lrs = build_lr_schedule(load_config(["--config", T224, "--epoch_size", "20", *ONE_WORKER]), 2)
    assert len(lrs) == 40 and mindcv_line not in caplog.text  # the note covers it
    # step_decay's decay_epochs means "epochs per decay": no note of ours, so mindcv's warning stays
    cfg = load_config(["--config", T224, "--epoch_size", "20", "--scheduler", "step_decay", *ONE_WORKER])
    assert cfg.notes == []
    with caplog.at_level("WARNING", logger="mindcv.scheduler.scheduler_factory"):
        build_lr_schedule(cfg, 2)
    assert mindcv_line in caplog.text
    assert logging.getLogger("mindcv.scheduler.scheduler_factory").filters == []


def test_more_data_workers_than_cores_run_on_the_cores_with_a_note():
    """The Ascend recipes ask for 8 workers; MindSpore refuses more than the machine's cores, so a recipe tried on a
    laptop (train.py, validate.py -c, infer.py -c) uses the cores it has and says so."""
    from mindcv_ext.training.config import load_eval_config

    too_many = str((os.cpu_count() or 1) + 5)
    cfg = load_config(["--config", T224, "--num_parallel_workers", too_many])
    assert cfg.num_parallel_workers == (os.cpu_count() or 1)
    assert len(cfg.notes) == 1 and f"num_parallel_workers {too_many} is more than" in cfg.notes[0]
    ev = load_eval_config(["-c", T224, "--num_parallel_workers", too_many, "--ckpt_path", T224])
    assert ev.num_parallel_workers == (os.cpu_count() or 1) and len(ev.notes) == 1
    assert load_config(["--config", T224, "--num_parallel_workers", "1"]).notes == []


def test_missing_config_file():
    with pytest.raises(ConfigError, match=r"Config file not found: 'nope\.yaml'"):
        load_config(["--config", "nope.yaml"])


@pytest.mark.parametrize("recipe", RECIPES, ids=[os.path.basename(r) for r in RECIPES])
def test_shipped_recipes_validate(recipe):
    cfg = load_config(["--config", recipe])
    assert cfg.model.startswith(("repmlp_", "demo_repmlp"))
    if "ascend" in recipe:
        # mindcv's recipe facts, and the linear lr rule each recipe states: 0.005 x (batch x 8) / 1024
        assert (cfg.opt, cfg.scheduler, cfg.amp_level, cfg.loss_scale, cfg.loss_scale_type, cfg.jit_level) == \
            ("adamw", "cosine_decay", "O2", 1024.0, "fixed", "O2")
        assert (cfg.warmup_epochs, cfg.epoch_size, cfg.mixup, cfg.cutmix, cfg.re_prob) == (10, 300, 0.2, 1.0, 0.25)
        assert cfg.lr == pytest.approx(0.005 * cfg.batch_size * 8 / 1024)
        assert cfg.image_resize == int(cfg.model[-3:])
        text = open(recipe).read()
        assert f"8 devices x {cfg.batch_size} = {cfg.batch_size * 8}" in text and "global_batch / 1024" in text
    elif "finetune" in recipe:  # starts from weights the user names; the head follows the data's classes
        assert cfg.ckpt_path and not cfg.pretrained and cfg.num_classes is None and cfg.warmup_epochs < cfg.epoch_size
    else:
        assert cfg.device_target == "CPU" and cfg.dataset == "demo" and cfg.mode == 0


def test_train_py_rejects_bad_config_before_work(tmp_path):
    # Runs the real entry point: the error must come out as one clear line, exit code 2, and nothing written.
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config",
                           os.path.join(ROOT, "configs", "repmlp", "repmlp_demo_cpu.yaml"), "--ckpt_save_dir",
                           str(out), "--learning_rate", "0.1"], capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: Unknown option --learning_rate. Did you mean lr" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_ascend_recipe_on_a_cpu_only_build_is_a_clear_error(tmp_path):
    # The machine's MindSpore is a CPU build: the shipped Ascend recipe must stop with the fix, not a C++ trace.
    import mindspore as ms

    if "Ascend" in str(getattr(ms, "get_context")("device_target")):
        pytest.skip("an Ascend build: the recipe would run")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config",
                           T224, "--data_dir",
                           str(tmp_path), "--ckpt_save_dir", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "device_target Ascend is not available here" in proc.stderr and "--device_target CPU" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_recipe_with_a_model_is_required(tmp_path):
    # Without one, mindcv's defaults would train mobilenet_v2 on Ascend; say what is needed instead.
    with pytest.raises(ConfigError, match=r"train\.py needs a recipe: python train\.py --config "
                                          r"configs/repmlp/<recipe>\.yaml.*repmlp_demo_cpu\.yaml"):
        load_config([])
    recipe = tmp_path / "no_model.yaml"
    recipe.write_text("epoch_size: 3\n")
    with pytest.raises(ConfigError, match=r"no_model\.yaml sets no model; add a line such as `model: repmlp_t224`"):
        load_config(["--config", str(recipe)])
    assert load_config(["--config", str(recipe), "--model", "demo_repmlp"]).model == "demo_repmlp"


@pytest.mark.parametrize("text, flag", [("lr: .nan\n", None), ("min_lr: -.inf\n", None), ("", ["--lr", "nan"]),
                                        ("", ["--clip_value", "inf"]), ("", ["--mean", "[1, .nan, 2]"])])
def test_non_finite_numbers_are_refused(tmp_path, text, flag):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: demo_repmlp\n" + text)
    with pytest.raises(ConfigError, match=r"must be (a finite number|a list of numbers)"):
        load_config(["--config", str(recipe), *(flag or [])])


def test_a_non_utf8_recipe_is_one_line(tmp_path):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("model: demo_repmlp  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not UTF-8 text \(byte 0xe9 at offset 25\); save it as "
                                          r"UTF-8"):
        load_config(["--config", str(recipe)])


# ---- recipe files: YAML that would read wrongly or explode is refused with the line (issue 14) --------------------

def _recipe(tmp_path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_a_key_set_twice_names_both_lines(tmp_path):
    # YAML keeps the last one without a word: a recipe edited to lr 30.0 further down would train with it.
    recipe = _recipe(tmp_path, "model: demo_repmlp\nlr: 0.003\nepoch_size: 3\nlr: 30.0\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: lr is set twice, on lines 2 and 4 \(YAML would silently keep "
                                          r"the last\); keep one of them\.$"):
        load_config(["--config", recipe])


@pytest.mark.parametrize("text, line", [
    ("model: demo_repmlp\nlr: &x 0.003\nmin_lr: *x\n", 2),  # an anchor on a plain value
    # "Billion laughs": nine levels of ten aliases inside an any-typed key; str() of a string key would expand
    # them to gigabytes before any check.
    ("model: demo_repmlp\nre_value:\n  - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
     + "".join(f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)) + "data_dir: *a8\n", 3),
], ids=["plain", "billion_laughs"])
def test_anchors_and_aliases_are_refused_before_anything_is_expanded(tmp_path, text, line):
    with pytest.raises(ConfigError, match=rf"r\.yaml line {line}: YAML anchors and aliases \(&name, \*name\) are not "
                                          r"accepted in a recipe"):
        load_config(["--config", _recipe(tmp_path, text)])


@pytest.mark.parametrize("key, read_as", [("yes", "True"), ("1", "1"), ("null", "None"), ("~", "None"),
                                          ("1.5", "1.5")])
def test_a_key_that_is_not_a_name_says_what_yaml_made_of_it(tmp_path, key, read_as):
    from mindcv_ext.training.config import load_eval_config

    recipe = _recipe(tmp_path, f"model: demo_repmlp\n{key}: 3\n")
    message = rf"r\.yaml line 2: the key {re.escape(key)} is read by YAML as {read_as}, not a key name"
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", recipe])
    with pytest.raises(ConfigError, match=message):  # validate.py / infer.py read recipes with the same parser
        load_eval_config(["-c", recipe, "--ckpt_path", recipe])


def test_a_recipe_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "a.yaml").write_text("model: demo_repmlp\n")
    with pytest.raises(ConfigError, match=rf"--config {re.escape(str(tmp_path))} is a directory; pass a recipe "
                                          rf"file, e.g\. --config {re.escape(str(tmp_path / 'a.yaml'))}\.$"):
        load_config(["--config", str(tmp_path)])
    (tmp_path / "a.yaml").unlink()
    with pytest.raises(ConfigError, match=r"is a directory; pass a recipe file \(the shipped ones are in "
                                          r"configs/repmlp/: .*repmlp_demo_cpu\.yaml"):
        load_config(["--config", str(tmp_path)])


def test_eval_tools_list_their_own_keys_before_the_training_ones(capsys):
    # validate.py / infer.py --help: their flags first, then the ~100 training keys a recipe may hold.
    from mindcv_ext.training.config import EVAL_KEYS, load_eval_config

    extra = {"image_path": ("", "str", "an image or a folder"), "batch_size": (32, "int", "images per batch")}
    with pytest.raises(SystemExit) as info:
        load_eval_config(["--help"], prog="scripts/infer.py", extra=extra)
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    heading = lines.index("training-recipe keys (read from -c, used where they apply):")
    own = [line.split()[0] for line in lines[:heading] if line.startswith("  --")]
    assert own == [f"--{k}" for k in {**EVAL_KEYS, **extra}]  # each once, in table order
    rest = [line.split()[0] for line in lines[heading:] if line.startswith("  --")]
    assert "--lr" in rest and "--epoch_size" in rest and not set(own) & set(rest)
    assert [line for line in lines if line.startswith("  --batch_size ")] == [
        "  --batch_size                   images per batch [default: 32]"]  # the tool's own default


def test_train_help_is_one_table(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    out = capsys.readouterr().out
    assert "training-recipe keys" not in out and out.count("  --") == len(KEYS)


@pytest.mark.parametrize("value,message", [("[0.08", r"--scale: '\[0\.08' is not a valid value"),
                                           ("&a [1, 2]", r"--scale line 1: YAML anchors and aliases")])
def test_a_command_line_value_is_read_under_the_recipe_rules(value, message):
    # A malformed list on the command line ended in a 47-line yaml traceback; anchors were refused only in files.
    with pytest.raises(ConfigError, match=message):
        parse_config(["--model", "demo_repmlp", "--scale", value])
