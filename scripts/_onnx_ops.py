"""The deploy ONNX file: what export.py does to a network before MindSpore's ONNX exporter writes it, and to the
file after, so that ONNX Runtime and its quantizer see a plain graph.

MindSpore 2.10 writes opset 11, with every weight reshaped at run time (the quantizer does not see a weight behind
a Reshape), BatchNormalization nodes it cannot fold, and no Erf. So:
- before (prepare_for_onnx, on the MindSpore network, exact arithmetic up to fp32 rounding): every BN is folded into
  the conv or dense next to it (ConvBN, prebn2 into ffn_fc1, head_norm into the classifier); prebn1, which feeds
  fc3 and the perceptron, becomes one per-channel Mul + Add; patch convs become strided Convs; GELUs become a
  marker op (Softsign exact, Softplus tanh) that nothing else in these models uses;
- after (finish_onnx, on the file): opset 20, the markers replaced by one ONNX Gelu node each (exact or tanh; see
  _gelu_node for why not the erf formula at opset 17), constants folded by ORT's basic level (every weight an
  initializer feeding its MatMul / Gemm / Conv directly), the perceptron's ones-vector MatMul turned back into the
  ReduceMean it computes, and the weighted nodes named after their layers (stages.0.0.repmlp_block.fc3, ...).
"""
import math
import os
import re
from collections import Counter

import numpy as np
from mindspore import ops as ms_ops  # export_resize is compiled into the graph: no import inside it

OPSET = 20  # ONNX Gelu; ONNX Runtime >= 1.17
_MARKERS = {"Softsign": "erf", "Softplus": "tanh"}
WEIGHTED = ("Conv", "MatMul", "Gemm")


# ------------------------------------------------------------------------------------- before the exporter

def _bn_affine(bn):
    """(scale, shift) float64 of an inference-mode BatchNorm2d: bn(x) = scale * x + shift per channel."""
    var = bn.moving_variance.asnumpy().astype(np.float64)
    scale = bn.gamma.asnumpy().astype(np.float64) / np.sqrt(var + bn.eps)
    return scale, bn.beta.asnumpy().astype(np.float64) - bn.moving_mean.asnumpy().astype(np.float64) * scale


def _conv(weight, bias, stride, padding, name):
    """A plain nn.Conv2d with bias holding float64 arrays (as float32), parameters named `name`.weight/.bias."""
    import mindspore as ms
    from mindspore import Parameter, nn

    o, i, k, _ = weight.shape
    conv = nn.Conv2d(i, o, k, stride=stride, pad_mode="pad" if padding else "valid", padding=padding,
                     has_bias=True)
    conv.weight = Parameter(ms.Tensor(weight.astype(np.float32)), name=name + ".weight")
    conv.bias = Parameter(ms.Tensor(bias.astype(np.float32)), name=name + ".bias")
    return conv


def _conv_geometry(conv):
    """(weight float64, bias float64, stride, padding) of a PatchConv, the seg Conv2d or an nn.Conv2d."""
    from mindcv_ext.models.repmlp import PatchConv

    w = conv.weight.asnumpy().astype(np.float64)
    b = conv.bias.asnumpy().astype(np.float64) if getattr(conv, "bias", None) is not None else np.zeros(w.shape[0])
    if isinstance(conv, PatchConv):
        return w, b, conv.k, 0
    if getattr(conv, "group", 1) != 1 or conv.pad_mode not in ("pad", "valid") or conv.dilation not in (1, (1, 1, 1, 1), (1, 1)):
        raise ValueError(f"cannot fold a BN into {type(conv).__name__} (group/dilation/pad_mode)")
    stride = conv.stride if isinstance(conv.stride, int) else conv.stride[-1]
    padding = conv.padding if isinstance(conv.padding, int) else conv.padding[0]
    return w, b, stride, padding if conv.pad_mode == "pad" else 0


class _Affine:
    """Built lazily (mindspore imported on use): x * scale + shift per channel, the prebn1 that cannot be folded."""

    @staticmethod
    def make(scale, shift, name):
        import mindspore as ms
        from mindspore import Parameter, nn

        class Affine(nn.Cell):
            def __init__(self):
                super().__init__()
                self.scale = Parameter(ms.Tensor(scale.reshape(-1, 1, 1).astype(np.float32)), name=name + ".scale")
                self.shift = Parameter(ms.Tensor(shift.reshape(-1, 1, 1).astype(np.float32)), name=name + ".shift")

            def construct(self, x):
                return x * self.scale + self.shift

        return Affine()


def _marker(op_name: str):
    """A cell exported as the single ONNX op `op_name` (Softsign / Softplus), which finish_onnx replaces by a GELU
    formula; nothing else in these models uses those ops."""
    from mindspore import nn, ops

    class GELUMarker(nn.Cell):
        def __init__(self):
            super().__init__()
            self.op = getattr(ops, op_name)()

        def construct(self, x):
            return self.op(x)

    return GELUMarker()


def _pool_matrix(n: int, s: int) -> np.ndarray:
    """(s, n): adaptive average pooling of n values into s bins (PyTorch's / MindSpore's bin edges)."""
    m = np.zeros((s, n), np.float64)
    for i in range(s):
        a, b = (i * n) // s, -((-(i + 1) * n) // s)
        m[i, a:b] = 1.0 / (b - a)
    return m


def _adaptive_pool(h: int, w: int, s: int):
    """nn.AdaptiveAvgPool2d(s) on (h, w) maps, which the exporter cannot write, as two constant matmuls."""
    import mindspore as ms
    from mindspore import nn, ops

    class AdaptivePool(nn.Cell):
        def __init__(self):
            super().__init__()
            self.ph = ms.Tensor(_pool_matrix(h, s).astype(np.float32))
            self.pwt = ms.Tensor(_pool_matrix(w, s).T.astype(np.float32).copy())

        def construct(self, x):
            return ops.matmul(ops.matmul(self.ph, x), self.pwt)

    return AdaptivePool()


def export_resize(x, size, mode="bilinear"):
    """seg.model.resize for the exporter, which cannot write ResizeBilinearV2 / ResizeNearestNeighborV2: nearest as
    ResizeNearestNeighbor (ONNX Resize, asymmetric / floor: the same pixels), bilinear as a marker (the same op
    with align_corners, which the models never use) that finish_onnx turns into Resize linear / half_pixel."""
    return ms_ops.ResizeNearestNeighbor(tuple(size), align_corners=(mode == "bilinear"))(x)


def prepare_for_onnx(net, input_shape=None, split_local=False) -> Counter:
    """Rewrite an eval-mode deploy-form RepMLPNet or SegModel in place into the form finish_onnx expects (module
    docstring). Returns counts of what was changed. The network computes the same function except the GELUs and
    bilinear resizes, which become markers: take reference logits before calling this. input_shape (N, C, H, W)
    is needed for a SegModel's pyramid pooling (static bins). split_local (for INT8, quantize.py): each fc3 as a
    dense FC plus its conv taps as a small conv beside it (RepMLPBlock.split_local: no outliers left to quantize)."""
    from mindspore import nn

    from mindcv_ext.models.repmlp import PartitionFC, PatchConv, RepMLPBlock, RepMLPNet, RepMLPNetUnit

    done = Counter()
    if split_local:
        for _, cell in list(net.cells_and_names()):
            if isinstance(cell, RepMLPBlock) and cell.reparam_conv_k:
                cell.split_local()
                done["fc3 conv taps split off"] += 1
    for path, cell in list(net.cells_and_names()):
        pools = getattr(cell, "pools", None)
        if pools is not None and input_shape is not None:
            stride = net.encoder.feature_info[-1]["reduction"]
            h, w = input_shape[2] // stride, input_shape[3] // stride
            sizes = [p.adaptive_avgpool2d.output_size for p in pools]
            sizes = [v if isinstance(v, int) else v[0] for v in sizes]
            cell.pools = nn.CellList([_adaptive_pool(h, w, v) for v in sizes])
            done["adaptive pools as matmuls"] += len(pools)
    cells = list(net.cells_and_names())
    for path, cell in cells:
        prefix = path + "." if path else ""
        if isinstance(cell, PartitionFC):
            cell.split_sets = False  # multi-output Split is written with dangling inputs
        if hasattr(cell, "im2col"):
            cell.im2col = False  # Im2Col cannot be written (PatchConv, the seg heads' 3x3 Conv2d)
        conv, bn = getattr(cell, "conv", None), getattr(cell, "bn", None)
        if isinstance(bn, nn.BatchNorm2d) and conv is not None and hasattr(conv, "weight"):
            w, b, stride, padding = _conv_geometry(conv)
            scale, shift = _bn_affine(bn)
            cell.conv = _conv(w * scale[:, None, None, None], b * scale + shift, stride, padding, prefix + "conv")
            cell.bn = nn.Identity()
            done["conv+BN folded"] += 1
        elif isinstance(conv, PatchConv):
            w, b, stride, _ = _conv_geometry(conv)
            cell.conv = _conv(w, b, stride, 0, prefix + "conv")
        for name, child in list(cell.name_cells().items()):
            if isinstance(child, nn.GELU):
                exact = child.approximate in ("none", False)
                setattr(cell, name, _marker("Softsign" if exact else "Softplus"))
                done["GELU"] += 1
    for path, cell in cells:
        prefix = path + "." if path else ""
        if isinstance(cell, RepMLPNetUnit):
            # prebn2 feeds only ffn_fc1, a 1x1 conv (folded above): conv(s x + t) = (W s) x + W t + b.
            fc1 = cell.ffn_block.ffn_fc1
            scale, shift = _bn_affine(cell.prebn2)
            w, b, stride, padding = _conv_geometry(fc1.conv)
            assert w.shape[2:] == (1, 1) and padding == 0, "prebn2 folds into a 1x1 conv only"
            fc1.conv = _conv(w * scale[None, :, None, None], b + w[:, :, 0, 0] @ shift, stride, 0,
                             prefix + "ffn_block.ffn_fc1.conv")
            cell.prebn2 = nn.Identity()
            # prebn1 feeds fc3 (shared weights across the channels of a set) and the perceptron: no fold.
            cell.prebn1 = _Affine.make(*_bn_affine(cell.prebn1), prefix + "prebn1")
            done["BN folded"] += 1
            done["BN as Mul+Add"] += 1
        if isinstance(cell, RepMLPNet) and not cell.features_only:
            # head_norm, then a mean over pixels (linear), then the classifier: fold into the classifier.
            scale, shift = _bn_affine(cell.head_norm)
            w = cell.head.weight.asnumpy().astype(np.float64)
            b = cell.head.bias.asnumpy().astype(np.float64)
            import mindspore as ms
            from mindspore import Parameter
            cell.head.weight = Parameter(ms.Tensor((w * scale[None, :]).astype(np.float32)), name=prefix + "head.weight")
            cell.head.bias = Parameter(ms.Tensor((b + w @ shift).astype(np.float32)), name=prefix + "head.bias")
            cell.head_norm = nn.Identity()
            done["BN folded"] += 1
    for name, param in net.parameters_and_names():  # cells set as attributes renamed theirs; export needs unique
        param.name = name
    left = [p for p, c in net.cells_and_names() if isinstance(c, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"BatchNorm layers the ONNX export cannot fold: {', '.join(left[:5])}")
    return done


# ---------------------------------------------------------------------------------------- after the exporter

def _gelu_node(x, y, kind):
    """ONNX Gelu (opset 20), exact or tanh. One node, not the erf formula: ORT fuses the formula into its Gelu
    kernel in a float graph, but in a QDQ graph each consumer gets its own DequantizeLinear, the formula's two
    readers of x no longer share it, and the fusion fails (measured: the unfused formula took a third of an INT8
    t224 run)."""
    from onnx import helper

    return helper.make_node("Gelu", [x], [y], approximate="none" if kind == "erf" else "tanh")


def _replace_markers(model) -> int:
    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        kind = _MARKERS.get(node.op_type)
        if kind:
            count += 1
            nodes.append(_gelu_node(node.input[0], node.output[0], kind))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _fix_resizes(model) -> int:
    """export_resize's marker (Resize nearest, align_corners) -> bilinear with half-pixel centres, what
    ops.interpolate(mode='bilinear', align_corners=False) computes."""
    from onnx import helper

    count = 0
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("coordinate_transformation_mode") == b"align_corners" and attrs.get("mode", b"nearest") == b"nearest":
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("mode", "linear"),
                                   helper.make_attribute("coordinate_transformation_mode", "half_pixel")])
            count += 1
    return count


def _ort_fold(src: str, dst: str) -> None:
    """ORT's basic level (constant folding, Conv+BN/Mul/Add fusion, MatMul+Add -> Gemm): standard ONNX ops only."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = dst
    so.log_severity_level = 3
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _layer_name(tensor_name: str) -> str:
    """'stages.0.0.ffn_block.ffn_fc1.conv.weight' or MindSpore's scope
    '18-Default/stages-CellList/0-CellList/0-RepMLPNetUnit/repmlp_block-RepMLPBlock/fc3-PartitionFC/Reshape-op1'
    -> 'stages.0.0.ffn_block.ffn_fc1.conv' / 'stages.0.0.repmlp_block.fc3'."""
    if "/" not in tensor_name:
        return re.sub(r"\.(weight|bias)$", "", tensor_name)
    parts = tensor_name.split("/")[1:-1]  # drop '<n>-Default' and the op
    return ".".join(p.rsplit("-", 1)[0] for p in parts) or tensor_name


def _with_constant(graph, op_type: str):
    """(node, its second input's value, the nodes reading its output, the initializers) for every `op_type` node
    whose second input is an initializer; a snapshot, so callers may edit the graph."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    users = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for node in list(graph.node):
        if node.op_type == op_type and len(node.input) > 1 and node.input[1] in inits:
            yield node, numpy_helper.to_array(inits[node.input[1]]), users.get(node.output[0], []), inits


def _mean_as_reduce(model) -> int:
    """spatial_mean's MatMul(x, ones (K, 1)) * (1/K) -> ReduceMean(x, axis -1): a mean, not a weight to quantize."""
    from onnx import helper, numpy_helper

    graph = model.graph
    count = 0
    for node, ones, after, inits in _with_constant(graph, "MatMul"):
        if ones.ndim != 2 or ones.shape[1] != 1 or not np.all(ones == 1) or len(after) != 1:
            continue
        mul = after[0]
        other = [i for i in mul.input if i != node.output[0]]
        if mul.op_type != "Mul" or len(other) != 1 or other[0] not in inits:
            continue
        k = numpy_helper.to_array(inits[other[0]])
        if k.size != 1 or not np.isclose(float(k), 1.0 / ones.shape[0], rtol=1e-6):
            continue
        idx = list(graph.node).index(mul)
        axes = f"{mul.output[0]}/axes"  # an input since opset 18
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
        graph.node.insert(idx, helper.make_node("ReduceMean", [node.input[0], axes], [mul.output[0]], keepdims=1,
                                                name=node.name or f"mean{count}"))
        graph.node.remove(mul)
        graph.node.remove(node)
        count += 1
    return count


def _drop_expands(model) -> int:
    """Mul(x, Expand(gate, shape of x)) -> Mul(x, gate): the model broadcasts the perceptron's gate explicitly for
    MindSpore's CPU memory reuse; in ORT the Expand only materialises a feature-map-sized copy."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input})
    count = 0
    for node, target, after, _ in _with_constant(graph, "Expand"):
        target = [int(v) for v in target]
        if not after or node.output[0] in {o.name for o in graph.output}:
            continue
        ok = all(u.op_type in ("Mul", "Add") and len(u.input) == 2
                 and shapes.get(next(i for i in u.input if i != node.output[0]), None) == target for u in after)
        if not ok:
            continue
        for u in after:
            for k, i in enumerate(u.input):
                if i == node.output[0]:
                    u.input[k] = node.input[0]
        graph.node.remove(node)
        count += 1
    return count


def _sets_as_grouped_conv(model) -> int:
    """fc3 with S > 1 sets, Transpose -> MatMul(rows, W (S, K, N)) -> Transpose, as one grouped 1x1 Conv over the
    rows laid out as (1, S*K, M, 1): the same products (W[s] is conv group s), but a weight ORT's quantizer takes
    per output channel (of a batched MatMul weight it would take axis 1, the input rows) and that ORT runs as
    QLinearConv instead of dequantizing the weight in every run (faster INT8, float the same: docs/performance.md)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    made = {o: n for n in graph.node for o in n.output}
    count = 0
    for mm, w, after, _ in _with_constant(graph, "MatMul"):
        first = made.get(mm.input[0])
        if w.ndim != 3 or first is None or first.op_type != "Transpose" or len(after) != 1:
            continue
        last = after[0]
        perm = lambda n: list(helper.get_attribute_value(n.attribute[0])) if n.attribute else None  # noqa: E731
        if last.op_type != "Transpose" or perm(first) != [1, 0, 2] or perm(last) != [1, 0, 2]:
            continue
        s, k, n = w.shape
        name = mm.name or mm.output[0]

        def const(suffix, value, dtype=np.int64):
            graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), f"{name}.{suffix}"))
            return f"{name}.{suffix}"
        weight = const("weight", w.transpose(0, 2, 1).reshape(s * n, k, 1, 1), np.float32)
        t = f"{name}/gconv"
        nodes = [helper.make_node("Reshape", [first.input[0], const("rows", [-1, s * k])], [t + "0"]),
                 helper.make_node("Transpose", [t + "0"], [t + "1"], perm=[1, 0]),
                 helper.make_node("Reshape", [t + "1", const("image", [1, s * k, -1, 1])], [t + "2"]),
                 helper.make_node("Conv", [t + "2", weight], [t + "3"], group=s, kernel_shape=[1, 1], name=name),
                 helper.make_node("Reshape", [t + "3", const("cols", [s * n, -1])], [t + "4"]),
                 helper.make_node("Transpose", [t + "4"], [t + "5"], perm=[1, 0]),
                 helper.make_node("Reshape", [t + "5", const("sets", [-1, s, n])], [last.output[0]])]
        at = list(graph.node).index(first)
        for old in (first, mm, last):
            graph.node.remove(old)
        for i, node in enumerate(nodes):
            graph.node.insert(at + i, node)
        count += 1
    return count


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _name_layers(model) -> None:
    inits = {i.name for i in model.graph.initializer}
    seen = Counter()
    for node in model.graph.node:
        if node.op_type in WEIGHTED and len(node.input) > 1 and node.input[1] in inits:
            name = _layer_name(node.input[1])
            seen[name] += 1
            node.name = name if seen[name] == 1 else f"{name}#{seen[name]}"


def graph_stats(model) -> dict:
    """What a test or the user wants to know about a file: op counts, initializer bytes, weights that do not
    reach a weighted node as initializers."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    ops = Counter(n.op_type for n in model.graph.node)
    # A weight reaches its node directly (an initializer input); a constant on the left of a MatMul (the seg
    # head's pooling matrices) counts too. Both inputs computed means a weight behind a Reshape or the like.
    indirect = [n.name or n.output[0] for n in model.graph.node
                if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] not in inits
                and not (n.op_type == "MatMul" and n.input[0] in inits)]
    sizes = {name: numpy_helper.to_array(t).nbytes for name, t in inits.items()}
    return {"ops": dict(ops), "initializer_bytes": sum(sizes.values()),
            "largest_initializer": max(sizes.values(), default=0), "weights_not_initializers": indirect,
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)}


def finish_onnx(src: str, dst: str, workdir: str) -> dict:
    """MindSpore's opset-11 file `src` (of a prepare_for_onnx network) -> the deploy file `dst` (module
    docstring). Returns graph_stats of the result; raises ValueError if something the plan needs is missing."""
    import onnx
    from onnx import version_converter

    model = onnx.load(src)
    model = version_converter.convert_version(model, OPSET)
    gelus = _replace_markers(model)
    resizes = _fix_resizes(model)
    staged = os.path.join(workdir, "staged.onnx")
    onnx.save(model, staged)
    folded = os.path.join(workdir, "folded.onnx")
    _ort_fold(staged, folded)
    model = onnx.load(folded)
    means = _mean_as_reduce(model)
    expands = _drop_expands(model)
    _name_layers(model)
    grouped = _sets_as_grouped_conv(model)
    _drop_unused_initializers(model)
    del model.graph.value_info[:]  # stale shapes from before the folding; ORT infers its own
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    stats = graph_stats(model)
    stats.update(gelus=gelus, means=means, expands_removed=expands, bilinear_resizes=resizes,
                 sets_as_grouped_conv=grouped)
    if stats["weights_not_initializers"]:
        raise ValueError(f"weights that do not reach their node as initializers: {stats['weights_not_initializers'][:3]}")
    leftover = {op: stats["ops"][op] for op in ("BatchNormalization", "Softsign", "Softplus", "Where", "Abs", "Exp")
                if op in stats["ops"]}
    if leftover:
        raise ValueError(f"unexpected ops left in the deploy graph: {leftover}")
    return stats
