"""Import RepMLPNet weights into this project's (mindcv) parameter layout.

Sources: the authors' PyTorch checkpoints (train or deploy form, bare or wrapped, with or without `module.`),
mmpretrain's RepMLPNet checkpoints, and mindcv-layout `.ckpt` / `.safetensors` files. Every source key is
either mapped, dropped for a stated reason, or reported; the result is checked name by name and shape by shape
against the network before anything is written.

`.pth` files are read with `torch.load(weights_only=True)`, which refuses to run code embedded in a pickle.
"""
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .checkpoint import (CheckpointError, load_checkpoint, load_params_strict, save_checkpoint,
                         split_training_state)
from .models.repmlp import checkpoint_architecture as architecture_of  # noqa: F401
from .models.repmlp import checkpoint_variant as guess_variant
from .models.repmlp import ARCHS, MINDCV_EXTRA_KEYS, checkpoint_model_kwargs

__all__ = [
    "WeightImportError", "SourceInfo", "TORCH_INSTALL_HINT", "read_state_dict", "unwrap_state_dict",
    "detect_layout", "map_state_dict", "check_against_network", "guess_variant", "import_weights", "convert",
]

TORCH_INSTALL_HINT = ('pip install "mindcv-ext-repmlp[torch]"  (or the CPU-only wheel: '
                      'pip install torch --index-url https://download.pytorch.org/whl/cpu)')
TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin")
MS_SUFFIXES = (".ckpt",)
SOURCE_SUFFIXES = TORCH_SUFFIXES + MS_SUFFIXES + (".safetensors", ".npz")

OFFICIAL, MMPRETRAIN, MINDCV = "official", "mmpretrain", "mindcv"
LAYOUT_NAMES = {OFFICIAL: "the authors' PyTorch layout", MMPRETRAIN: "mmpretrain's layout",
                MINDCV: "mindcv's (MindSpore) layout"}


class WeightImportError(CheckpointError):
    """A source file that cannot be read or does not map onto the network; the message says what and how to fix."""


@dataclass
class SourceInfo:
    path: str
    reader: str = ""          # "PyTorch", "safetensors", "NumPy .npz", "MindSpore .ckpt"
    layout: str = ""          # OFFICIAL / MMPRETRAIN / MINDCV
    form: str = ""            # "train" / "deploy"
    num_classes: Optional[int] = None
    variant: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    def describe(self) -> str:
        head = (f"{self.path}: {self.reader} file in {LAYOUT_NAMES.get(self.layout, self.layout)}, {self.form} form"
                + (f", {self.num_classes} classes" if self.num_classes else "")
                + (f", architecture of {self.variant}" if self.variant else ""))
        return "\n".join([head] + [f"  note: {n}" for n in self.notes])


# ----------------------------------------------------------------------------------------------------- reading

def _check_source_path(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Source weights not found: {path!r}. Check the path (relative paths are resolved "
                                f"from {os.getcwd()!r}).")
    if os.path.isdir(path):
        raise WeightImportError(f"Source {path!r} is a directory; pass the weight file in it.")
    if os.path.getsize(path) == 0:
        raise WeightImportError(f"Source {path!r} is empty (0 bytes); download or copy it again.")
    if not path.endswith(SOURCE_SUFFIXES):
        raise WeightImportError(f"Don't know how to read {path!r}: expected one of {', '.join(SOURCE_SUFFIXES)} "
                                f"(PyTorch files: .pth/.pt/.pth.tar/.bin). Rename the file if it has one of "
                                f"those formats under another name.")


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise WeightImportError(f"Reading PyTorch .pth files needs torch, which is not installed ({e}). "
                                f"Install it with: {TORCH_INSTALL_HINT}. Or save the state dict as .safetensors "
                                f"or .npz where torch is available; those are read without torch.") from e
    return torch


def _read_torch(path: str):
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError as e:  # torch < 1.13 has no weights_only
        raise WeightImportError(f"torch {torch.__version__} cannot load safely (weights_only); upgrade it: "
                                f"{TORCH_INSTALL_HINT}") from e
    except Exception as e:  # noqa: BLE001 - pickle/zip/runtime errors all mean "not readable as tensors"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            raise WeightImportError(
                f"{path!r} holds Python objects besides tensors (e.g. a training config or argparse namespace), "
                f"and weights-only loading refuses to unpickle them: {first}. If you trust the file, re-save just "
                f"the weights with torch: sd = torch.load(f, weights_only=False)['model']; "
                f"torch.save(sd, 'weights.pth')") from e
        raise WeightImportError(f"Cannot read {path!r} as a PyTorch checkpoint: {first}. The file is corrupt, "
                                f"truncated or not a torch.save file.") from e

    def to_numpy(t):
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu()
            # numpy has no bfloat16; the network is float32 anyway.
            return (t.float() if t.is_floating_point() else t).numpy()
        return t

    return _map_nested(obj, to_numpy)


def _map_nested(obj, fn):
    if isinstance(obj, Mapping):
        return OrderedDict((k, _map_nested(v, fn)) for k, v in obj.items())
    return fn(obj)


def _read_safetensors(path: str):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightImportError(f"Cannot read {path!r} as safetensors: {e}. The file is corrupt or truncated.") from e


def _read_npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as data:  # no pickles: arrays only
            return OrderedDict((k, data[k]) for k in data.files)
    except Exception as e:  # noqa: BLE001
        raise WeightImportError(f"Cannot read {path!r} as a NumPy .npz archive of arrays: {e}.") from e


def _read_ckpt(path: str):
    try:
        params = load_checkpoint(path)
    except CheckpointError as e:
        raise WeightImportError(str(e)) from e
    return OrderedDict((k, v.asnumpy()) for k, v in params.items())


def read_state_dict(path: str) -> Tuple[dict, str]:
    """(nested dict as stored, reader name). Raises WeightImportError naming the problem."""
    path = os.fspath(path)
    _check_source_path(path)
    if path.endswith(TORCH_SUFFIXES):
        return _read_torch(path), "PyTorch"
    if path.endswith(".safetensors"):
        return _read_safetensors(path), "safetensors"
    if path.endswith(".npz"):
        return _read_npz(path), "NumPy .npz"
    return _read_ckpt(path), "MindSpore .ckpt"


def unwrap_state_dict(obj, notes: List[str]) -> "OrderedDict[str, object]":
    """The flat name -> array dict inside a checkpoint: bare, or under 'state_dict' / 'model' (training
    scripts save {'model': ..., 'optimizer': ..., 'epoch': ...}); a 'module.' prefix (DataParallel) is removed."""
    if not isinstance(obj, Mapping):
        raise WeightImportError(f"The file holds a {type(obj).__name__}, not a state dict (name -> tensor). Save "
                                f"model.state_dict(), not the model object.")
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and not any(isinstance(v, Mapping) for v in inner.values()):
            others = sorted(k for k in obj if k != wrapper)
            notes.append(f"weights taken from the {wrapper!r} entry" + (f" (ignored: {', '.join(others)})"
                                                                           if others else ""))
            obj = inner
            break
    else:
        nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
        if nested:
            raise WeightImportError(f"Found no state dict: top-level entries {sorted(obj)} include nested dicts "
                                    f"{nested} but no 'state_dict' or 'model'. Save the model's state_dict().")
    state = OrderedDict((str(k), v) for k, v in obj.items())
    if state and all(k.startswith("module.") for k in state):
        notes.append("'module.' prefix (DataParallel) removed")
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    if not state:
        raise WeightImportError("The file holds an empty state dict.")
    return state


# ----------------------------------------------------------------------------------------------------- mapping

# BN parameters: PyTorch name -> MindSpore name. num_batches_tracked only counts training steps.
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance",
       "num_batches_tracked": None}
_AFFINE = {"weight": "weight", "bias": "bias"}  # conv and Dense keep their names

_UNIT = r"stages\.(\d+)\.(\d+)\."
# Module paths of the authors' layout -> ours, with the parameter-name table that applies.
_OFFICIAL_MODULES = [
    (r"conv_embedding\.conv", r"conv_embedding.conv.conv", _AFFINE),
    (r"conv_embedding\.bn", r"conv_embedding.conv.bn", _BN),
    (r"embeds\.(\d+)\.conv", r"embeds.\1.conv.conv", _AFFINE),
    (r"embeds\.(\d+)\.bn", r"embeds.\1.conv.bn", _BN),
    (_UNIT + r"(prebn[12])", r"stages.\1.\2.\3", _BN),
    (_UNIT + r"repmlp_block\.(gp\.fc[12]|fc3|repconv\d+\.conv)", r"stages.\1.\2.repmlp_block.\3", _AFFINE),
    (_UNIT + r"repmlp_block\.(fc3_bn|repconv\d+\.bn)", r"stages.\1.\2.repmlp_block.\3", _BN),
    (_UNIT + r"ffn_block\.(ffn_fc[12])\.conv", r"stages.\1.\2.ffn_block.\3.conv", _AFFINE),
    (_UNIT + r"ffn_block\.(ffn_fc[12])\.bn", r"stages.\1.\2.ffn_block.\3.bn", _BN),
    (r"head_norm", r"head_norm", _BN),
    (r"head", r"head", _AFFINE),
]

# mmpretrain module paths -> the authors' (first match wins; the catch-all for stage internals comes last).
_MMPRETRAIN_MODULES = [
    (r"backbone\.patch_embed\.projection", r"conv_embedding.conv"),
    (r"backbone\.patch_embed\.norm", r"conv_embedding.bn"),
    (r"backbone\.downsample_layers\.(\d+)\.(conv|bn)", r"embeds.\1.\2"),
    (r"backbone\." + _UNIT + r"norm([12])", r"stages.\1.\2.prebn\3"),
    (r"backbone\." + _UNIT + r"repmlp_block\.gp\.conv([12])\.conv", r"stages.\1.\2.repmlp_block.gp.fc\3"),
    (r"backbone\.(" + _UNIT + r"(?:repmlp_block|ffn_block)\..+)", r"\1"),
    (r"backbone\.final_norm", r"head_norm"),
    (r"head\.fc", r"head"),
]



def _sub_full(rules, module: str):
    for pattern, repl, *extra in rules:
        m = re.fullmatch(pattern, module)
        if m:
            return (m.expand(repl), *extra)
    return None


def _official_to_ours(key: str) -> Tuple[Optional[str], bool]:
    """(our name or None, dropped-on-purpose)."""
    module, _, leaf = key.rpartition(".")
    hit = _sub_full(_OFFICIAL_MODULES, module)
    if hit is None or leaf not in hit[1]:
        return None, False
    ours = hit[1][leaf]
    return (None, True) if ours is None else (f"{hit[0]}.{ours}", False)


def _mmpretrain_to_official(key: str) -> Optional[str]:
    module, _, leaf = key.rpartition(".")
    hit = _sub_full(_MMPRETRAIN_MODULES, module)
    return None if hit is None else f"{hit[0]}.{leaf}"


def detect_layout(keys) -> str:
    keys = list(keys)
    if any(k.startswith("backbone.") for k in keys):
        return MMPRETRAIN
    if any(k.endswith((".gamma", ".moving_mean", ".moving_variance")) for k in keys):
        return MINDCV
    if any(k.endswith((".running_mean", ".running_var")) for k in keys):
        return OFFICIAL
    sample = ", ".join(keys[:6])
    raise WeightImportError(f"Not a RepMLPNet checkpoint in a known layout (authors' PyTorch, mmpretrain or "
                            f"mindcv): no BatchNorm statistics and no 'backbone.' keys. First keys: {sample}")


def map_state_dict(state: Mapping[str, object], layout: str, notes: List[str]):
    """Rename `state` to our layout. Returns (mapped: our name -> value, source_of: our name -> source key,
    unmapped: source keys with no place in the network). Values are passed through untouched."""
    mapped, source_of, unmapped = OrderedDict(), {}, []
    dropped = {"num_batches_tracked": 0, "mindcv": []}
    for key, value in state.items():
        if layout == MINDCV:
            if key in MINDCV_EXTRA_KEYS:  # an unused stem conv in mindcv 0.3.0's RepMLPNet
                dropped["mindcv"].append(key)
                continue
            ours = key
        else:
            official = _mmpretrain_to_official(key) if layout == MMPRETRAIN else key
            ours, dropped_on_purpose = _official_to_ours(official) if official else (None, False)
            if dropped_on_purpose:
                dropped["num_batches_tracked"] += 1
                continue
            if ours is None:
                unmapped.append(key)
                continue
        if ours in mapped:
            raise WeightImportError(f"Source keys {source_of[ours]!r} and {key!r} both map to {ours!r}; the file "
                                    f"mixes two copies of the weights (e.g. with and without 'module.'). Keep one.")
        if not hasattr(value, "shape"):
            unmapped.append(key)  # a scalar or string where a tensor belongs
            continue
        mapped[ours], source_of[ours] = value, key
    if dropped["num_batches_tracked"]:
        notes.append(f"dropped {dropped['num_batches_tracked']} BatchNorm num_batches_tracked counters "
                     f"(MindSpore's BN has none)")
    if dropped["mindcv"]:
        notes.append(f"ignored {', '.join(dropped['mindcv'])}: an unused stem conv in mindcv 0.3.0's RepMLPNet. "
                     f"That model uses MindSpore's tanh-approximated GELU; build with gelu_approximate=True to "
                     f"reproduce its outputs")
    return mapped, source_of, unmapped


def _form_of(mapped: Mapping[str, object]) -> str:
    train = [k for k in mapped if ".repmlp_block.fc3_bn." in k or ".repmlp_block.repconv" in k]
    deploy = [k for k in mapped if k.endswith(".repmlp_block.fc3.bias")]
    if train and deploy:
        raise WeightImportError(f"The source mixes train-form keys ({train[0]}, ...) with deploy-form keys "
                                f"({deploy[0]}, ...): it is neither form. Re-export it from one model.")
    if train:
        return "train"
    if deploy:
        return "deploy"
    if any(k.endswith(".repmlp_block.fc3.weight") for k in mapped):
        raise WeightImportError("The source has fc3 weights but neither fc3_bn / repconv branches (train form) nor "
                                "fc3 biases (deploy form); it is incomplete.")
    raise WeightImportError("The source holds no RepMLP block (no '...repmlp_block.fc3.weight' after mapping): "
                            "not a RepMLPNet checkpoint.")


def _fmt(names, limit=10) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def check_against_network(mapped: Mapping[str, object], source_of: Mapping[str, str], unmapped: List[str],
                          net_shapes: Mapping[str, tuple], what: str, hint: str = "") -> None:
    """Raise WeightImportError listing every unmapped, unexpected, missing and mis-shaped key."""
    unexpected = [f"{source_of[k]} (-> {k})" if source_of[k] != k else k for k in mapped if k not in net_shapes]
    missing = [k for k in net_shapes if k not in mapped]
    wrong = [f"{k}: {tuple(mapped[k].shape)} in the source"
             + (f" (as {source_of[k]})" if source_of[k] != k else "") + f", {tuple(net_shapes[k])} in the network"
             for k in net_shapes if k in mapped and tuple(mapped[k].shape) != tuple(net_shapes[k])]
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} source key(s) left unmapped (no RepMLPNet parameter has that name): "
                        f"{_fmt(unmapped)}")
    if unexpected:
        problems.append(f"{len(unexpected)} source key(s) the network does not have: {_fmt(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} network parameter(s) missing from the source: {_fmt(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} parameter(s) with the wrong shape: {_fmt(wrong, 6)}")
    if problems:
        raise WeightImportError(f"The source does not fit {what}:\n  - " + "\n  - ".join(problems)
                                + (f"\n{hint}" if hint else ""))


# ------------------------------------------------------------------------------------------------ entry points

def _net_shapes(net) -> "OrderedDict[str, tuple]":
    return OrderedDict((p.name, tuple(p.shape)) for p in net.get_parameters())


def load_source(path: str) -> Tuple["OrderedDict[str, object]", Dict[str, str], List[str], SourceInfo]:
    """Read and rename a source file: (mapped, source_of, unmapped, info). No network involved yet."""
    obj, reader = read_state_dict(path)
    info = SourceInfo(path=os.fspath(path), reader=reader)
    state = unwrap_state_dict(obj, info.notes)
    info.layout = detect_layout(state)
    mapped, source_of, unmapped = map_state_dict(state, info.layout, info.notes)
    info.form = _form_of(mapped)
    head = mapped.get("head.weight")
    info.num_classes = int(head.shape[0]) if head is not None and len(head.shape) == 2 else None
    info.variant = guess_variant(mapped)
    return mapped, source_of, unmapped, info


def import_weights(path: str, model: str, num_classes: Optional[int] = None,
                   create: Optional[Callable] = None, log: Callable[[str], None] = print, **model_kwargs):
    """Build `model` in the source's form and load the source into it strictly. Returns (net, info).

    num_classes and in_channels default to the source's. `create(model, num_classes=..., in_channels=...,
    deploy=..., **model_kwargs)` defaults to mindcv.create_model (with this project's models registered).
    """
    mapped, source_of, unmapped, info = load_source(path)
    log("Found " + info.describe())
    kwargs = {"num_classes": 1000, **checkpoint_model_kwargs(mapped), **model_kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    num_classes = kwargs["num_classes"]
    if create is None:
        import mindcv
        from . import models  # noqa: F401  (registers our RepMLPNets in mindcv)
        create = mindcv.create_model
    net = create(model, deploy=info.form == "deploy", **kwargs)
    shapes = _net_shapes(net)
    if info.layout == MINDCV:
        # Optimizer / EMA / loss-scale entries of our own training checkpoints hold no weights.
        _, state, rest = split_training_state(mapped, shapes)
        if state:
            info.notes.append(f"ignored {len(state)} training-state entries (optimizer moments, step counters)")
            log(f"  note: {info.notes[-1]}")
            mapped = OrderedDict((k, v) for k, v in mapped.items() if k not in state)
    hint = ""
    if info.variant and info.variant != model:
        hint = f"The source has the architecture of {info.variant}: pass --model {info.variant}."
    elif info.num_classes and info.num_classes != num_classes:
        hint = (f"The source's classifier has {info.num_classes} classes but the network was built with "
                f"{num_classes}; omit --num_classes to keep the source's.")
    check_against_network(mapped, source_of, unmapped, shapes,
                          f"{model} ({info.form} form, num_classes={num_classes})", hint)
    from mindspore import Tensor
    params = {k: Tensor(np.ascontiguousarray(v, dtype=np.float32)) for k, v in mapped.items()}
    load_params_strict(net, params, source=info.path)  # the project's strict loader, as a last guard
    return net, info


def convert(path: str, model: str, output: str, num_classes: Optional[int] = None,
            log: Callable[[str], None] = print, **model_kwargs) -> SourceInfo:
    """Convert `path` to a MindSpore checkpoint of `model` at `output` (.ckpt, or .safetensors), same form."""
    net, info = import_weights(path, model, num_classes=num_classes, log=log, **model_kwargs)
    save_checkpoint(net, output)
    n = sum(1 for _ in net.get_parameters())
    log(f"Wrote {output}: {n} tensors, {info.form} form. Use it with mindcv.create_model({model!r}, "
        f"num_classes={net.num_classes}, deploy={info.form == 'deploy'}, checkpoint_path={output!r}) "
        f"after `import mindcv_ext`.")
    return info
