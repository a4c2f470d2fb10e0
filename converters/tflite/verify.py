"""Parity of a converted TFLite model against its ONNX source on the same inputs.

What it does: runs the ONNX model with onnxruntime (one sample at a time, the TFLite model has
batch 1) and the TFLite model with ai-edge-litert under a chosen op resolver, feeding each model
the same arrays (transposed to NHWC for ``io_layout = "nhwc"``), and returns the outputs of both
plus :func:`edgekit.core.parity.compare` metrics per output.

What it does not do: decide pass/fail (the gate and the callers own thresholds) or measure latency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.core import parity

from .runtime import interpreter, run


def run_onnx(onnx_path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(inputs.values())))
    rows: dict[str, list] = {k: [] for k in names}
    for i in range(n):
        for k, v in zip(names, sess.run(names, {k: v[i:i + 1] for k, v in inputs.items()})):
            rows[k].append(v)
    return {k: np.concatenate(v) for k, v in rows.items()}


def run_tflite(model: bytes | str | Path, inputs: dict[str, np.ndarray], io_layout: str = "nchw",
               resolver: str = "auto") -> dict[str, np.ndarray]:
    """Outputs in the ONNX layout, sample by sample; ``inputs`` are in the ONNX layout."""
    data = Path(model).read_bytes() if isinstance(model, (str, Path)) else model
    interp = interpreter(data, resolver)
    n = len(next(iter(inputs.values())))
    rows: dict[str, list] = {}
    for i in range(n):
        sample = {k: _to_io(v[i:i + 1], io_layout) for k, v in inputs.items()}
        for k, v in run(interp, sample).items():
            rows.setdefault(k, []).append(_from_io(v, io_layout))
    return {k: np.concatenate(v) for k, v in rows.items()}


def _to_io(x: np.ndarray, io_layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if io_layout == "nhwc" and x.ndim == 4 else x


def _from_io(x: np.ndarray, io_layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if io_layout == "nhwc" and x.ndim == 4 else x


def compare_with_onnx(onnx_path, tflite, inputs: dict[str, np.ndarray], *, io_layout: str = "nchw",
                      resolver: str = "auto", atol: float = 1e-4, rtol: float = 1e-3) -> dict:
    """{output name: {"metrics": ParityMetrics, "onnx": array, "tflite": array}}."""
    ref = run_onnx(onnx_path, inputs)
    got = run_tflite(tflite, inputs, io_layout, resolver)
    return {name: {"metrics": parity.compare(got[name], ref[name], atol, rtol), "onnx": ref[name],
                   "tflite": got[name]} for name in ref}
