"""From a weight file to a loaded network: the one place that does it.

    net, w = mindcv_ext.build_model("repmlp_t224", "RepMLPNet-T224-train.pth", num_classes=5, new_head=True)

`read_weights(path)` reads any file this project knows (MindSpore .ckpt / .safetensors, .npz, the authors' or
mmpretrain's PyTorch .pth) into a `Weights`: the model weights in our layout, the training state beside them
(optimizer moments, step counters, EMA averages), and what the file says about itself (form, variant, classes,
class names). `load_into(net, w)` loads it strictly: every network parameter present with its shape, nothing
unexplained left over, float data only, finite values only. `build_model(name, path)` builds the network in the
file's form and loads it (timm's build_model_with_cfg). train.py, validate.py, scripts/infer.py, scripts/export.py,
scripts/reparameterize.py, scripts/convert_weights.py and `mindcv.create_model(checkpoint_path=... / pretrained=True)`
all go through these three calls.

Head policy: a classifier with another class count than the network's is an error, unless `new_head=True`
(fine-tuning), which keeps the network's freshly initialized head and says so in one line.
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import weight_formats as formats
from .checkpoint import CheckpointError
from .cli import printable
from .outputs import MARK_KEY
from .models.repmlp import MINDCV_EXTRA_KEYS, RepMLPNet, checkpoint_form, checkpoint_model_kwargs, \
    checkpoint_variant

__all__ = ["Weights", "read_weights", "load_into", "build_model", "load_pretrained", "check_class_names",
           "save_weights", "encode_class_names", "recorded_class_names", "load_hint",
           "refuse_segmentation_checkpoint",
           "CLASS_NAMES_KEY", "HEAD_KEYS", "TRAINING_STATE_SCALARS", "install"]

_log = logging.getLogger(__name__)

CLASS_NAMES_KEY = "class_names"  # a JSON list of the training class folders, in label order
HEAD_KEYS = ("head.weight", "head.bias")
# Scalars a training checkpoint may carry next to the weights (ours, MindSpore's optimizers and mindcv's).
TRAINING_STATE_SCALARS = frozenset({
    "global_step", "learning_rate", "scale_sense", "loss_scale", "epoch_num", "step_num", "epoch", "step",
    "cur_epoch_num", "cur_step_num", "current_iterator_step", "last_overflow_iterator_step", "best_acc",
    "beta1_power", "beta2_power", "steps_per_epoch",
    "gelu_approximate", "crop_h", "crop_w", "total_iters",  # segmentation checkpoints' metadata (seg.model)
})
_FLOAT_KINDS = "f"  # numpy kind of float16/32/64 (bfloat16 is widened to float32 when read)


@dataclass
class Weights:
    """A weight file, read and mapped to this project's layout, not yet bound to a network."""
    path: str
    params: Dict[str, np.ndarray]                 # model weights by our parameter names (the EMA copy if chosen)
    state: Dict[str, np.ndarray] = field(default_factory=dict)  # optimizer / EMA / loss scale / counters
    reader: str = ""                              # "MindSpore .ckpt", "safetensors", "PyTorch", "NumPy .npz"
    layout: str = formats.MINDCV
    form: Optional[str] = None                    # "train" / "deploy" (RepMLPNet), None for other models
    variant: Optional[str] = None                 # the registered RepMLPNet whose shapes these are
    class_names: Optional[List[str]] = None
    ema: bool = False                             # params are the file's EMA averages
    has_ema: bool = False
    source_of: Dict[str, str] = field(default_factory=dict)  # our name -> the file's name (foreign layouts)
    unmapped: List[str] = field(default_factory=list)       # file keys with no place in our layout
    notes: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> Optional[int]:
        return checkpoint_model_kwargs(self.params).get("num_classes")

    @property
    def in_channels(self) -> Optional[int]:
        return checkpoint_model_kwargs(self.params).get("in_channels")

    def scalar(self, key: str, default=None):
        value = self.state.get(key)
        return default if value is None else np.asarray(value).reshape(-1)[0].item()

    def describe(self) -> str:
        bits = [f"{self.reader} file in {formats.LAYOUT_NAMES.get(self.layout, self.layout)}"]
        if self.form:
            bits.append(f"{self.form} form")
        if self.num_classes:
            bits.append(f"{self.num_classes} classes" + (" (names recorded)" if self.class_names else ""))
        if self.variant:
            bits.append(f"architecture of {self.variant}")
        if self.ema:
            bits.append("EMA weights")
        return "\n".join([f"{self.path}: " + ", ".join(bits)] + [f"  note: {n}" for n in self.notes])


# ------------------------------------------------------------------------------------------------------- read

def _split_state(flat: Dict[str, object]):
    """(model weights, training state): state is a known scalar or '<prefix>.<other key>' (adam_m., adam_v.,
    moments., ema., accum., ...), which is how MindSpore names an optimizer's copy of a parameter."""
    keys = set(flat)
    state = {k for k in keys if k in TRAINING_STATE_SCALARS or ("." in k and k.split(".", 1)[1] in keys)}
    return ({k: v for k, v in flat.items() if k not in state}, {k: v for k, v in flat.items() if k in state})


def _decode_class_names(value, path: str) -> Optional[List[str]]:
    """The class names a file records (a JSON list, as text or as UTF-8 bytes), or CheckpointError naming the file
    and what is wrong with the entry: every reader of class names comes here."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:  # .safetensors holds no strings: UTF-8 bytes
        value = value.tobytes()
    elif isinstance(value, np.ndarray) and value.dtype.kind in "US" and value.size == 1:  # a string in a .npz
        value = value.reshape(-1)[0].item()
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{path}: its '{CLASS_NAMES_KEY}' entry is not UTF-8 text (byte {e.start} is "
                                  f"{bytes(value)[e.start:e.start + 1]!r}); the file is damaged or was written by "
                                  f"another tool. Re-save it with UTF-8 class names, or delete that entry.") from None
    try:
        names = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        names = None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{path}: its '{CLASS_NAMES_KEY}' entry is not a JSON list of names; the file is "
                              f"damaged. Re-save it, or delete that entry.")
    return names


def recorded_class_names(path: str) -> Optional[List[str]]:
    """The class names a checkpoint records, without reading its tensors (.ckpt); None if it has none."""
    if str(path).endswith(".ckpt"):
        import mindspore as ms
        try:
            entries = ms.load_checkpoint(path, choice_func=lambda k: k == CLASS_NAMES_KEY)
        except Exception:  # noqa: BLE001 - unreadable: the full read that follows names the problem
            return None
        return _decode_class_names(entries.get(CLASS_NAMES_KEY), path)
    return read_weights(path).class_names


def encode_class_names(names: Sequence[str], fmt: str = "ckpt"):
    """The checkpoint entry for `names`: a string in .ckpt files, UTF-8 bytes in .safetensors (no strings there)."""
    text = json.dumps(list(names), ensure_ascii=False)
    if fmt == "safetensors":
        import mindspore as ms
        return ms.Tensor(np.frombuffer(text.encode("utf-8"), np.uint8).copy())
    return text


def save_weights(net, path: str, class_names: Optional[Sequence[str]] = None, append_dict: Optional[dict] = None,
                 tool: Optional[str] = None):
    """Save a network's weights (atomically, through checkpoint.save_checkpoint) with its class names, and with
    `tool`'s mark (mindcv_ext.outputs) so a later run of that tool may replace the file."""
    from .checkpoint import checkpoint_format, save_checkpoint
    from .outputs import checkpoint_mark

    extra = dict(append_dict or {})
    if tool:
        extra.update(checkpoint_mark(tool, checkpoint_format(path)))
    if class_names:
        extra[CLASS_NAMES_KEY] = encode_class_names(class_names, checkpoint_format(path))
    return save_checkpoint(net, path, append_dict=extra or None)


def load_hint(model: str, path: str, num_classes: int, deploy: bool, in_channels: Optional[int] = 3) -> str:
    """Python that loads the checkpoint `path` as written: pasted as it is, it works (what the file does not say
    by its keys, the class count and input channels, is spelled out)."""
    args = [repr(model), f"num_classes={int(num_classes)}"]
    if in_channels and in_channels != 3:
        args.append(f"in_channels={int(in_channels)}")
    if deploy:
        args.append("deploy=True")
    args.append(f"checkpoint_path={os.fspath(path)!r}")
    return f"import mindcv, mindcv_ext; net = mindcv.create_model({', '.join(args)})"


def refuse_segmentation_checkpoint(path: str, tool: str) -> None:
    """CheckpointError in one line if `path` is a train_seg.py checkpoint (encoder.* and decode_head.* keys),
    naming the segmentation tool that reads it; the classification tools' own error listed the key names."""
    from .outputs import checkpoint_keys

    keys = checkpoint_keys(path)
    if any(k.startswith("decode_head.") for k in keys) and any(k.startswith("encoder.") for k in keys):
        raise CheckpointError(f"{path} is a segmentation checkpoint (train_seg.py): use {tool}.")


def _fmt_list(names, limit=10) -> str:
    names = [printable(n) for n in names]  # class names and file keys are data: no line breaks or escapes
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def _check_values(path: str, params: Dict[str, np.ndarray], state: Dict[str, np.ndarray]) -> None:
    """Weights must be float and finite: an int/bool tensor where a weight belongs would be cast silently, and a
    NaN would make every output NaN. Float training state must be finite too (a resume would inherit it)."""
    not_float = [f"{k} ({v.dtype})" for k, v in params.items() if np.asarray(v).dtype.kind not in _FLOAT_KINDS]
    if not_float:
        raise CheckpointError(f"{path}: {len(not_float)} weight(s) hold non-float data: {_fmt_list(not_float)}. "
                              f"Weights are floating point; the file was written wrongly (re-export it from the "
                              f"model) and is not loaded, rather than cast.")
    bad = [k for d in (params, state) for k, v in d.items()
           if np.asarray(v).dtype.kind in _FLOAT_KINDS and not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values: {_fmt_list(sorted(bad))}. "
                              f"The weights diverged before this file was written; use an earlier checkpoint.")


def read_weights(path: str, ema: Optional[bool] = False) -> Weights:
    """Read a weight file of any supported format and layout. `ema`: True takes the file's EMA averages
    (ema.* keys; an error if there are none), False the raw weights, None the EMA ones when present."""
    path = os.fspath(path)
    raw, reader = formats.read_file(path)
    notes: List[str] = []
    if isinstance(raw, dict):
        names_value = raw.pop(CLASS_NAMES_KEY, None)
        raw.pop(MARK_KEY, None)  # the writing tool's mark (mindcv_ext.outputs): metadata, not a weight
    else:
        names_value = None
    flat = formats.unwrap_state_dict(raw, notes)
    class_names = _decode_class_names(names_value, path)
    layout = formats.detect_layout(flat)
    mapped, source_of, unmapped = formats.map_state_dict(flat, layout, notes)
    params, state = _split_state(mapped)
    ema_params = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
    use_ema = bool(ema_params) if ema is None else ema
    if use_ema:
        if not ema_params:
            raise CheckpointError(f"{path} has no EMA weights (no 'ema.*' keys); load it without EMA (ema=False, "
                                  f"--ema False).")
        params = ema_params
    elif ema_params:
        notes.append("the file also holds EMA weights (ema.*); these are the raw ones (ask for ema to get those)")
    params = {k: np.asarray(v) for k, v in params.items()}
    state = {k: v for k, v in state.items() if not (use_ema and k.startswith("ema."))}
    copies = [k for k in state if k not in TRAINING_STATE_SCALARS]  # counters like epoch are not worth a note
    if copies:
        notes.append(f"{len(copies)} training-state tensors (optimizer moments, EMA averages) are kept apart from "
                     f"the weights")
    _check_values(path, params, {k: np.asarray(v) for k, v in state.items() if hasattr(v, "dtype")})
    try:
        form = checkpoint_form(params)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return Weights(path=path, params=params, state=state, reader=reader, layout=layout, form=form,
                   variant=checkpoint_variant(params), class_names=class_names, ema=use_ema,
                   has_ema=bool(ema_params), source_of=source_of, unmapped=unmapped, notes=notes)


# ------------------------------------------------------------------------------------------------------- load

def _form_error(net: RepMLPNet, w: Weights) -> Optional[str]:
    want = "deploy" if net.deploy else "train"
    if w.form is None or w.form == want:
        return None
    if w.form == "train":
        stem = os.path.splitext(os.path.basename(w.path))[0] or "model"
        return (f"{w.path} is a train-form RepMLPNet checkpoint (it has fc3_bn and repconv branches) but the "
                f"network was built with deploy=True. Build it with deploy=False, or convert the checkpoint once: "
                f"python scripts/reparameterize.py --model {net.name} --ckpt_path {w.path} --output "
                f"{stem}_deploy.ckpt")
    return (f"{w.path} is a deploy-form (re-parameterized) RepMLPNet checkpoint (fc3 has a bias, there are no conv "
            f"branches) but the network was built with deploy=False. Build it with deploy=True "
            f"(mindcv.create_model('{net.name}', deploy=True, ...); validate.py picks the form by itself). A deploy "
            f"checkpoint cannot be turned back into the train form, so it cannot be trained further as RepMLPNet.")


def load_into(net, w: Weights, *, new_head: bool = False, log: Callable[[str], None] = None) -> Weights:
    """Load `w` into `net` strictly; raise CheckpointError naming every missing, unexpected, unmapped and
    mis-shaped key. With new_head=True a classifier of another class count is left as the network initialized
    it (one log line says so); everything else stays strict. Returns `w`."""
    log = log or _log.warning  # a replaced classifier must not go unnoticed, even without logging set up
    net_params = {p.name: p for p in net.get_parameters()}  # Parameter.name is what MindSpore saves and loads
    params = dict(w.params)
    ignored = set()
    hint = ""
    if isinstance(net, RepMLPNet):
        problem = _form_error(net, w)
        if problem:
            raise CheckpointError(problem)
        if net.features_only:  # a classification checkpoint feeds a backbone
            ignored |= {k for k in params if k.startswith(("head.", "head_norm."))}
        if w.variant and w.variant != net.name:
            hint = f"Its shapes are those of {w.variant}: build that model instead of {net.name}."
    head = params.get("head.weight")
    if (new_head and head is not None and "head.weight" in net_params and head.ndim == 2
            and tuple(head.shape) != tuple(net_params["head.weight"].shape)
            and head.shape[1] == net_params["head.weight"].shape[1]):
        ignored |= set(HEAD_KEYS)
        log(f"classifier: {os.path.basename(w.path)} has {head.shape[0]} classes, the network "
            f"{net_params['head.weight'].shape[0]}; head.weight and head.bias are freshly initialized "
            f"(everything else is loaded)")
    elif head is not None and "head.weight" in net_params and not hint and \
            tuple(head.shape) != tuple(net_params["head.weight"].shape):
        hint = (f"Its classifier has {head.shape[0]} classes, the network {net_params['head.weight'].shape[0]}: "
                f"build the network with num_classes={head.shape[0]}, or fine-tune onto a new head (new_head=True; "
                f"train.py does this when --num_classes differs).")
    ignored |= {k for k in MINDCV_EXTRA_KEYS if k in params}
    params = {k: v for k, v in params.items() if k not in ignored}

    def shown(k):  # a foreign file's own key name helps its owner find it
        src = w.source_of.get(k, k)
        return k if src == k else f"{k} (from {src})"

    missing = [k for k in net_params if k not in params and k not in ignored]
    unexpected = [shown(k) for k in params if k not in net_params]
    wrong = [f"{shown(k)}: {tuple(params[k].shape)} in the file, {tuple(p.shape)} in the network"
             for k, p in net_params.items() if k in params and tuple(params[k].shape) != tuple(p.shape)]
    problems = []
    if w.unmapped:
        problems.append(f"{len(w.unmapped)} file key(s) with no RepMLPNet parameter: {_fmt_list(w.unmapped)}")
    if missing:
        problems.append(f"{len(missing)} missing: {_fmt_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_fmt_list(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape: {_fmt_list(wrong, 6)}")
    if problems:
        raise CheckpointError(f"{w.path} does not fit {getattr(net, 'name', type(net).__name__)}: "
                              + "; ".join(problems) + (f". {hint}" if hint else ""))
    from mindspore import Tensor
    for k, p in net_params.items():
        if k in params:  # float to the parameter's float type (fp16 files into an fp32 net and back)
            p.set_data(Tensor(np.ascontiguousarray(params[k]), dtype=p.dtype))
    return w


# ------------------------------------------------------------------------------------------------------ build

def build_model(model: str, checkpoint: Union[str, Weights, None] = None, *, num_classes: Optional[int] = None,
                new_head: bool = False, ema: Optional[bool] = False, form: Optional[str] = None,
                log: Callable[[str], None] = None, **model_kwargs) -> Tuple[object, Optional[Weights]]:
    """Build registered `model` and load `checkpoint` (a path or a Weights) into it. Returns (net, weights).

    The network gets the checkpoint's form (train/deploy) and in_channels, and its class count unless
    `num_classes` is given: then a different count is an error, or with new_head=True a fresh classifier
    (fine-tuning). `form='train'` refuses a deploy-form file (training needs the conv branches). Other kwargs go
    to mindcv.create_model (gelu_approximate, drop_rate, features_only, ...).
    """
    import mindcv

    from . import models  # noqa: F401  (registers our RepMLPNets)

    if not mindcv.is_model(model):
        raise CheckpointError(f"Unknown model {model!r}; registered RepMLPNets: "
                              f"{', '.join(mindcv.list_models('*repmlp*'))}")
    if checkpoint is None or checkpoint == "":
        return mindcv.create_model(model, num_classes=num_classes or 1000, **model_kwargs), None
    w = checkpoint if isinstance(checkpoint, Weights) else read_weights(checkpoint, ema=ema)
    if form == "train" and w.form == "deploy":
        raise CheckpointError(f"{w.path} is a deploy-form (re-parameterized) checkpoint: its conv branches are "
                              f"merged away, so it cannot be trained as RepMLPNet. Fine-tune the train-form "
                              f"weights, then re-parameterize the result (scripts/reparameterize.py), as the "
                              f"authors advise.")
    if model in _variants() and w.form is None:
        raise CheckpointError(f"{w.path} holds no RepMLP block (no '...repmlp_block.fc3.weight' after mapping"
                              f"{', under ema.' if w.ema else ''}): not a RepMLPNet checkpoint.")
    if w.variant and model in _variants() and w.variant != model:
        raise CheckpointError(f"{w.path} holds {w.variant} weights, not {model}: use --model {w.variant}.")
    kwargs = dict(model_kwargs)
    if w.in_channels and "in_channels" not in kwargs:
        kwargs["in_channels"] = w.in_channels
    if w.form is not None and "deploy" not in kwargs:
        kwargs["deploy"] = w.form == "deploy"
    if num_classes is not None and w.num_classes and num_classes != w.num_classes and not new_head:
        raise CheckpointError(f"{w.path} has a {w.num_classes}-class classifier but num_classes is {num_classes}. "
                              f"Drop num_classes to keep the file's, or fine-tune onto a new head (train.py "
                              f"--num_classes {num_classes} --ckpt_path {w.path}).")
    kwargs["num_classes"] = num_classes or w.num_classes or 1000
    net = mindcv.create_model(model, **kwargs)
    load_into(net, w, new_head=new_head, log=log)
    return net, w


def _variants():
    from .models.repmlp import ARCHS
    return ARCHS


def _open_url(url: str, timeout: float):
    """(readable stream, announced length or None). The seam the tests replace."""
    import urllib.request

    response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "mindcv_ext"}),
                                      timeout=timeout)
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def _download(url: str, target: str, log: Callable[[str], None]) -> Weights:
    """`url` to `target`, read and checked: under a temporary name beside it, renamed only when complete and
    readable, so a failed or killed download never leaves a file under the final name. Returns the Weights."""
    from .checkpoint import make_temp, remove_temp_files

    folder, name = os.path.split(target)
    offline = (f"Without network: download {url} elsewhere and pass --ckpt_path FILE (the file {name}; "
               f"in Python checkpoint_path=FILE), or put it in {folder}, where mindcv caches it.")
    for stale in remove_temp_files(folder, name):
        log(f"note: removed {stale}, a download interrupted by an earlier run")
    tmp = make_temp(target, os.path.splitext(name)[1])  # the weight suffix, so read_weights knows the format
    try:
        try:
            stream, length = _open_url(url, timeout=60)
            received = 0
            with stream, open(tmp, "wb") as f:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    f.write(chunk)
                    received += len(chunk)
            if length is not None and received != length:
                raise OSError(f"the connection ended after {received:,} of {length:,} bytes")
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, timeouts, IncompleteRead, resets: all "no file"
            reason = getattr(e, "reason", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"cannot download the pretrained weights from {url} ({reason}). {offline}") \
                from None
        try:
            w = read_weights(tmp)
        except CheckpointError as e:
            raise CheckpointError(f"the file downloaded from {url} is not a readable checkpoint ({e}); nothing was "
                                  f"kept. {offline}") from None
        os.replace(tmp, target)
        tmp = None
        w.path = target
        return w
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def load_pretrained(net, default_cfg: dict, log: Callable[[str], None] = None) -> None:
    """mindcv's published weights for `net`, from mindcv's cache folder (~/.mindspore/models) under the URL's file
    name, downloaded there first if missing (never leaving a partial file), then loaded strictly (mindcv's own
    load_pretrained only warns about keys that do not fit). Another class count gets a new head. A file in the
    cache that cannot be read (cut short by an earlier run's download) is removed and downloaded again."""
    from mindcv.models.helpers import get_checkpoint_download_root

    log = log or _log.warning
    url = default_cfg["url"]
    root = get_checkpoint_download_root()
    target = os.path.join(root, os.path.basename(url))
    w = None
    if os.path.exists(target):
        try:
            w = read_weights(target)
        except CheckpointError as e:  # mindcv's downloader writes under the final name: an interrupted run's file
            os.remove(target)
            log(f"note: removed {target}, an incomplete download of an earlier run ({e}); downloading it again")
    if w is None:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create mindcv's download folder {root} ({e.strerror or e}) for {url}. "
                                  f"Download that file elsewhere and pass --ckpt_path FILE (checkpoint_path=FILE "
                                  f"in Python).") from None
        w = _download(url, target, log)
    load_into(net, w, new_head=True)


def check_class_names(expected: Optional[Sequence[str]], found: Sequence[str], what: str, fix: str) -> None:
    """Raise unless `found` (class folders, in label order) equals `expected` (the checkpoint's or the train
    split's names). Names the folders that differ: a renamed or extra folder shifts every label after it."""
    if expected is None or list(expected) == list(found):
        return
    expected, found = list(expected), list(found)
    only_expected = [n for n in expected if n not in set(found)]
    only_found = [n for n in found if n not in set(expected)]
    if only_expected or only_found:
        diff = (f"missing: {_fmt_list(only_expected, 8) or 'none'}; not expected: {_fmt_list(only_found, 8) or 'none'}")
    else:
        first = next(i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
        diff = f"same names in another order (label {first} is {expected[first]!r} there, {found[first]!r} here)"
    raise CheckpointError(printable(f"{what}: class folders differ ({diff}). {fix}"))


# ------------------------------------------------------------------------------------------ mindcv integration

def _load_model_checkpoint(model, checkpoint_path: str = "", ema: bool = False, auto_mapping: bool = False) -> None:
    """mindcv.create_model(checkpoint_path=...) lands here: any supported file, strictly (mindcv 0.3.0's own
    version skips a path that does not exist and only warns about missing keys)."""
    if auto_mapping:
        raise CheckpointError("auto_mapping is not supported: RepMLPNet checkpoints of the known layouts are mapped "
                              "by name already (authors', mmpretrain's, mindcv's).")
    load_into(model, read_weights(checkpoint_path, ema=ema))


def install() -> None:
    """Point mindcv.create_model at the strict loader (create_model resolves the name in its module at call time)."""
    import mindcv.models.model_factory as factory
    factory.load_model_checkpoint = _load_model_checkpoint
