"""Weight files as name -> array dicts in this project's (mindcv) layout: the readers for each file format and the
key maps of the other RepMLPNet code bases. No network is involved here; `mindcv_ext.weights` is the one entry
point that turns a file into a loaded network and uses these pieces.

Formats: MindSpore `.ckpt`, `.safetensors`, NumPy `.npz` (arrays only), PyTorch `.pth` / `.pt` / `.pth.tar` / `.bin`
(read with `torch.load(weights_only=True)`, which refuses to run code embedded in a pickle). Layouts: the authors'
PyTorch release (train or deploy form, bare or wrapped, with or without `module.`), mmpretrain's, and mindcv's.
"""
import os
import re
import zipfile
from collections import OrderedDict
from typing import List, Mapping, Optional, Tuple

import numpy as np

from .checkpoint import CheckpointError
from .models.repmlp import MINDCV_EXTRA_KEYS

__all__ = ["WeightImportError", "TORCH_INSTALL_HINT", "SOURCE_SUFFIXES", "OFFICIAL", "MMPRETRAIN", "MINDCV",
           "LAYOUT_NAMES", "read_file", "unwrap_state_dict", "detect_layout", "map_state_dict"]

TORCH_INSTALL_HINT = ('pip install "mindcv-ext-repmlp[torch]"  (or the CPU-only wheel: '
                      'pip install torch --index-url https://download.pytorch.org/whl/cpu)')
TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin")
SOURCE_SUFFIXES = (".ckpt", ".safetensors", ".npz") + TORCH_SUFFIXES

OFFICIAL, MMPRETRAIN, MINDCV = "official", "mmpretrain", "mindcv"
LAYOUT_NAMES = {OFFICIAL: "the authors' PyTorch layout", MMPRETRAIN: "mmpretrain's layout",
                MINDCV: "mindcv's (MindSpore) layout"}


class WeightImportError(CheckpointError):
    """A weight file that cannot be read or mapped; the message says what and how to fix it."""


# ----------------------------------------------------------------------------------------------------- reading

def check_path(path: str) -> None:
    """Missing, directory, empty or unknown-suffix paths: one line each, before anything is read."""
    if not path:
        raise CheckpointError("No checkpoint path given.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint not found: {path!r}. Check the path (relative paths are resolved "
                                f"from {os.getcwd()!r}).")
    if os.path.isdir(path):
        raise CheckpointError(f"Checkpoint path {path!r} is a directory; pass the weight file in it.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"Checkpoint {path!r} is empty (0 bytes): it was probably interrupted while being "
                              f"written. Use another checkpoint, or copy / download it again.")
    if not path.endswith(SOURCE_SUFFIXES):
        raise CheckpointError(f"Don't know how to read {path!r}: expected one of {', '.join(SOURCE_SUFFIXES)}. "
                              f"Rename the file if it has one of those formats under another name.")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise WeightImportError(f"Reading PyTorch .pth files needs torch, which is not installed ({e}). "
                                f"Install it with: {TORCH_INSTALL_HINT}. Or save the state dict as .safetensors "
                                f"or .npz where torch is available; those are read without torch.") from e
    return torch


def _is_torch_file(path: str) -> bool:
    """torch.save writes a zip archive (>= 1.6) or a pickle stream (legacy: protocol byte 0x80 first)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _read_torch(path: str):
    torch = _import_torch()
    if not _is_torch_file(path):
        raise WeightImportError(f"{path!r} is not a torch.save file (neither a zip archive nor a pickle stream): "
                                f"it is corrupt, truncated or of another format.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError as e:  # torch < 1.13 has no weights_only
        raise WeightImportError(f"torch {torch.__version__} cannot load safely (weights_only); upgrade it: "
                                f"{TORCH_INSTALL_HINT}") from e
    except Exception as e:  # noqa: BLE001 - pickle/zip/runtime errors all mean "not readable as tensors"
        # Only a refused global means "Python objects besides tensors"; anything else is a damaged file.
        if "Unsupported global" in str(e) or "Unsupported class" in str(e):
            raise WeightImportError(
                f"{path!r} holds Python objects besides tensors (e.g. a training config or argparse namespace), "
                f"and weights-only loading refuses to unpickle them: {_first_line(e)}. If you trust the file, "
                f"re-save just the weights with torch: sd = torch.load(f, weights_only=False)['model']; "
                f"torch.save(sd, 'weights.pth')") from e
        raise WeightImportError(f"Cannot read {path!r} as a PyTorch checkpoint: {_first_line(e)}. The file is "
                                f"corrupt, truncated or not a torch.save file.") from e

    def to_numpy(t):
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu()
            # numpy has no bfloat16: widen it (a float stays a float); other dtypes are kept so they can be refused.
            return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
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
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise WeightImportError(f"Cannot read {path!r} as safetensors: {_first_line(e)}. The file is corrupt or "
                                f"truncated.") from e


def _read_npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as data:  # no pickles: arrays only
            return OrderedDict((k, data[k]) for k in data.files)
    except Exception as e:  # noqa: BLE001
        raise WeightImportError(f"Cannot read {path!r} as a NumPy .npz archive of arrays: {_first_line(e)}.") from e


def _read_ckpt(path: str):
    import mindspore as ms

    try:
        params = ms.load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - MindSpore raises ValueError/RuntimeError with C++ traces
        raise WeightImportError(f"Cannot read checkpoint {path!r} as a MindSpore .ckpt file: {_first_line(e)}. "
                                f"The file is corrupt, truncated or of another format.") from e
    # Strings (class names) stay strings; everything else becomes an array with its stored dtype.
    return OrderedDict((k, v if isinstance(v, str) else v.asnumpy()) for k, v in params.items())


def read_file(path: str) -> Tuple[dict, str]:
    """(nested dict as stored, reader name). Raises naming the problem."""
    path = os.fspath(path)
    check_path(path)
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
