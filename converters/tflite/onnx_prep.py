"""Load an ONNX model and bring it to a static, constant-folded graph ready for translation.

What it does: fixes symbolic input dimensions (batch -> 1, others from ``input_shapes``), turns
``Constant`` nodes and initializers into numpy constants, folds every node whose inputs are all
constant (and ``Shape``/``Size`` of statically shaped tensors) with ``onnx.reference``, runs onnx
shape inference until nothing changes, folds ``BatchNormalization`` into a preceding ``Conv``,
fuses decomposed hard-swish chains (:mod:`.onnx_fuse`), rewrites 1-D convolutions and pools as
2-D ones, and records the static shape and dtype of every value it can.

What it does not do: translate anything to TFLite, handle control flow (``If``/``Loop`` stay as
nodes and are reported unsupported later); values whose shape stays unknown are left for the
translator to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.errors import ModelError, UsageError

from .onnx_fuse import fuse_hard_swish

_FOLD_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "If", "Loop", "Scan"}


@dataclass
class Graph:
    nodes: list                                   # onnx NodeProto, topologically ordered
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    inputs: list[str]
    outputs: list[str]
    opset: int
    consumers: dict[str, int] = field(default_factory=dict)

    def count_consumers(self) -> None:
        self.consumers = {}
        for n in self.nodes:
            for name in n.input:
                if name:
                    self.consumers[name] = self.consumers.get(name, 0) + 1


def load(path: str | Path, input_shapes: dict[str, list[int]] | None = None) -> Graph:
    import onnx

    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise UsageError(f"ONNX model not found: {path}") from None
    except Exception as exc:  # protobuf decode errors and the like
        raise ModelError(f"cannot read ONNX model {path}: {exc}") from None
    return prepare(model, input_shapes)


def prepare(model, input_shapes: dict[str, list[int]] | None = None) -> Graph:
    """The static graph of an in-memory ModelProto (modified in place: input shapes are fixed)."""
    from onnx import numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    _fix_input_shapes(inputs, input_shapes or {})
    nodes = list(g.node)
    outputs = [o.name for o in g.output]
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, np.dtype] = {}
    for _ in range(50):
        shapes, dtypes = _infer(model, inputs, nodes, consts)
        nodes, changed = _fold(nodes, consts, shapes, opset)
        if not changed:
            break
    nodes = _fold_batchnorm(nodes, consts, outputs)
    nodes = fuse_hard_swish(nodes, consts, outputs)
    lifted = _lift_1d(nodes, consts, shapes)
    if lifted is not nodes:
        nodes = lifted
        shapes, dtypes = _infer(model, inputs, nodes, consts)
    graph = Graph(nodes, consts, shapes, dtypes, [i.name for i in inputs], outputs, opset)
    for name, arr in consts.items():
        graph.shapes[name] = tuple(arr.shape)
        graph.dtypes[name] = arr.dtype
    graph.count_consumers()
    return graph


def _fix_input_shapes(inputs, given: dict[str, list[int]]) -> None:
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        want = given.get(inp.name)
        if want is not None:
            if len(want) != len(dims):
                raise UsageError(f"input {inp.name!r} has rank {len(dims)}, input_shapes gives {want}")
            for d, v in zip(dims, want):
                d.Clear()
                d.dim_value = int(v)
            continue
        for k, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if k == 0:
                d.Clear()
                d.dim_value = 1
            else:
                raise UsageError(f"input {inp.name!r} has a symbolic dimension {k} "
                                 f"({d.dim_param or '?'}); give a static shape",
                                 hint=f"Pass input_shapes={{'{inp.name}': [1, ...]}}.")


def _infer(model, inputs, nodes, consts):
    """Static shapes and dtypes of all values, by onnx shape inference on the current graph."""
    import onnx
    from onnx import helper, numpy_helper

    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None)
               for o in model.graph.output]
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in consts.items() if k in used])
    m = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelError(f"onnx shape inference failed: {exc}") from None
    shapes, dtypes = {}, {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[vi.name] = tuple(dims)
            dtypes[vi.name] = helper.tensor_dtype_to_np_dtype(tt.elem_type)
    return shapes, dtypes


def _fold(nodes, consts, shapes, opset):
    """Evaluate nodes whose inputs are known; returns (remaining nodes, whether anything folded)."""
    from onnx import numpy_helper
    from onnx.helper import get_attribute_value

    remaining, changed = [], False
    for n in nodes:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            attr = n.attribute[0]
            val = get_attribute_value(attr)
            consts[n.output[0]] = (numpy_helper.to_array(val) if attr.name == "value"
                                   else np.asarray(val, dtype=np.float32 if "float" in attr.name else np.int64))
            changed = True
            continue
        if n.op_type in ("Shape", "Size") and n.input[0] in shapes and n.input[0] not in consts:
            shape = np.array(shapes[n.input[0]], dtype=np.int64)
            if n.op_type == "Size":
                consts[n.output[0]] = np.array(int(np.prod(shape)), dtype=np.int64)
            else:
                start = _attr(n, "start", 0)
                end = _attr(n, "end", len(shape))
                consts[n.output[0]] = shape[start:end]
            changed = True
            continue
        ins = [i for i in n.input if i]
        if (n.domain in ("", "ai.onnx") and n.op_type not in _FOLD_NEVER and n.output
                and all(i in consts for i in ins) and ins):
            outs = _evaluate(n, consts, opset)
            if outs is not None:
                consts.update(outs)
                changed = True
                continue
        remaining.append(n)
    return remaining, changed


def _evaluate(node, consts, opset):
    from onnx.reference import ReferenceEvaluator

    try:
        ev = ReferenceEvaluator(node, opsets={"": opset})
        vals = ev.run(None, {i: consts[i] for i in node.input if i})
    except Exception:
        return None
    return {name: np.asarray(v) for name, v in zip(node.output, vals) if name}


def _attr(node, name, default):
    from onnx.helper import get_attribute_value

    for a in node.attribute:
        if a.name == name:
            return get_attribute_value(a)
    return default


def _fold_batchnorm(nodes, consts, outputs):
    """Fold BatchNormalization(Conv(x)) into the Conv weights when the Conv feeds only the BN."""
    from onnx import helper

    uses: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    producer = {o: n for n in nodes for o in n.output}
    drop, out = set(), []
    for n in nodes:
        conv = producer.get(n.input[0]) if n.op_type == "BatchNormalization" else None
        if (conv is None or conv.op_type != "Conv" or uses.get(n.input[0], 0) != 1 or n.input[0] in outputs
                or len([o for o in n.output if o]) != 1 or conv.input[1] not in consts
                or not all(i in consts for i in n.input[1:5])
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in consts)):
            continue
        gamma, beta, mean, var = (consts[i].astype(np.float64) for i in n.input[1:5])
        scale = gamma / np.sqrt(var + _attr(n, "epsilon", 1e-5))
        w = consts[conv.input[1]].astype(np.float64)
        b = consts[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
        wname, bname = conv.output[0] + "/bn_folded_w", conv.output[0] + "/bn_folded_b"
        consts[wname] = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        consts[bname] = ((b - mean) * scale + beta).astype(np.float32)
        new = helper.make_node("Conv", [conv.input[0], wname, bname], [n.output[0]], name=conv.name)
        new.attribute.extend(conv.attribute)
        producer[n.output[0]] = new
        drop.add(id(n))
        conv.CopyFrom(new)
    for n in nodes:
        if id(n) not in drop:
            out.append(n)
    return out


_LIFT_1D = {"Conv", "ConvTranspose", "MaxPool", "AveragePool"}


def _lift_1d(nodes, consts, shapes):
    """Rewrite 1-D Conv/ConvTranspose/pools as 2-D ones between Unsqueeze(2) and Squeeze(2).

    TFLite has no 1-D convolution; a [N, C, L] tensor becomes [N, C, 1, L] (NHWC inside: [N, 1,
    L, C]), so chains of 1-D layers stay in one layout without transposes.
    """
    from onnx import helper

    if not any(n.op_type in _LIFT_1D and len(shapes.get(n.input[0], ())) == 3 for n in nodes):
        return nodes
    axes = "__lift1d_axes"
    consts[axes] = np.array([2], dtype=np.int64)
    out = []
    for n in nodes:
        if n.op_type not in _LIFT_1D or len(shapes.get(n.input[0], ())) != 3:
            out.append(n)
            continue
        x4, y4 = f"{n.input[0]}/as2d", f"{n.output[0]}/as2d"
        ins = [x4] + list(n.input[1:])
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and n.input[1] in consts:
            w = consts[n.input[1]]
            ins[1] = f"{n.input[1]}/as2d"
            consts[ins[1]] = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
        attrs = {}
        for a in n.attribute:
            v = helper.get_attribute_value(a)
            if a.name in ("kernel_shape", "strides", "dilations", "output_padding"):
                v = [1] + list(v)
            elif a.name == "pads":
                v = [0, v[0], 0, v[1]]
            elif a.name == "output_shape":
                v = [1] + list(v)
            attrs[a.name] = v
        out.append(helper.make_node("Unsqueeze", [n.input[0], axes], [x4], name=f"{n.name}/unsqueeze"))
        out.append(helper.make_node(n.op_type, ins, [y4] + list(n.output[1:]), name=n.name, **attrs))
        out.append(helper.make_node("Squeeze", [y4, axes], [n.output[0]], name=f"{n.name}/squeeze"))
    return out
