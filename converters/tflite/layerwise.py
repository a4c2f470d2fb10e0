"""Layer-by-layer accuracy of a quantized TFLite model against its float translation (debug helper).

What it does: translates an ONNX model once, calibrates, builds the quantized model
(``int8-full`` or ``int16x8``), runs the float and the quantized flatbuffers on one sample with
every intermediate tensor preserved (builtin kernels, no delegate), and for each float operator
output reports the dequantized quantized tensor of the same name against it (the float values
clipped to what the quantized type represents): cosine, max abs difference relative to the float
tensor's max abs, the fraction of values clipped, and the calibrated range. The float TFLite
model matches onnxruntime to ~1e-5, so it stands in for the ONNX tensors (same values, NHWC).
The first rows where the cosine falls show where accuracy is lost.

What it does not do: judge a model (the parity gate does that) or compare tensors that the
rewrite renamed (graph inputs/outputs, requantized copies).
"""

from __future__ import annotations

import numpy as np

from edgekit.core.parity import cosine

from . import onnx_import, onnx_prep, quantize
from .convert import calibration_samples
from .runtime import interpreter, run
from .schema_writer import serialize


def _real(interp, idx: int, tensor) -> tuple[np.ndarray, tuple[float, float]]:
    """The tensor's real values and the interval its type can represent."""
    a = interp.get_tensor(idx).astype(np.float64)
    q = tensor.quant
    if q is None or tensor.dtype not in ("int8", "int16"):
        return a, (-np.inf, np.inf)
    info = np.iinfo(tensor.dtype)
    s, z = float(q.scale[0]), float(q.zero_point[0])
    return (a - z) * s, ((info.min - z) * s, (info.max - z) * s)


def compare_layers(onnx_path, calibration: dict[str, np.ndarray], sample: dict[str, np.ndarray], *,
                   precision: str = "int8-full", io_layout: str = "nhwc",
                   input_shapes: dict[str, list[int]] | None = None) -> list[dict]:
    """Rows ``{index, op, tensor, cosine, rel_max_diff, clipped, range}`` in execution order.

    ``calibration`` and ``sample`` map input names to ONNX-layout arrays ``[N, ...]`` (``sample``
    uses its first row).
    """
    graph = onnx_prep.load(onnx_path, input_shapes)
    model, _ = onnx_import.translate(graph, io_layout)
    data = serialize(model)
    means: dict = {}
    ranges = quantize.calibrate(data, model, calibration_samples(calibration, graph, io_layout, 200), means)
    quant = (quantize.to_int16x8(model, ranges, means) if precision == "int16x8"
             else quantize.to_int8(model, ranges, means=means))
    (x,) = calibration_samples(sample, graph, io_layout, 1)
    f_interp = interpreter(data, "builtin", preserve_all=True)
    q_interp = interpreter(serialize(quant), "builtin", preserve_all=True)
    run(f_interp, x)
    run(q_interp, x)
    by_name = {t.name: i for i, t in enumerate(quant.tensors)}
    rows = []
    for k, op in enumerate(model.operators):
        for out in op.outputs:
            name = model.tensors[out].name
            if name not in by_name:
                continue
            try:
                ref = f_interp.get_tensor(out).astype(np.float64)
                got, (lo, hi) = _real(q_interp, by_name[name], quant.tensors[by_name[name]])
            except ValueError:       # not kept by the runtime (e.g. folded away)
                continue
            # Values outside the representable interval saturate on purpose (ranges clipped for a
            # LOGISTIC / RELU6 reader, or beyond calibration): compare against the clipped
            # reference and report how much was clipped.
            clipped = float(np.mean((ref < lo) | (ref > hi)))
            ref = np.clip(ref, lo, hi)
            scale = max(float(np.abs(ref).max()), 1e-12)
            rows.append({"index": k, "op": op.op, "tensor": name, "cosine": cosine(ref, got),
                         "rel_max_diff": float(np.abs(ref - got).max()) / scale, "clipped": clipped,
                         "range": [float(v) for v in ranges.get(out, (0.0, 0.0))]})
    return rows


def first_drops(rows: list[dict], below: float = 0.99, limit: int = 10) -> list[dict]:
    """The first ``limit`` rows whose cosine falls below ``below`` (where to look first)."""
    return [r for r in rows if r["cosine"] < below][:limit]
