"""ONNX -> TFLite conversion entry point, without TensorFlow.

What it does: loads and folds the ONNX model, translates it to TFLite (NHWC inside), applies
the precision (``fp32``; ``fp16`` weights behind DEQUANTIZE; ``int8-weights`` likewise with
per-channel int8 weights; ``int8-full`` calibrated on the float TFLite model; ``int16x8``;
``int8-mixed`` = int8-full with float I/O and a float prefix chosen by :mod:`.mixed`; for int8 I/O, output
concats of differently scaled parts are split into separate outputs and ops missing from the
target's allowlist rewritten where an equivalent exists, :mod:`.int8_targets`),
serializes the flatbuffer, checks that ai-edge-litert loads it, writes it atomically and returns
a report (ops with versions, tensor count, size, precision, I/O layout and signature, per-op
coverage, timings).

What it does not do: judge accuracy (the parity gate compares against onnxruntime), choose a
precision for a device profile, or bundle/sign the artifact.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from edgekit.core.atomic import atomic_write_bytes
from edgekit.core.errors import UsageError

from . import onnx_import, onnx_prep, quantize
from .batch import try_dynamic_batch
from .int8_targets import hard_swish_as_muls, split_output_concats, split_v_as_slices
from .mixed import float_prefix
from .op_versions import op_version
from .schema_writer import serialize

PRECISIONS = ("fp32", "fp16", "int8-weights", "int8-full", "int16x8", "int8-mixed")
IO_LAYOUTS = ("nchw", "nhwc")


def convert_onnx_to_tflite(onnx_path, out_path, *, precision: str = "fp32",
                           calibration: dict[str, np.ndarray] | None = None, io_layout: str = "nchw",
                           input_shapes: dict[str, list[int]] | None = None,
                           max_calibration_samples: int = 200, int8_io: bool = False,
                           dynamic_batch: bool = False, op_allowlist=()) -> dict:
    """Convert ``onnx_path`` to a TFLite flatbuffer at ``out_path`` and return the report.

    ``calibration`` maps input names to arrays ``[N, ...]`` in the ONNX layout (required for
    ``int8-full``; at most ``max_calibration_samples`` are used, each run with batch 1).
    ``input_shapes`` fixes symbolic input dimensions (the batch is always fixed to 1).
    ``int8_io`` (``int8-full`` only) makes the model's inputs and outputs int8.
    ``dynamic_batch`` marks the batch axis resizable when a batch-of-3 check proves it safe
    (:mod:`.batch`); the report's ``batch`` says whether it did and, if not, why.
    ``op_allowlist`` (the target profile's, empty = any op) lets ops it lacks be rewritten into
    equivalents it has (SPLIT_V -> STRIDED_SLICE, HARD_SWISH -> ADD/MUL). With ``int8_io``, an
    output concat of parts whose ranges differ > 4x becomes separate outputs; the report's
    ``output_layout`` says how to join them (``edgekit.core.outputs.join_parts``).
    """
    if int8_io and precision != "int8-full":
        raise UsageError("int8 inputs/outputs need precision int8-full")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if io_layout not in IO_LAYOUTS:
        raise UsageError(f"io_layout must be one of {', '.join(IO_LAYOUTS)}, not {io_layout!r}")
    if precision in ("int8-full", "int16x8", "int8-mixed") and not calibration:
        raise UsageError(f"{precision} needs calibration data (a dict input name -> array [N, ...])")
    t0 = time.perf_counter()
    graph = onnx_prep.load(onnx_path, input_shapes)
    model, coverage = onnx_import.translate(graph, io_layout)
    allowed = set(op_allowlist or ())
    if allowed and "SPLIT_V" not in allowed and "STRIDED_SLICE" in allowed:
        split_v_as_slices(model)
    if allowed and "HARD_SWISH" not in allowed and {"ADD", "MUL"} <= allowed:
        hard_swish_as_muls(model)
    output_layout: dict = {}
    timings = {"translate_s": time.perf_counter() - t0}
    n_samples = 0
    if precision == "fp16":
        model = quantize.to_fp16(model)
    elif precision == "int8-weights":     # calibration data, when given, drives bias correction
        means: dict = {}
        if calibration:
            samples = calibration_samples(calibration, graph, io_layout, max_calibration_samples)
            n_samples = len(samples)
            quantize.calibrate(serialize(model), model, samples, means)
        model = quantize.to_int8_weights(model, means)
    elif precision in ("int8-full", "int16x8", "int8-mixed"):
        t1 = time.perf_counter()
        samples = calibration_samples(calibration, graph, io_layout, max_calibration_samples)
        n_samples = len(samples)
        means: dict = {}
        ranges = quantize.calibrate(serialize(model), model, samples, means)
        if precision == "int8-mixed":     # float prefix chosen on calibration data (.mixed)
            keep, mixed = float_prefix(model, ranges, means, samples)
            model = quantize.to_int8(model, ranges, means=means, keep_float=keep)
        else:
            if int8_io:      # graph surgery before quantization: own scales for box/score parts
                output_layout = split_output_concats(model, ranges, io_layout)
            model = (quantize.to_int8(model, ranges, int8_io, means) if precision == "int8-full"
                     else quantize.to_int16x8(model, ranges, means))
        timings["calibrate_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    batch = {"dynamic": False}
    if dynamic_batch:
        model, data, reason = try_dynamic_batch(model)
        batch = {"dynamic": reason is None, **({"reason": reason} if reason else {})}
    else:
        data = serialize(model)
    timings["serialize_s"] = time.perf_counter() - t2
    _check_loads(data)
    atomic_write_bytes(out_path, data)
    timings["total_s"] = time.perf_counter() - t0
    report = {**_report(model, data, coverage, precision, io_layout, n_samples, out_path, timings), "batch": batch,
              "output_layout": output_layout}
    if precision == "int8-mixed":
        report["mixed"] = mixed
    return report


def calibration_samples(calibration: dict[str, np.ndarray], graph, io_layout: str, limit: int) -> list[dict]:
    """Batch-1 samples in the model's I/O layout, from arrays in the ONNX layout."""
    missing = [n for n in graph.inputs if n not in calibration]
    if missing:
        raise UsageError(f"calibration data lacks inputs {missing}; it has {sorted(calibration)}")
    counts = {len(calibration[n]) for n in graph.inputs}
    if len(counts) != 1:
        raise UsageError(f"calibration inputs have different sample counts {sorted(counts)}")
    samples = []
    for i in range(min(counts.pop(), limit)):
        sample = {}
        for name in graph.inputs:
            x = np.asarray(calibration[name][i:i + 1], dtype=graph.dtypes.get(name, np.float32))
            if tuple(x.shape) != tuple(graph.shapes[name]):
                raise UsageError(f"calibration sample for {name!r} has shape {x.shape[1:]}, "
                                 f"the model expects {graph.shapes[name][1:]}")
            perm = onnx_import.io_perm(x.ndim, io_layout)
            sample[name] = np.ascontiguousarray(x.transpose(perm))
        samples.append(sample)
    if not samples:
        raise UsageError("calibration data is empty")
    return samples


def _check_loads(data: bytes) -> None:
    from .runtime import interpreter

    interpreter(data, "auto")


def _quant(t) -> dict:
    if t.quant is None:
        return {}
    return {"quantization": {"scale": [float(x) for x in t.quant.scale],
                             "zero_point": [int(x) for x in t.quant.zero_point]}}


def _report(model, data: bytes, coverage: dict, precision: str, io_layout: str, n_samples: int,
            out_path, timings: dict) -> dict:
    ops = Counter((op.op, op_version(model, op)) for op in model.operators)

    def sig(indices):
        return [{"name": model.tensors[i].name, "shape": list(model.tensors[i].shape),
                 "dtype": model.tensors[i].dtype, **_quant(model.tensors[i])} for i in indices]
    return {
        "format": "tflite",
        "path": str(Path(out_path)),
        "precision": precision,
        "io_layout": io_layout,
        "size_bytes": len(data),
        "tensor_count": len(model.tensors),
        "operator_count": len(model.operators),
        "ops": [{"op": op, "version": v, "count": k} for (op, v), k in sorted(ops.items())],
        "inputs": sig(model.inputs),
        "outputs": sig(model.outputs),
        "calibration_samples": n_samples,
        "coverage": coverage,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }


__all__ = ["convert_onnx_to_tflite", "PRECISIONS", "IO_LAYOUTS"]
