"""Sensitivity-guided float prefix for static int8: keep the first layers float when int8 hurts.

Some conv nets lose most of their int8 accuracy in the high-resolution stem. PP-OCRv4 det
(PP-LCNetV3) is one of them: activations there span 50-100x their standard deviation, so per-tensor
uint8 ranges quantize the small channels away. At 320x320 on generated text scenes, full int8 gave
output cosine 0.972. Keeping the first 30 nodes float (6 of 64 convs, 10.7 % of the MACs) gave 0.990.
No single later layer mattered that way (ADR 0013).

How ``recipes.int8_static`` uses this module:

1. It builds the full int8 graph with ranges from all calibration data. It then measures the
   output cosine against fp32 on the first ``PROBE_SAMPLES`` calibration samples (``probe_cosine``).
   That figure is in-sample, so it flatters the artifact. At or above the target, nothing else is
   done (one calibration, as before).
2. Below the target, ``choose_float_prefix`` searches again with ranges from the *other*
   calibration samples. With in-sample ranges, a cut that clips on new images looked best
   (probe 0.990, validation 0.970). The cut points are the graph-order boundaries in front of
   each heavy op (Conv / ConvTranspose / MatMul / Gemm), within a budget of heavy-op MACs kept fp32
   (``prefix_cuts``). The prefix grows until the probe cosine reaches the target. The best prefix
   wins only if it beats full int8 by ``MIN_GAIN``.
3. The artifact is rebuilt with that prefix excluded from quantization, using the all-data ranges
   from step 1 (cached, so there is no third calibration).

Validation data is never used here, so the parity gate stays an independent check.
This module does not build the QDQ graph itself (``recipes``) and does not gate (``gate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core.parity import cosine

HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
FLOAT_PREFIX_BUDGET = 0.12   # max fraction of heavy-op MACs kept fp32 (speed: int8 stays >= 1.6x fp32)
PROBE_SAMPLES = 8
MIN_GAIN = 0.002             # a prefix must raise the probe cosine by this much to be kept


def _shapes(model) -> dict[str, list[int]]:
    out = {}
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def node_macs(node, shapes: dict[str, list[int]]) -> int:
    """Multiply-accumulates of one heavy op from inferred shapes (0 when shapes are unknown)."""
    w = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if not w:
        return 0
    if node.op_type == "Conv":
        out = shapes.get(node.output[0])
        return int(np.prod(out) * np.prod(w[1:])) if out else 0
    if node.op_type == "ConvTranspose":
        x = shapes.get(node.input[0])
        return int(np.prod(x) * np.prod(w[1:])) if x else 0
    out = shapes.get(node.output[0])   # MatMul / Gemm: output elements x reduced dim
    return int(np.prod(out) * w[0]) if out else 0


def prefix_cuts(model, budget: float = FLOAT_PREFIX_BUDGET) -> list[tuple[int, float]]:
    """``[(cut, macs_fraction)]``: keeping ``nodes[:cut]`` fp32 keeps ``macs_fraction`` of the heavy-op MACs
    fp32. Cuts lie just before each heavy op after the first, within ``budget``."""
    shapes = _shapes(model)
    nodes = list(model.graph.node)
    macs = [node_macs(n, shapes) if n.op_type in HEAVY_OPS else 0 for n in nodes]
    total = sum(macs) or 1
    heavy = [i for i, n in enumerate(nodes) if n.op_type in HEAVY_OPS]
    cuts = []
    for cut in heavy[1:]:
        fraction = sum(macs[:cut]) / total
        if fraction > budget:
            break
        cuts.append((cut, round(fraction, 4)))
    return cuts


def model_outputs(path: Path, probe: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n = min(len(v) for v in probe.values())
    rows = [sess.run(None, {k: v[i:i + 1] for k, v in probe.items()}) for i in range(n)]
    return [np.concatenate([r[j] for r in rows]) for j in range(len(rows[0]))]


def probe_cosine(reference: list[np.ndarray], path: Path, probe: dict[str, np.ndarray]) -> float:
    """Cosine of the model at ``path`` against the fp32 ``reference`` over all ``probe`` samples at once
    (the worst output): the figure the issue's target is stated in."""
    return min(cosine(r, g) for r, g in zip(reference, model_outputs(path, probe)))


def float_prefix_names(src: Path, cut: int) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(src), load_external_data=False).graph.node][:cut]


def choose_float_prefix(src: Path, quantize: Callable[[list[str], Path], None], work: Path,
                        probe: dict[str, np.ndarray], target: float,
                        budget: float = FLOAT_PREFIX_BUDGET, reference: list[np.ndarray] | None = None) -> dict:
    """Search the float prefix (``quantize(extra_excluded_node_names, out_path)`` builds a candidate
    whose ranges must NOT come from ``probe``) that serves ``target`` best within ``budget``; return
    what was tried, ``float_nodes`` being the chosen prefix length (0: all int8). ``reference``: the
    fp32 outputs on ``probe`` when the caller already has them."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    names = [n.name for n in model.graph.node]
    reference = model_outputs(src, probe) if reference is None else reference
    quantize([], work / "int8-prefix-0.onnx")
    base = best_cos = probe_cosine(reference, work / "int8-prefix-0.onnx", probe)
    info = {"target_cosine": target, "budget_macs_fraction": budget, "probe_samples": len(reference[0]),
            "probe_cosine_all_int8": round(base, 5), "tried": [], "float_nodes": 0, "float_macs_fraction": 0.0}
    if base >= target:
        return {**info, "probe_cosine": info["probe_cosine_all_int8"]}
    for cut, fraction in prefix_cuts(model, budget):
        path = work / f"int8-prefix-{cut}.onnx"
        quantize(names[:cut], path)
        cos = probe_cosine(reference, path, probe)
        info["tried"].append({"float_nodes": cut, "float_macs_fraction": fraction, "probe_cosine": round(cos, 5)})
        if cos > best_cos + (MIN_GAIN if best_cos == base else 0.0):
            best_cos = cos
            info.update(float_nodes=cut, float_macs_fraction=fraction)
        if cos >= target:
            break
    info["probe_cosine"] = round(best_cos, 5)
    return info
