"""Profile checks of an ONNX graph: op allowlist, opset range, static shapes, size and peak memory.

``check_source`` raises (the target cannot run this model at all: name the node and op);
``budget_verdicts`` returns per-budget verdicts for one artifact, which the parity gate turns
into reasons. The peak-memory figure is an estimate: weight bytes + the largest sum of
activation tensors alive at once, walking the nodes in graph order with shapes from ONNX shape
inference (which needs fixed input shapes; otherwise the estimate says it is incomplete).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.core.errors import ModelError, UnsupportedOpError
from edgekit.core.profiles import Profile

from .preprocess import opset_of


def _op_name(node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


def unsupported_ops(model, profile: Profile) -> list[tuple[str, str]]:
    """``[(node name or #index, op)]`` for nodes whose op is not in a non-empty allowlist."""
    allow = set(profile.raw["runtime"].get("op_allowlist") or [])
    if not allow:
        return []
    return [(n.name or f"#{i}", _op_name(n)) for i, n in enumerate(model.graph.node) if _op_name(n) not in allow]


def check_source(model, profile: Profile) -> None:
    """Raise if the profile's runtime cannot run ``model`` whatever the precision."""
    bad = unsupported_ops(model, profile)
    if bad:
        ops = sorted({op for _, op in bad})
        node, op = bad[0]
        raise UnsupportedOpError(f"node {node!r} uses op {op}, which {profile.id}'s runtime lacks "
                                 f"({len(bad)} node(s), ops: {', '.join(ops)})",
                                 node=node, op=op, ops=ops, profile=profile.id)
    rt = profile.raw["runtime"]
    opset = opset_of(model)
    if rt.get("opset_max") and opset > rt["opset_max"]:
        raise UnsupportedOpError(f"the model uses opset {opset}; {profile.id}'s runtime supports opset "
                                 f"{rt.get('opset_min', '?')}..{rt['opset_max']}",
                                 hint=f"Re-export the model with opset <= {rt['opset_max']}.", opset=opset)
    if rt["static_shapes"]:
        inits = {i.name for i in model.graph.initializer}
        for i in model.graph.input:
            dims = i.type.tensor_type.shape.dim
            if i.name not in inits and any(not d.HasField("dim_value") for d in dims):
                raise ModelError(f"{profile.id} needs static shapes but input {i.name!r} is still dynamic",
                                 hint=f"Pass --input-shape {i.name}:1,... with the shape the device will use.")


def _tensor_bytes(vi) -> int | None:
    import onnx

    t = vi.type.tensor_type
    if not t.HasField("shape") or not t.elem_type:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if any(d is None for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize


def estimate_peak_memory(path: Path) -> dict:
    """``{"weights_bytes", "activations_bytes", "peak_bytes", "unknown_tensors"}`` for the ONNX file,
    for one sample (symbolic input dims are taken as 1)."""
    import onnx

    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    symbolic = False
    for i in model.graph.input:  # estimate per sample: symbolic dims (usually the batch) count as 1
        for d in i.type.tensor_type.shape.dim:
            if i.name not in inits and not d.HasField("dim_value"):
                d.dim_value, symbolic = 1, True
    if symbolic:
        del model.graph.value_info[:]
        for o in model.graph.output:
            o.type.tensor_type.ClearField("shape")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    g = model.graph
    weights = sum(int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                  for t in g.initializer)
    sizes = {vi.name: _tensor_bytes(vi) for vi in [*g.input, *g.value_info, *g.output]}
    last_use: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            if name and name not in inits:
                last_use[name] = i
    end = len(g.node)
    for o in g.output:
        last_use[o.name] = end
    unknown: set[str] = set()

    def size(name: str) -> int:
        s = sizes.get(name)
        if s is None:
            unknown.add(name)
            return 0
        return s

    live = {i.name: size(i.name) for i in g.input if i.name not in inits}
    peak = sum(live.values())
    for i, node in enumerate(g.node):
        for name in node.output:
            if name:
                live[name] = size(name)
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, -1) <= i]:
            del live[name]
    return {"weights_bytes": int(weights), "activations_bytes": int(peak), "peak_bytes": int(weights + peak),
            "unknown_tensors": len(unknown)}


def budget_verdicts(artifact: Path, profile: Profile) -> dict:
    """Per-budget verdicts for one artifact: size, peak memory (estimate), op allowlist."""
    import onnx

    b = profile.budgets
    size = artifact.stat().st_size
    mem = estimate_peak_memory(artifact)
    bad_ops = sorted({op for _, op in unsupported_ops(onnx.load(str(artifact), load_external_data=False), profile)})
    out = {"size": {"bytes": size, "budget": b["max_model_bytes"], "ok": size <= b["max_model_bytes"]},
           "peak_memory": {**mem, "budget": b["max_peak_memory_bytes"],
                           "ok": mem["peak_bytes"] <= b["max_peak_memory_bytes"],
                           "complete": mem["unknown_tensors"] == 0},
           "ops": {"unsupported": bad_ops, "ok": not bad_ops}}
    return out


def verdict_reasons(verdicts: dict) -> list[str]:
    reasons = []
    m, o = verdicts["peak_memory"], verdicts["ops"]   # size: gate.gate_reasons already says it
    if not m["ok"]:
        reasons.append(f"estimated peak memory {m['peak_bytes']} bytes > budget {m['budget']}")
    if not o["ok"]:
        reasons.append(f"ops the runtime lacks: {', '.join(o['unsupported'])}")
    return reasons
