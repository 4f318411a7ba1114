"""ONNX Runtime as a backend for the evaluation tools: an exported (scripts/export.py) or quantized
(scripts/quantize.py) .onnx file run like a network on NumPy batches, and the metadata those tools record in it.

    net = OnnxNet("m_int8.onnx")          # CPU provider; threads: ORT's default unless given
    logits = net(images)                  # (N, C, H, W) float32 NumPy (or a MindSpore Tensor) -> NumPy
    net.meta["model"], net.class_names, net.image_size, net.precision

The files have a static batch (MindSpore exports static shapes): a batch of another size is cut into the file's
batch, the last piece padded with zeros and the padding's outputs dropped. Importing this module imports neither
MindSpore nor onnx; onnxruntime is imported when a file is opened.
"""
import json
import os
from typing import Dict, Optional

import numpy as np

__all__ = ["OnnxNet", "OnnxError", "set_metadata", "read_metadata", "is_onnx"]


class OnnxError(ValueError):
    """A file that cannot be run as this project's ONNX export (bad input: one line, exit 2)."""


def is_onnx(path) -> bool:
    return str(path).lower().endswith(".onnx")


def set_metadata(model, meta: Dict[str, str], tool: Optional[str] = None):
    """Write `meta` (str -> str) into an onnx ModelProto's metadata_props, replacing keys already there; with
    `tool`, the output rule's mark (mindcv_ext.outputs.onnx_mark) too. Returns the model."""
    if tool:
        from .outputs import onnx_mark
        meta = {**meta, **onnx_mark(tool)}
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=str(value))
    return model


def read_metadata(session_or_path) -> Dict[str, object]:
    """The metadata export.py / quantize.py wrote, JSON values decoded (input_shape, class_names, ...)."""
    if isinstance(session_or_path, (str, os.PathLike)):
        session_or_path = _session(os.fspath(session_or_path))
    raw = session_or_path.get_modelmeta().custom_metadata_map
    meta = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value) if value[:1] in "[{" else value
        except ValueError:
            meta[key] = value
    return meta


def _session(path: str, threads: Optional[int] = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxError(f"{path} is an ONNX file: running it needs onnxruntime (pip install -e \".[onnx]\")") from None
    if not os.path.isfile(path):
        raise OnnxError(f"ONNX file not found: {path}")
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT's warnings (unused initializers, ...) are not the user's business
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own types for unreadable or invalid files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxError(f"ONNX Runtime cannot load {path}: {first}") from None


class OnnxNet:
    """An .onnx file on ONNX Runtime's CPU provider, called like the MindSpore network it came from."""

    training = False

    def __init__(self, path: str, threads: Optional[int] = None):
        self.path = os.fspath(path)
        self.session = _session(self.path, threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise OnnxError(f"{self.path} has {len(inputs)} inputs and {len(outputs)} outputs; the tools run "
                            f"single-input single-output files (scripts/export.py's)")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise OnnxError(f"{self.path} takes input shape {shape}; expected a static (N, C, H, W) image batch")
        self.input_shape = tuple(shape)
        self.batch_size = shape[0] if isinstance(shape[0], int) else None  # None: any batch
        self.meta = read_metadata(self.session)
        self.image_size = int(shape[2])
        self.in_channels = int(shape[1])
        names = self.meta.get("class_names")
        self.class_names = list(names) if isinstance(names, list) else None
        self.precision = self.meta.get("precision", "fp32")
        self.task = self.meta.get("task", "classification")
        self.model_name = self.meta.get("model")
        out = outputs[0].shape
        self.num_classes = int(out[1]) if len(out) >= 2 and isinstance(out[1], int) else None

    def set_train(self, mode: bool = False):
        if mode:
            raise RuntimeError("an ONNX file cannot be trained")
        return self

    def check_input(self, shape):
        if tuple(shape[1:]) != self.input_shape[1:]:
            raise ValueError(f"{os.path.basename(self.path)} takes {self.input_shape[1]}x{self.input_shape[2]}x"
                             f"{self.input_shape[3]} images (its static shape); got {tuple(shape)}")

    def __call__(self, x) -> np.ndarray:
        if hasattr(x, "asnumpy"):
            x = x.asnumpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.check_input(x.shape)
        b = self.batch_size
        if b is None or x.shape[0] == b:
            return self.session.run(None, {self.input_name: x})[0]
        outs = []
        for start in range(0, x.shape[0], b):
            part = x[start:start + b]
            n = part.shape[0]
            if n < b:
                part = np.concatenate([part, np.zeros((b - n,) + part.shape[1:], np.float32)])
            outs.append(self.session.run(None, {self.input_name: part})[0][:n])
        return np.concatenate(outs)


def model_name(path: str) -> str:
    """The model name export.py recorded in the file ('' if none): what --model defaults to for an .onnx file."""
    try:
        import onnx
        model = onnx.load(path, load_external_data=False)
        return next((p.value for p in model.metadata_props if p.key == "model"), "")
    except Exception:  # noqa: BLE001 - unreadable here: OnnxNet says why when it opens the file
        return ""


def build_onnx_model(cfg, log=print):
    """build_eval_model's .onnx branch: (OnnxNet, what validate.py / infer.py read off a checkpoint's weights,
    image size). The file fixes the input size; flags that contradict the file are errors, not ignored."""
    from types import SimpleNamespace

    from .checkpoint import CheckpointError

    try:
        net = OnnxNet(cfg.ckpt_path)
    except OnnxError as e:
        raise CheckpointError(str(e)) from None
    recorded = net.model_name
    if recorded and cfg.model and cfg.model != recorded:
        raise CheckpointError(f"{cfg.ckpt_path} holds {recorded}, not {cfg.model}: use --model {recorded} (or leave "
                              f"--model out for an .onnx file)")
    if net.task != "classification":
        raise CheckpointError(f"{cfg.ckpt_path} is a {net.task} model; use scripts/predict_seg.py for it")
    if cfg.image_resize and cfg.image_resize != net.image_size:
        raise CheckpointError(f"image size {cfg.image_resize}: {cfg.ckpt_path} takes {net.image_size}x"
                              f"{net.image_size} only (its shapes are static); drop --image_resize or export again "
                              f"with --image_size {cfg.image_resize}")
    if cfg.ema:
        raise CheckpointError(f"--ema True: {cfg.ckpt_path} holds one set of weights; export the EMA ones with "
                              f"scripts/export.py --ema True")
    given = "num_classes" in getattr(cfg, "_given", ())
    if given and cfg.num_classes and net.num_classes and cfg.num_classes != net.num_classes:
        raise CheckpointError(f"--num_classes {cfg.num_classes} contradicts {cfg.ckpt_path}'s {net.num_classes} outputs")
    batch = f"batch {net.batch_size}" if net.batch_size else "any batch"
    log(f"note: {cfg.ckpt_path}: ONNX Runtime {_ort_version()} (CPU), {net.precision}, static {batch} "
        f"(other batch sizes are cut into it)")
    names = net.class_names if net.class_names and len(net.class_names) == net.num_classes else None
    w = SimpleNamespace(form=f"deploy, ONNX {net.precision}", ema=False, class_names=names,
                        num_classes=net.num_classes, in_channels=net.in_channels, notes=[])
    return net, w, net.image_size


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def onnx_segmentor(path: str, **test_cfg):
    """init_segmentor's .onnx branch: an OnnxNet with what inference_segmentor reads (native_size, dataset_meta,
    arch, test_cfg). The file's input size is static: it is the sliding window (eval_mode slide predicts any image
    size with it); whole-image mode, whose input size follows each image, is refused."""
    from .checkpoint import CheckpointError
    from .seg.data import palette_for
    from .seg.inference import resolve_test_cfg

    try:
        net = OnnxNet(path)
    except OnnxError as e:
        raise CheckpointError(str(e)) from None
    if net.task != "segmentation":
        raise CheckpointError(f"{path} is a {net.task} model; use scripts/infer.py for it")
    n = net.num_classes
    window = tuple(net.input_shape[2:])
    net.native_size = int(net.meta.get("native_size", window[0]))
    names = net.class_names if net.class_names and len(net.class_names) == n else None
    net.dataset_meta = {"classes": names or [str(i) for i in range(n)], "recorded": bool(names),
                        "palette": palette_for(n)}
    net.arch = dict(backbone=net.model_name, head=net.meta.get("head"), num_classes=n, deploy=True,
                    crop_size=window, gelu_approximate=None, onnx=True)
    if test_cfg.get("mode", "whole") == "whole":  # refused before any work: images of other sizes would fail mid-run
        raise CheckpointError(f"eval_mode whole: {path} takes {window[0]}x{window[1]} inputs only (static shapes); "
                              f"pass --eval_mode slide (windows of that size cover any image), or export the "
                              f"checkpoint at the padded image size")
    if not test_cfg.get("crop_size"):
        test_cfg["crop_size"] = window
    if tuple(test_cfg["crop_size"]) != window:
        raise CheckpointError(f"eval_crop {list(test_cfg['crop_size'])}: {path} takes {window[0]}x{window[1]} "
                              f"windows only (static shapes); drop --eval_crop or export at that size")
    net.test_cfg = resolve_test_cfg(net.arch, net.native_size, **test_cfg)
    return net
