"""The one rule for every file a tool writes: an existing file is never replaced silently.

A tool replaces an existing file only when
  - the file carries this tool's mark (it wrote it before: a re-run refreshes its own outputs), or
  - the user named it and passed `--overwrite True`;
and never when
  - the file is a run's training state (latest.ckpt, a periodic checkpoint, anything holding optimizer state):
    refused even with --overwrite, since a resume needs it and nothing can rebuild it;
  - the file is read-only (the user protected it): refused with one line, even with --overwrite.
Several outputs of one run never share a name (OutputNames): the second claim is refused before any work.

Marks (key MARK_KEY = "written_by", value "mindcv_ext <tool>"):
  - .ckpt / .safetensors: a metadata entry in save_checkpoint's append_dict (checkpoint_mark; weights.save_weights
    adds it when given `tool`, and read_weights drops it like the class names);
  - .png: a tEXt chunk (png_mark -> PIL PngInfo for Image.save(..., pnginfo=...));
  - .onnx: a metadata_props entry (onnx_mark(tool), written by onnx_runtime.set_metadata(..., tool=));
  - infer.py's .jsonl predictions: no room for a mark; known by their form (each line {"path", "top5"});
  - formats with no place for metadata (MINDIR, ...): no mark, so an existing file needs --overwrite.

Public API (all refusals are OutputError, a ValueError: bad input, exit 2, one line):
    MARK_KEY, mark(tool), checkpoint_mark(tool, fmt), png_mark(tool), onnx_mark(tool)
    written_by(path) -> the tool named in the file's mark, or None (unmarked, unreadable, unknown format)
    checkpoint_keys(path) -> the key names of a .ckpt / .safetensors, reading no tensor
    training_state(path) -> why `path` is a run's training state, or None
    check_replace(path, tool, overwrite=False, what="--output") -> raise OutputError unless `path` may be written
    OutputNames(tool, overwrite=False, what="output").claim(path, source) -> abspath; refuses collisions and
        check_replace's cases (one object per run, every output claimed before the work starts)
checkpoint.check_output_path (the entry the tools call for one output file) applies check_replace after its own
checks of the place.
"""
import json
import os
import re
import stat
from typing import Dict, List, Optional

__all__ = ["OutputError", "same_file", "MARK_KEY", "mark", "checkpoint_mark", "png_mark", "onnx_mark", "written_by",
           "training_state", "check_replace", "OutputNames", "checkpoint_keys"]

MARK_KEY = "written_by"
_PREFIX = "mindcv_ext "
# Keys only a training checkpoint holds: every MindSpore optimizer's step counter and the moments of ours.
_STATE_KEYS = ("global_step",)
_STATE_PREFIXES = ("adam_m.", "adam_v.", "moments.", "moment1.", "moment2.", "accum.")
# A periodic checkpoint's name (ckpt_manager: `<model>-<epoch>_<steps>.ckpt`) and what marks a folder as a run's.
_PERIODIC_RE = re.compile(r".+-\d+_\d+\.(ckpt|safetensors)$")
_RUN_FILES = ("latest.ckpt", "metrics.jsonl", ".train.lock")


class OutputError(ValueError):
    """An output place the rule refuses; the message names the file, why, and the fix."""


def mark(tool: str) -> str:
    return _PREFIX + tool


def checkpoint_mark(tool: str, fmt: str = "ckpt") -> Dict[str, object]:
    """{MARK_KEY: mark} for save_checkpoint's append_dict: a string in .ckpt, UTF-8 bytes in .safetensors (which
    holds tensors only)."""
    if fmt == "safetensors":
        import mindspore as ms
        import numpy as np
        return {MARK_KEY: ms.Tensor(np.frombuffer(mark(tool).encode("utf-8"), np.uint8).copy())}
    return {MARK_KEY: mark(tool)}


def png_mark(tool: str, info=None):
    """A PIL PngInfo (or `info` extended) carrying the mark as a tEXt chunk."""
    from PIL.PngImagePlugin import PngInfo
    info = info or PngInfo()
    info.add_text(MARK_KEY, mark(tool))
    return info


def onnx_mark(tool: str) -> Dict[str, str]:
    """{MARK_KEY: mark} for an .onnx file's metadata_props (onnx_runtime.set_metadata writes it)."""
    return {MARK_KEY: mark(tool)}


def _tool_of(value) -> Optional[str]:
    if value is None:
        return None
    if hasattr(value, "asnumpy"):
        value = value.asnumpy()
    if hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "u":
        value = value.tobytes()
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    value = str(value)
    return value[len(_PREFIX):] if value.startswith(_PREFIX) else None


def _checkpoint_entries(path: str):
    """(key names, {MARK_KEY: value} if present) of a checkpoint, reading no tensor but the mark."""
    names, found = [], {}
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, framework="np") as f:
            names = list(f.keys())
            if MARK_KEY in names:
                found[MARK_KEY] = f.get_tensor(MARK_KEY)
        return names, found
    import mindspore as ms

    def choose(key):
        names.append(key)
        return key == MARK_KEY
    try:
        found = ms.load_checkpoint(path, choice_func=choose)
    except ValueError:  # MindSpore refuses a load that selects nothing: no mark, the names are still known
        found = {}
    return names, found


def checkpoint_keys(path: str) -> List[str]:
    """The key names of a .ckpt / .safetensors file without reading its tensors; [] for other formats or a file that
    cannot be read (the full read that follows names the problem)."""
    path = os.fspath(path)
    if not path.endswith((".ckpt", ".safetensors")) or not os.path.isfile(path):
        return []
    try:
        return _checkpoint_entries(path)[0]
    except Exception:  # noqa: BLE001
        return []


def written_by(path: str) -> Optional[str]:
    """The tool named in `path`'s mark, or None: unmarked, unreadable, or a format without metadata."""
    path = os.fspath(path)
    try:
        if path.endswith((".ckpt", ".safetensors")):
            return _tool_of(_checkpoint_entries(path)[1].get(MARK_KEY))
        if path.lower().endswith(".png"):
            from PIL import Image
            with Image.open(path) as im:
                return _tool_of(im.info.get(MARK_KEY))
        if path.endswith(".onnx"):
            import onnx
            model = onnx.load(path, load_external_data=False)
            return _tool_of(next((p.value for p in model.metadata_props if p.key == MARK_KEY), None))
        if path.endswith(".jsonl"):  # JSON lines have no room for a mark: infer.py's are known by their form
            with open(path, encoding="utf-8") as f:
                first = json.loads(f.readline(1 << 20) or "null")
            return "scripts/infer.py" if isinstance(first, dict) and set(first) == {"path", "top5"} else None
    except Exception:  # noqa: BLE001 - an unreadable file carries no mark; refusing it is the safe side
        return None
    return None


def training_state(path: str) -> Optional[str]:
    """Why `path` is a run's training state (what resuming needs), or None."""
    path = os.path.abspath(os.fspath(path))
    name, folder = os.path.basename(path), os.path.dirname(path)
    if name == "latest.ckpt":
        return "latest.ckpt is a run's training state (resuming needs it)"
    if _PERIODIC_RE.match(name) and any(os.path.exists(os.path.join(folder, f)) for f in _RUN_FILES):
        return f"{name} is a periodic checkpoint of the run in {folder}"
    if os.path.isfile(path) and path.endswith((".ckpt", ".safetensors")):
        try:
            names = _checkpoint_entries(path)[0]
        except Exception:  # noqa: BLE001 - unreadable: not known to be training state; check_replace still asks
            return None
        if any(k in _STATE_KEYS or k.startswith(_STATE_PREFIXES) for k in names):
            return f"{name} holds a run's optimizer state (resuming from it needs it)"
    return None


def check_replace(path: str, tool: Optional[str], overwrite: bool = False, what: str = "--output") -> str:
    """Raise OutputError unless `tool` may write `path` under the rule above; returns the absolute path. Reads at
    most the file's header / mark, never changes anything."""
    path = os.path.abspath(os.fspath(path))
    shown = f"{what} {path}"
    if not os.path.lexists(path):
        return path
    reason = training_state(path)
    if reason:
        raise OutputError(f"{shown}: {reason}; it is never written over, even with --overwrite True. Write to "
                          f"another name.")
    if os.path.isdir(path):
        raise OutputError(f"{shown} is a directory; name a file.")
    try:
        mode = os.stat(path).st_mode
    except OSError:  # a dangling link: replacing it loses nothing
        return path
    if not stat.S_ISREG(mode):
        raise OutputError(f"{shown} exists and is not a regular file; write to another name.")
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):  # by the mode bits: root's access() says yes
        raise OutputError(f"{shown} exists and is read-only; it is left as it is. Write to another name (or make "
                          f"it writable first if it should be replaced).")
    owner = written_by(path) if tool else None
    if overwrite or (tool is not None and owner == tool):
        return path
    by = f"written by {owner}" if owner else "not written by " + (tool or "this tool")
    raise OutputError(f"{shown} exists ({by}); pass --overwrite True to replace it, or write to another name.")


class OutputNames:
    """Every output of one run, claimed before the work starts: two sources writing one file, or a file the rule
    refuses, is found while nothing has been written."""

    def __init__(self, tool: str, overwrite: bool = False, what: str = "output"):
        self.tool, self.overwrite, self.what = tool, overwrite, what
        self._claimed: Dict[str, str] = {}

    def claim(self, path: str, source: str) -> str:
        path = os.path.abspath(os.fspath(path))
        key = os.path.normcase(os.path.realpath(path))
        first = self._claimed.get(key)
        if first is not None and first != source:
            raise OutputError(f"{first} and {source} would both write {path}; rename one of them.")
        self._claimed[key] = source
        check_replace(path, self.tool, self.overwrite, what=f"{self.what} of {source}:")
        return path

    def __len__(self) -> int:
        return len(self._claimed)


def same_file(a: str, b: str) -> bool:
    """True when writing `b` would replace `a` (same path, or a link to it)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)
