"""Static INT8 quantization for ONNX Runtime, calibrated on your images: one command from a checkpoint.

    python scripts/quantize.py --model repmlp_t224 --ckpt_path best.ckpt --calib_dir my_data/train \\
        --calib_images 256 --batch_size 8 --output t224_int8.onnx

The checkpoint (train or deploy form, as export.py takes) is exported to the deploy ONNX file first (export.py's
clean graph and its check against the network), then quantized with onnxruntime.quantization: QDQ format, opset
20, weights int8 per output channel, activations uint8 per tensor (the u8s8 path of ORT's VNNI kernels), for every
Conv / MatMul / Gemm; GELU, the gates and the residual adds stay float. Calibration runs --calib_images images of
--calib_dir (a folder searched recursively, e.g. an ImageFolder split; spread evenly over its files) through
validate.py's evaluation preprocessing (mindcv_ext.data.loaders.eval_transforms). --calib_method picks how the
activation ranges are set (minmax by default: the measurements in docs/performance.md, INT8 section).

Each fc3 is quantized as a dense FC plus its conv taps as a 3x3 depthwise conv beside it, kept in float (--split_local
True, the same function: RepMLPBlock.split_local). The merged taps are outliers of every fc3 row: per-row int8 of the
merged matrix took a t224 trained here from 91.4 to 76.0 top-1 (76% agreement with float); the split form keeps
91.4 (100% agreement on 500 held-out images; docs/performance.md, INT8 section).

--fp32_layers keeps layers in float: by default the stem (the first conv, on the raw pixels: the one layer whose
INT8 form cost the demo model accuracy, docs/performance.md), 'none', or comma-separated node names as printed,
shell patterns allowed (e.g. 'stem,*.ffn_fc1.conv'); the run prints every layer that stayed float and why, the share
of parameter bytes stored as int8, and how INT8 and float agree on the calibration images. When they disagree on
1% or more (or with --layer_report N), it lists the int8 layers with the largest error of their own (each layer
rounded alone, on the float model's input to it: layer-wise error analysis), with the --fp32_layers value that keeps
them float. The
file records its model, class names, input shape and preprocessing (metadata_props), so validate.py / infer.py run
it with no more flags:

    python validate.py --ckpt_path t224_int8.onnx --data_dir my_data

Exit status (mindcv_ext.cli's table): 0 written; 2 bad input (one line, before any long work); 1 the export, the
calibration or the quantization failed (nothing written); 130 / 143 Ctrl-C / SIGTERM. An existing --output is
replaced only if quantize.py wrote it, or with --overwrite True.
"""
import argparse
import fnmatch
import json
import logging
import os
import sys
import time

import _common  # noqa: F401  (import path + helpers)
import numpy as np

from mindcv_ext.cli import BAD_INPUT, FAILED, OK, printable, run_tool

PROG = "quantize.py"
METHODS = ("minmax", "percentile", "entropy")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
LOCAL = ".repmlp_block.local"  # RepMLPBlock.split_local's conv taps


class QuantizeError(Exception):
    """The work failed (exit 1); the message is one line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="registered model name, e.g. repmlp_t224")
    p.add_argument("--ckpt_path", required=True, help="train- or deploy-form checkpoint (.ckpt / .safetensors)")
    p.add_argument("--calib_dir", required=True, help="folder of calibration images (e.g. my_data/train)")
    p.add_argument("--calib_images", type=int, default=256, help="how many images calibrate (default 256)")
    p.add_argument("--batch_size", type=int, default=1, help="static batch size of the file (default 1)")
    p.add_argument("--output", required=True, help="the INT8 .onnx file to write")
    p.add_argument("--image_size", type=int, default=None, help="input height = width (default: the native size)")
    p.add_argument("--crop_pct", type=float, default=None, help="evaluation crop fraction (default: validate.py's)")
    p.add_argument("--interpolation", default=None, help="evaluation resize filter (default: validate.py's)")
    p.add_argument("--calib_method", default="minmax", choices=METHODS, help="activation range (default minmax)")
    p.add_argument("--fp32_layers", default="stem",
                   help="layers kept in float: 'stem' (default: the first conv, which reads the pixels; measured "
                        "below), 'none', or comma-separated layer names as printed, shell patterns allowed (e.g. "
                        "'stem,*.ffn_fc1.conv')")
    p.add_argument("--split_local", type=_common.str2bool, default=True,
                   help="quantize each fc3 as a dense FC plus its conv taps as a small conv (default True: the "
                        "merged taps are outliers that per-row int8 cannot hold; False: the merged fc3)")
    p.add_argument("--layer_report", type=int, default=None,
                   help="list the N int8 layers with the largest error, each measured alone on the float model's "
                        "input (the first max(8, --batch_size) calibration images); default: the 5 worst, printed "
                        "when INT8 changes the top-1 class of 1%% or more of the calibration images; 0: never")
    p.add_argument("--activations", default="uint8", choices=("uint8", "int8"),
                   help="activation type: uint8 (u8s8, ORT's fastest x86 path) or int8 (s8s8)")
    p.add_argument("--num_classes", type=int, default=None, help="default: from the checkpoint's head")
    p.add_argument("--gelu_approximate", type=_common.str2bool, default=False, help="as export.py")
    p.add_argument("--ema", type=_common.str2bool, default=False, help="quantize the EMA weights (ema.* keys)")
    p.add_argument("--overwrite", type=_common.str2bool, default=False,
                   help="replace an existing --output that quantize.py did not write (default False)")
    p.add_argument("--device_target", default="CPU", help="MindSpore device used to build the network")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.calib_images < 1:
        p.error("--batch_size and --calib_images must be >= 1")
    if args.layer_report is not None and args.layer_report < 0:
        p.error(f"--layer_report must be >= 0; got {args.layer_report}")
    if args.crop_pct is not None and not 0.0 < args.crop_pct <= 1.0:
        p.error(f"--crop_pct must be in (0, 1]; got {args.crop_pct}")
    if not os.path.isfile(args.ckpt_path):
        p.error(f"checkpoint not found: {args.ckpt_path!r}" if not os.path.exists(args.ckpt_path)
                else f"--ckpt_path {args.ckpt_path!r} is not a file")
    import importlib.util
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        p.error(f"needs {' and '.join(missing)}: pip install -e \".[onnx]\"")
    return args


def calibration_files(calib_dir: str, count: int):
    """`count` image files spread evenly over the sorted files under calib_dir (every class of an ImageFolder
    split is reached), each passing the image checker's quick check; raises ValueError (bad input) otherwise."""
    from mindcv_ext.data.imagecheck import find_images, quick_check

    if not os.path.isdir(calib_dir):
        raise ValueError(f"--calib_dir {calib_dir!r} " + ("is not a folder" if os.path.exists(calib_dir) else
                                                          "does not exist") + "; pass a folder of images such as "
                                                                              "my_data/train")
    files, _ = find_images(calib_dir, "--calib_dir")
    if not files:
        raise ValueError(f"--calib_dir {calib_dir!r} holds no image files (searched recursively); pass a folder of "
                         f"training images such as my_data/train")
    if len(files) < count:
        print(f"note: --calib_dir has {len(files)} images, fewer than --calib_images {count}: using all of them")
    picked = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(count, len(files)))]
    for path in picked:
        reason = quick_check(path)
        if reason:
            raise ValueError(f"--calib_dir: {printable(path)}: {reason}; remove it or check the folder with "
                             f"scripts/check_dataset.py")
    return picked


def preprocess(paths, image_size: int, crop_pct: float, interpolation: str, mean, std) -> np.ndarray:
    """validate.py's evaluation pixels for each file: the same transforms (eval_transforms), run eagerly."""
    from mindcv_ext.data.loaders import eval_transforms

    ops = eval_transforms(image_size, crop_pct, interpolation, mean, std)
    out = []
    for path in paths:
        with open(path, "rb") as f:
            x = np.frombuffer(f.read(), np.uint8).copy()
        try:
            for op in ops:
                x = op(x)
        except RuntimeError as e:
            raise ValueError(f"--calib_dir: {printable(path)} cannot be decoded "
                             f"({str(e).strip().splitlines()[0][:120]}); remove it") from None
        out.append(np.asarray(x, np.float32))
    return np.stack(out)


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over preprocessed images, in the file's static batch (the
    last batch filled up with the first images: a repeat moves no range)."""

    def __init__(self, name: str, images: np.ndarray, batch: int):
        self.name, self.images, self.batch, self.i = name, images, batch, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        part = self.images[self.i:self.i + self.batch]
        self.i += self.batch
        if len(part) < self.batch:
            part = np.concatenate([part, np.resize(self.images, (self.batch - len(part),) + self.images.shape[1:])])
        return {self.name: part}

    def rewind(self):
        self.i = 0


def weighted_layers(model):
    """[(node name, op, weight initializer, bytes)] of the Conv / MatMul / Gemm nodes with an initializer weight."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in inits:
            out.append((n.name, n.op_type, n.input[1], numpy_helper.to_array(inits[n.input[1]]).nbytes))
    return out


def parameter_bytes(model) -> dict:
    """Bytes of the weights and biases by how they are stored: int8 (quantized weights), int32 (quantized biases),
    float (everything else, scales and zero points included). Compared with the float file, int8 + int32 are the
    parameters that were quantized."""
    from onnx import numpy_helper

    out = {}
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        out[str(a.dtype)] = out.get(str(a.dtype), 0) + a.nbytes
    return out


def quantized_share(fp32_model, int8_model) -> float:
    """Share of the float file's parameter bytes whose tensor is stored as int8 in the INT8 file (the quantizer
    keeps a weight's name with a '_quantized' suffix; biases become int32 and do not count here)."""
    from onnx import TensorProto, numpy_helper

    int8 = {t.name for t in int8_model.graph.initializer if t.data_type == TensorProto.INT8}
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in fp32_model.graph.initializer
             if t.data_type == TensorProto.FLOAT}
    return sum(n for name, n in sizes.items() if name + "_quantized" in int8) / max(sum(sizes.values()), 1)


def quantize(fp32_path: str, out_path: str, images: np.ndarray, batch: int, method: str, keep_fp32,
             activations: str = "uint8"):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from mindcv_ext.onnx_runtime import OnnxNet

    name = OnnxNet(fp32_path).input_name
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    # ORT's quantizer logs "Please consider pre-processing before quantization" on the root logger for any graph it
    # did not optimize itself; export.py's file is already folded (no BN, plain initializers), so the advice misleads.
    quiet = _DropLogLine("consider to run pre-processing", "consider pre-processing")
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(fp32_path, out_path, _Reader(name, images, batch), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=list(keep_fp32),
                        calibrate_method=calib, extra_options=extra)
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropLogLine(logging.Filter):
    def __init__(self, *phrases):
        super().__init__()
        self.phrases = phrases

    def filter(self, record):
        return not any(p in str(record.msg) for p in self.phrases)


def agreement(fp32_path: str, int8_path: str, images: np.ndarray) -> dict:
    from mindcv_ext.onnx_runtime import OnnxNet

    a, b = OnnxNet(fp32_path)(images).astype(np.float64), OnnxNet(int8_path)(images).astype(np.float64)
    noise = ((a - b) ** 2).sum()
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_logit_diff": float(np.abs(a - b).max()), "max_logit": float(np.abs(a).max()),
            "logits_sqnr_db": float(10 * np.log10((a ** 2).sum() / noise)) if noise > 0 else float("inf")}


def main(argv=None) -> int:
    args = parse_args(argv)
    from mindcv_ext.checkpoint import CheckpointError, check_output_path, make_temp, remove_temp_files
    from mindcv_ext.config import KEYS

    crop_pct = args.crop_pct if args.crop_pct is not None else KEYS["crop_pct"][0]
    interpolation = (args.interpolation or KEYS["interpolation"][0]).lower()
    mean, std = list(KEYS["mean"][0]), list(KEYS["std"][0])
    try:  # everything that can be wrong with the command, before the long work
        out = check_output_path(args.output, suffixes=(".onnx",), tool=PROG, overwrite=args.overwrite)
        from mindcv_ext.data.loaders import check_interpolation
        check_interpolation(interpolation)
        files = calibration_files(args.calib_dir, args.calib_images)
    except (CheckpointError, ValueError) as e:
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return BAD_INPUT
    keep = [s.strip() for s in args.fp32_layers.split(",") if s.strip() and s.strip() != "none"]

    import export  # the deploy export, its checks and its metadata
    from types import SimpleNamespace

    from mindcv_ext.config import ConfigError
    from mindcv_ext.training.runtime import set_runtime

    eargs = SimpleNamespace(model=args.model, ckpt_path=args.ckpt_path, random_init=False, file_format="ONNX",
                            batch_size=args.batch_size, image_size=args.image_size, num_classes=args.num_classes,
                            gelu_approximate=args.gelu_approximate, ema=args.ema, check=True, tolerance=1e-4)
    try:
        import mindspore as ms
        set_runtime(SimpleNamespace(mode=ms.GRAPH_MODE, device_target=args.device_target, jit_level=None),
                    "Use --device_target CPU.")
        net, form, in_channels, info = export.build_deploy_net(eargs)
        if info["task"] != "classification":
            raise export.ExportError("segmentation checkpoints are not quantized by this tool (classification only)")
        x = export.random_batch(eargs, net, in_channels, info)
        images = preprocess(files, x.shape[-1], crop_pct, interpolation, mean, std)
    except (export.ExportError, ConfigError, CheckpointError, ValueError, OSError) as e:
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return BAD_INPUT

    directory = os.path.dirname(out)
    stale = remove_temp_files(directory, None)
    if stale:
        print(f"note: removed {len(stale)} temporary file(s) of killed runs")
    work = make_temp(out, directory=True)
    try:
        import onnx

        from mindcv_ext.onnx_runtime import set_metadata

        fp32 = os.path.join(work, "fp32.onnx")
        export.export(eargs, net, form, x, fp32, info, quiet=True, split_local=args.split_local)
        fp32_model = onnx.load(fp32)
        layers = weighted_layers(fp32_model)
        names = {n for n, *_ in layers}
        stem = stem_layer(fp32_model)
        keep = [stem if k == "stem" else k for k in keep]
        unknown = [k for k in keep if not fnmatch.filter(names, k)]
        if unknown:
            raise QuantizeError(f"--fp32_layers: no layer matches {unknown[0]!r}; layers: {', '.join(sorted(names))}")
        keep = sorted({n for k in keep for n in fnmatch.filter(names, k)})
        taps = sorted(n for n in names if n.endswith(LOCAL))  # float always: see report_float_layers
        start = time.perf_counter()
        print(f"calibrating on {len(images)} images of {args.calib_dir} ({args.calib_method}), batch {args.batch_size}"
              f"...", flush=True)
        staged = os.path.join(work, "int8.onnx")
        quantize(fp32, staged, images, args.batch_size, args.calib_method, keep + taps, args.activations)
        model = onnx.load(staged)
        share = quantized_share(fp32_model, model)
        stayed = report_float_layers(fp32_model, model, keep)
        meta = {p.key: p.value for p in fp32_model.metadata_props if p.key != "written_by"}
        meta.update(precision="int8", quantization=json.dumps({
            "format": "QDQ", "weights": "int8 per output channel (symmetric)", "activations": f"{args.activations} per tensor",
            "calib_method": args.calib_method, "calib_images": len(images), "calib_dir": os.path.abspath(args.calib_dir),
            "fp32_layers": stayed, "split_local": args.split_local, "quantized_parameter_share": round(share, 4)}))
        set_metadata(model, meta, tool=PROG)
        onnx.save(model, staged)
        agree = agreement(fp32, staged, images)
        size32, size8 = os.path.getsize(fp32), os.path.getsize(staged)
        print(f"INT8 vs float on the calibration images: top-1 agreement {100 * agree['top1_agreement']:.2f}%, "
              f"max |logit diff| {agree['max_logit_diff']:.3g} (max |logit| {agree['max_logit']:.3g}); "
              f"{time.perf_counter() - start:.0f} s")
        low = agree["top1_agreement"] < 0.99
        top = args.layer_report if args.layer_report is not None else (5 if low else 0)
        if low:  # the file is still written: the user decides, with the numbers
            print(f"warning: INT8 changes the top-1 class of {100 * (1 - agree['top1_agreement']):.1f}% of the "
                  f"calibration images; validate both files on held-out data (validate.py --ckpt_path <file>) and "
                  f"keep sensitive layers in float with --fp32_layers ("
                  + ("the layers with the largest error are listed below; " if top else "")
                  + "what each layer group costs on t224: docs/performance.md, INT8 section)")
        print(f"parameters stored as int8: {100 * share:.1f}% of the float file's parameter bytes; file "
              f"{size8 / 2**20:.1f} MiB ({size8 / size32:.2f}x the float file's {size32 / 2**20:.1f} MiB)")
        os.chmod(staged, 0o666 & ~_umask())
        os.replace(staged, out)
        if top:
            try:  # 8 images (or one batch) hold millions of values per tensor: enough for a dB
                rows, skipped = layer_errors(fp32, out, images[:max(8, args.batch_size)], args.batch_size)
            except Exception as e:  # noqa: BLE001  a diagnostic: it never costs the file just written
                why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                print(f"note: no layer report ({printable(why)}); the INT8 file is written")
            else:
                report_layer_errors(rows, top, keep, agree["logits_sqnr_db"], skipped)
    except (export.ExportError, QuantizeError, OSError) as e:
        print(f"{PROG}: error: {printable(e)}; nothing written", file=sys.stderr)
        return FAILED
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}: {info['model']} INT8 (QDQ), input ({', '.join(map(str, x.shape))}) float32 -> logits. "
          f"Evaluate: python validate.py --ckpt_path {out} --data_dir <data>")
    return OK


def layer_errors(fp32_path: str, int8_path: str, images: np.ndarray, batch: int) -> tuple:
    """Layer-wise INT8 error: ([(layer, op, weight bytes, SQNR dB)] of every int8 Conv / MatMul / Gemm, lowest SQNR
    first; how many int8 layers could not be matched with the float model's). Each layer runs alone in its INT8
    form (input, weight, bias and output rounded with the INT8 file's own scales) on the float model's input to
    it, against its float output (inf: no difference). So a layer is judged by the error it makes itself, not by
    the noise earlier layers hand it. One run of the float model with a rounded copy of every int8 layer beside
    it, QDQ emulated in float (as ONNX Runtime's qdq_loss_debug does)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    fmodel, qmodel = onnx.load(fp32_path), onnx.load(int8_path)
    sizes = {name: (op, nbytes) for name, op, _, nbytes in weighted_layers(fmodel)}  # before the copies join it
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    consumers = {}
    for n in qmodel.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    qinits = {t.name: t for t in qmodel.graph.initializer}
    float_nodes = {n.name: n for n in fmodel.graph.node}
    float_tensors = {o for n in fmodel.graph.node for o in n.output} | {t.name for t in fmodel.graph.initializer} | \
        {i.name for i in fmodel.graph.input}
    added, extra_inits, pairs, skipped = {}, {}, [], 0

    def copy(node, inputs, k):
        """A copy of an INT8-file node reading `inputs`, for the k-th layer only, its output renamed; returns that
        name. Per layer: where int8 layer A feeds int8 layer B, the rounding of A's output is the rounding of B's
        input, and B's copy must read it from the float tensor, not from A's copy."""
        for name in inputs:
            if name in qinits and name not in float_tensors:
                extra_inits[name] = qinits[name]
        out = f"{node.output[0]}__alone{k}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        added[out] = helper.make_node(node.op_type, list(inputs), [out], name=f"{node.name}__alone{k}", **attrs)
        return out

    for node in qmodel.graph.node:
        dq_w = producer.get(node.input[1]) if node.op_type in QUANTIZED_OPS and len(node.input) > 1 else None
        if dq_w is None or dq_w.op_type != "DequantizeLinear":
            continue  # not an int8 layer: its weight is float
        if node.name not in float_nodes:
            skipped += 1
            continue
        sources = []  # per input: (dq, q) for a rounded activation, (dq, None) a rounded constant, (None, None) as is
        for name in node.input:
            dq = producer.get(name)
            dq = dq if dq is not None and dq.op_type == "DequantizeLinear" else None
            q = producer.get(dq.input[0]) if dq is not None else None
            sources.append((dq, q if q is not None and q.op_type == "QuantizeLinear" else None))
        reads = [q.input[0] if q is not None else None if dq is not None else name
                 for name, (dq, q) in zip(node.input, sources)]
        if not all(r is None or r in float_tensors for r in reads):
            skipped += 1  # reads a tensor the float model does not have under that name
            continue
        k = len(pairs)
        inputs = [copy(dq, [copy(q, q.input, k)] + list(dq.input[1:]), k) if q is not None else
                  copy(dq, dq.input, k) if dq is not None else name for name, (dq, q) in zip(node.input, sources)]
        out = copy(node, inputs, k)
        q_out = [c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"]
        if q_out:  # the output is rounded too before the next layer reads it
            dq_out = [c for c in consumers.get(q_out[0].output[0], []) if c.op_type == "DequantizeLinear"]
            out = copy(q_out[0], [out] + list(q_out[0].input[1:]), k)
            if dq_out:
                out = copy(dq_out[0], [out] + list(dq_out[0].input[1:]), k)
        pairs.append((node.name, float_nodes[node.name].output[0], out))
    graph = fmodel.graph
    graph.node.extend(added.values())
    graph.initializer.extend(extra_inits.values())
    present = {o.name for o in graph.output}
    for _, ref, out in pairs:
        for name in (ref, out):
            if name not in present:
                graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
                present.add(name)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ as written, not fused
    sess = ort.InferenceSession(fmodel.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    reader = _Reader(sess.get_inputs()[0].name, images, batch)
    signal, noise = np.zeros(len(pairs)), np.zeros(len(pairs))
    for feed in iter(reader.get_next, None):
        got = dict(zip(names, sess.run(None, feed)))
        for k, (_, ref, out) in enumerate(pairs):
            a, b = got[ref].astype(np.float64), got[out].astype(np.float64)
            signal[k] += (a ** 2).sum()
            noise[k] += ((a - b) ** 2).sum()
    db = [float("inf") if n == 0 else float("-inf") if s == 0 else 10 * np.log10(s / n) for s, n in zip(signal, noise)]
    rows = [(name,) + sizes[name] + (db[k],) for k, (name, _, _) in enumerate(pairs)]
    return sorted(rows, key=lambda row: row[3]), skipped


def report_layer_errors(rows, top: int, keep, logits_db: float, skipped: int = 0) -> None:
    """Print the `top` worst layers of layer_errors' list and the --fp32_layers value that keeps them in float."""
    if skipped:
        print(f"layer report: {skipped} int8 layer(s) could not be matched with the float model's and are not listed")
    if not rows:
        return
    print(f"layer by layer (each int8 layer alone, on the float model's input; {len(rows)} int8 layers, the whole "
          f"INT8 model's logits at {logits_db:.1f} dB against float), the {min(top, len(rows))} with the largest "
          f"error:")
    for name, op, nbytes, db in rows[:top]:
        print(f"  {printable(name)} ({op}, {nbytes / 2**10:.{0 if nbytes >= 10 * 2**10 else 1}f} KiB float): "
              f"{db:.1f} dB")
    names = list(keep) + [r[0] for r in rows[:top]]
    print(f"to keep them in float: --fp32_layers '{printable(','.join(names))}' (then compare on held-out images: "
          f"docs/performance.md, INT8 section, has what keeping layers in float did on t224)")


def stem_layer(model) -> str:
    """The weighted node that reads the graph input (the patch-embedding conv)."""
    first = model.graph.input[0].name
    return next((n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.input[0] == first), "")


def report_float_layers(fp32_model, int8_model, keep) -> list:
    """Print each weighted layer that is not int8 in the result, with why; returns their names."""
    from onnx import numpy_helper

    inits = {t.name: t for t in int8_model.graph.initializer}
    stayed, taps = [], []
    for name, op, weight, nbytes in weighted_layers(fp32_model):
        t = inits.get(weight)
        if t is not None and t.data_type == 1 and name.endswith(LOCAL) and name not in keep:
            taps.append((name, nbytes))
        elif t is not None and t.data_type == 1:  # the weight is still float here: not quantized
            why = ("the stem, reading the raw pixels: in int8 it cost the demo model 0.6 top-1 point and 0.6% of "
                   "its predictions, in float 0.2 and 0.2% (docs/performance.md); --fp32_layers none quantizes it"
                   if name == stem_layer(fp32_model) and name in keep else
                   "kept by --fp32_layers" if name in keep else "left float by the quantizer")
            stayed.append(name)
            print(f"float: {name} ({op}, {nbytes / 2**10:.0f} KiB): {why}")
    if taps:
        # 9 weights per channel: int8 would save nothing, and its requantized output cost ~10% of a t224 INT8 run
        size = sum(b for _, b in taps) / 2**10
        print(f"float: the {len(taps)} fc3 conv-tap convs (*{LOCAL}, 3x3 depthwise, {size:.0f} KiB in all): a "
              f"negligible share of the bytes, and float keeps the INT8 run faster (docs/performance.md)")
        stayed += [n for n, _ in taps]
    total = len(weighted_layers(fp32_model))
    print(f"int8: {total - len(stayed)} of {total} Conv / MatMul / Gemm weights; float also: GELU, the perceptron "
          f"gates, the prebn1 scale/shift and the residual adds (element-wise, no weights to quantize)")
    return stayed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    run_tool(main, PROG)
