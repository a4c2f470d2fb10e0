"""Translate a prepared (static, constant-folded) ONNX graph into the in-memory TFLite model.

What it does: creates the graph inputs in the requested I/O layout (``nchw``: the ONNX layout,
activations are transposed to NHWC by the first op that needs it; ``nhwc``: 4-D inputs exposed as
NHWC), walks the nodes through the registered translators, collects *every* node that cannot be
translated (with the reason) into one :class:`UnsupportedOpError` carrying a per-op coverage
report, and finally produces each graph output under its ONNX name in the requested layout.

What it does not do: load or fold the ONNX model (:mod:`.onnx_prep`), peephole clean-up
(:mod:`.optimize`, called at the end), quantize
(:mod:`.quantize`), or serialize (:mod:`.schema_writer`).
"""

from __future__ import annotations

from collections import Counter

from edgekit.core.errors import ModelError, UnsupportedOpError

from . import ops_conv, ops_dense, ops_elementwise, ops_norm, ops_shape  # noqa: F401  (register translators)
from .context import HANDLERS, NHWC, Context, NotConvertible, identity
from .optimize import simplify
from .schema_writer import Model

SUPPORTED_OPS = sorted(HANDLERS)


def io_perm(rank: int, io_layout: str) -> tuple[int, ...]:
    return NHWC if io_layout == "nhwc" and rank == 4 else identity(rank)


def translate(graph, io_layout: str = "nchw") -> tuple[Model, dict]:
    """(model, coverage) for ``graph``; raises UnsupportedOpError listing all untranslatable nodes."""
    if io_layout not in ("nchw", "nhwc"):
        raise ModelError(f"io_layout must be 'nchw' or 'nhwc', not {io_layout!r}")
    model = Model()
    ctx = Context(graph, model)
    for name in graph.inputs:
        shape = ctx.shape(name)
        perm = io_perm(len(shape), io_layout)
        t = ctx.new_tensor(name, [shape[p] for p in perm], ctx.dtype(name))
        model.inputs.append(t)
        ctx.define(name, t, perm)

    unsupported, blocked, poisoned = [], [], set()
    for node in graph.nodes:
        label = node.name or node.output[0]
        fn = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        try:
            if fn is None:
                where = f" (domain {node.domain})" if node.domain not in ("", "ai.onnx") else ""
                raise NotConvertible(f"no TFLite translation for {node.op_type}{where}")
            for o in node.output:
                if o:
                    ctx.shape(o)
            fn(ctx, node)
        except NotConvertible as exc:
            if fn is not None and poisoned.intersection(node.input):   # fails because an input did
                blocked.append(label)
            else:
                unsupported.append({"node": label, "op": node.op_type, "reason": str(exc)})
            poisoned.update(o for o in node.output if o)
        except Exception as exc:
            if poisoned.intersection(node.input):
                blocked.append(label)
                poisoned.update(o for o in node.output if o)
                continue
            raise ModelError(f"translating node {label!r} ({node.op_type}) failed: {exc}") from exc
        if node.op_type and not poisoned.intersection(node.output):
            for o in node.output:
                if o and o not in ctx.values and ctx.const(o) is None:
                    raise ModelError(f"node {label!r} ({node.op_type}) left output {o!r} undefined")

    coverage = _coverage(graph, unsupported, blocked)
    if unsupported:
        listing = "; ".join(f"node {u['node']!r} ({u['op']}): {u['reason']}" for u in unsupported)
        raise UnsupportedOpError(
            f"{len(unsupported)} of {len(graph.nodes)} ONNX nodes cannot be converted to TFLite: {listing}",
            unsupported=unsupported, blocked=blocked, coverage=coverage["ops"])
    for name in graph.outputs:
        _graph_output(ctx, name, io_layout)
    simplify(model)
    model.prune()
    return model, coverage


def _coverage(graph, unsupported, blocked) -> dict:
    counts = Counter(n.op_type for n in graph.nodes)
    bad = Counter(u["op"] for u in unsupported)
    ops = {op: {"nodes": k, "unsupported": bad.get(op, 0), "translator": op in HANDLERS}
           for op, k in sorted(counts.items())}
    return {"ops": ops, "nodes": len(graph.nodes), "unsupported_nodes": len(unsupported),
            "blocked_nodes": len(blocked)}


def _graph_output(ctx, name: str, io_layout: str) -> None:
    m = ctx.m
    if ctx.const(name) is not None:
        raise ModelError(f"graph output {name!r} is a constant; TFLite outputs must be computed")
    shape = ctx.shape(name)
    t = ctx.tensor(name, io_perm(len(shape), io_layout))
    if t in m.inputs or t in m.outputs:
        copy = ctx.new_tensor(f"{name}/copy", m.tensors[t].shape, m.tensors[t].dtype)
        ctx.add_op("RESHAPE", [t, ctx.int32(f"{name}/copy_shape", m.tensors[t].shape)], [copy])
        t = copy
    if m.tensors[t].name != name:      # the ONNX name goes to the output tensor
        for other in m.tensors:
            if other.name == name:
                other.name = ctx.unique(f"{name}/internal")
        m.tensors[t].name = name
    m.outputs.append(t)
