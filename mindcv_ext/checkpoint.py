"""Strict, atomic checkpoint I/O.

mindcv's loaders are lenient in ways that lose work silently: `create_model(checkpoint_path=...)` skips a path
that does not exist and `load_param_into_net` only warns about missing keys. Every loader in this project goes
through `load_checkpoint` + `load_params_strict`, which raise and name what is wrong.
"""
import os
import tempfile
from typing import Callable, Dict, Iterable, Optional

import mindspore as ms
from mindspore import Parameter, Tensor

__all__ = [
    "CheckpointError",
    "checkpoint_format",
    "load_checkpoint",
    "save_checkpoint",
    "load_params_strict",
    "split_training_state",
    "TRAINING_STATE_SCALARS",
]

# Scalars a training checkpoint may carry next to the weights (ours, MindSpore's optimizers and mindcv's).
TRAINING_STATE_SCALARS = frozenset({
    "global_step", "learning_rate", "scale_sense", "loss_scale", "epoch_num", "step_num", "epoch", "step",
    "cur_epoch_num", "cur_step_num", "current_iterator_step", "last_overflow_iterator_step", "best_acc",
    "beta1_power", "beta2_power",
})


class CheckpointError(ValueError):
    """A checkpoint that does not fit the network, or cannot be read. The message says why and what to do."""


def checkpoint_format(path: str) -> str:
    """'safetensors' for *.safetensors, else MindSpore's own 'ckpt'."""
    return "safetensors" if str(path).endswith(".safetensors") else "ckpt"


def load_checkpoint(path: str) -> Dict[str, Parameter]:
    """Read a .ckpt or .safetensors file into a name -> Parameter dict; raise if missing, empty or unreadable."""
    path = os.fspath(path)
    if not path:
        raise CheckpointError("No checkpoint path given.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint not found: {path!r}. Check the path (relative paths are resolved "
                                f"from {os.getcwd()!r}).")
    if os.path.isdir(path):
        raise CheckpointError(f"Checkpoint path {path!r} is a directory; pass the .ckpt / .safetensors file in it.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"Checkpoint {path!r} is empty (0 bytes): it was probably interrupted while being "
                              f"written. Use another checkpoint.")
    try:
        params = ms.load_checkpoint(path, format=checkpoint_format(path))
    except Exception as e:  # MindSpore raises ValueError/RuntimeError with C++ traces for corrupt files
        raise CheckpointError(f"Cannot read checkpoint {path!r} as a MindSpore {checkpoint_format(path)} file: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. The file is corrupt, "
                              f"truncated or of another format (PyTorch .pth files go through "
                              f"scripts/convert_weights.py).") from e
    if not params:
        raise CheckpointError(f"Checkpoint {path!r} holds no parameters.")
    return params


def _as_save_list(obj):
    if isinstance(obj, ms.nn.Cell):
        return [{"name": p.name, "data": p} for p in obj.get_parameters()]
    if isinstance(obj, dict):
        return [{"name": k, "data": v if isinstance(v, (Tensor, Parameter)) else Tensor(v)} for k, v in obj.items()]
    return obj


def save_checkpoint(obj, path: str, append_dict: Optional[dict] = None) -> str:
    """Save a Cell, a name -> Tensor dict or MindSpore's list form atomically: a temporary file in the same
    directory, then os.replace, so a crash never leaves a half-written file under the final name."""
    path = os.fspath(path)
    fmt = checkpoint_format(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = ".safetensors" if fmt == "safetensors" else ".ckpt"  # MindSpore appends .ckpt to other names
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp" + suffix, dir=directory)
    os.close(fd)
    try:
        ms.save_checkpoint(_as_save_list(obj), tmp, append_dict=append_dict, format=fmt)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def split_training_state(params: Dict[str, Parameter], model_keys: Iterable[str]):
    """Split a checkpoint into (model params, training state, unknown keys).

    Training state is what optimizers, EMA and loss scaling add: a known scalar, or '<prefix>.<model key>'
    (adam_m., adam_v., moments., ema., accum., ...). Anything else is unknown and reported by the caller.
    """
    model_keys = set(model_keys)
    model, state, unknown = {}, {}, []
    for k, v in params.items():
        if k in model_keys:
            model[k] = v
        elif k in TRAINING_STATE_SCALARS or ("." in k and k.split(".", 1)[1] in model_keys):
            state[k] = v
        else:
            unknown.append(k)
    return model, state, unknown


def _fmt_list(names, limit=12):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def load_params_strict(net: ms.nn.Cell, params: Dict[str, Parameter], *, source: str = "checkpoint",
                       ignore: Callable[[str], bool] = lambda k: False, hint: str = "") -> None:
    """Load `params` into `net`, raising CheckpointError unless every net parameter is present with its shape.

    Keys the net does not have are allowed only if they are training state (see split_training_state) or
    `ignore(key)` is true; anything else is listed in the error.
    """
    net_params = {p.name: p for p in net.get_parameters()}  # Parameter.name is what MindSpore saves and loads
    model, _, unknown = split_training_state(params, net_params)
    unknown = [k for k in unknown if not ignore(k)]
    missing = [k for k in net_params if k not in model]
    mismatched = [f"{k}: {tuple(model[k].shape)} in {source}, {tuple(p.shape)} in the network"
                  for k, p in net_params.items() if k in model and tuple(model[k].shape) != tuple(p.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_fmt_list(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} unexpected: {_fmt_list(unknown)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with wrong shape: {_fmt_list(mismatched, 6)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(net).__name__}: " + "; ".join(problems)
                              + (f". {hint}" if hint else ""))
    for k, p in net_params.items():
        value = model[k]
        data = value if isinstance(value, Tensor) else Tensor(value)
        if data.dtype != p.dtype:
            data = data.astype(p.dtype)
        p.set_data(data)
