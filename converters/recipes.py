"""Precision recipes: turn a prepared fp32 ONNX graph into an fp32, fp16, dynamic-int8 or static-int8 artifact.

* ``fp16``: onnxruntime's own ``float16`` converter with float32 I/O kept (it loads where
  onnxconverter-common fails, but can break a model numerically: the parity gate always checks).
* ``int8-dynamic``: weights int8, activations quantized at run time, restricted to MatMul/Gemm.
  Refused on graphs with Conv: dynamic Conv becomes ConvInteger, 4–13× slower than fp32 on x86.
* ``int8-static``: QDQ, per-channel int8 weights, uint8 activations (U8S8: the fast MLAS path
  on x86 and ARM; S8S8 QDQ ran 2× slower than fp32 on nudenet here) calibrated with MinMax,
  Entropy or Percentile; ``reduce_range`` on x86 CPUs without VNNI to avoid U8S8 saturation.

Every int8 artifact then gets compact tensor names (see ``compact_names``). Choosing between
recipes and gating them is ``onnx_pipeline``'s job.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

from edgekit.core.errors import ModelError, UsageError
from edgekit.core.profiles import Profile

from .data import Dataset

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DYNAMIC_OPS = ("MatMul", "Gemm")
_VNNI = {"avx512_vnni", "avx_vnni"}


class RecipeSkipped(Exception):
    """The recipe does not apply to this graph (``auto`` drops it with this reason)."""


CALIBRATION_CHUNK = 2   # samples whose activations onnxruntime holds at once while calibrating


class _Reader:
    """onnxruntime CalibrationDataReader over a Dataset, one sample at a time, in ranges.

    onnxruntime keeps every intermediate tensor of every sample it is fed in one ``collect_data``
    call (PP-OCRv4 det at 640x640: > 7 GB for 16 samples with Entropy). ``set_range`` lets
    ``quantize_static`` (``CalibStridedMinMax``) feed a few samples per call; the calibrators merge
    ranges/histograms between calls, so memory stays bounded by the chunk, not the data set."""

    def __init__(self, data: Dataset, tick=lambda done, total: None) -> None:
        self._data = data
        self._tick = tick
        self._next, self._end = 0, len(data)

    def __len__(self) -> int:
        return len(self._data)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._data))

    def get_next(self):
        if self._next >= self._end:
            return None
        i = self._next
        self._next += 1
        self._tick(i + 1, len(self._data))
        return {k: v[i:i + 1] for k, v in self._data.inputs.items()}


def calibration_stride(n: int, chunk: int = CALIBRATION_CHUNK) -> int:
    """Largest divisor of ``n`` up to ``chunk`` (onnxruntime requires the stride to divide ``n``)."""
    return max(d for d in range(1, max(min(n, chunk), 1) + 1) if n % d == 0)


def _op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def compact_names(path: Path) -> None:
    """Rename intermediate tensors to short ids and drop node names and value_info.

    Quantization adds ~2 Q/DQ nodes per tensor with long generated names; on PP-OCRv4 det the
    names alone are 10% of the int8 file. Graph inputs/outputs keep their names, and no short id
    takes one of them (torch's TorchScript exporter names outputs "23")."""
    import itertools

    import onnx

    model = onnx.load(str(path))
    g = model.graph
    keep = {i.name for i in g.input} | {o.name for o in g.output}
    new: dict[str, str] = {}

    ids = (i for n in itertools.count() if (i := format(n, "x")) not in keep)  # exporters name outputs "23"

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in new:
            new[name] = next(ids)
        return new[name]

    for t in g.initializer:
        t.name = rename(t.name)
    for node in g.node:
        node.name = ""
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    del g.value_info[:]
    onnx.save(model, str(path))


HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def float_tail(path: Path) -> list[str]:
    """Names of nodes downstream of the last heavy op (Conv/MatMul/Gemm) on every path to the outputs.

    Quantizing this tail (box decode, Concat of boxes in pixels with class scores in [0, 1],
    Softmax ...) saves no time but puts values of very different ranges under one scale: on
    nudenet it zeroed the class scores. These nodes stay float."""
    import onnx

    nodes = list(onnx.load(str(path), load_external_data=False).graph.node)
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    feeds_heavy = [False] * len(nodes)
    for i in reversed(range(len(nodes))):  # graph order is topological: consumers come later
        feeds_heavy[i] = nodes[i].op_type in HEAVY_OPS or any(
            feeds_heavy[j] for out in nodes[i].output for j in consumers.get(out, []))
    return [n.name for i, n in enumerate(nodes) if not feeds_heavy[i] and n.name]


def fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    except Exception as exc:
        raise ModelError(f"fp16 conversion failed: {str(exc)[:300]}", hint="Use --precision fp32.") from None
    onnx.save(model, str(dst))


def int8_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = _op_types(src)
    if "Conv" in ops:
        raise RecipeSkipped("graph has Conv: dynamic int8 would make ConvInteger, 4-13x slower than fp32 on x86; "
                            "use int8-static")
    if not ops & set(DYNAMIC_OPS):
        raise RecipeSkipped("graph has no MatMul/Gemm for dynamic int8 to quantize")
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(DYNAMIC_OPS), per_channel=True,
                         weight_type=QuantType.QInt8)
    except Exception as exc:
        raise ModelError(f"dynamic int8 quantization failed: {str(exc)[:300]}") from None
    compact_names(dst)


def reduce_range_for(profile: Profile) -> bool:
    cpu = profile.raw["cpu"]
    return cpu["arch"] == "x86_64" and not (_VNNI & set(cpu.get("features", [])))


def _quantize_static(src: Path, dst: Path, calibration: Dataset, calib, *, reduce_range: bool, exclude: list[str],
                     cache: Path, tick) -> None:
    """One QDQ build; the first call calibrates and writes ``cache``, later calls reuse its ranges."""
    import contextlib
    import io
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's "consider pre-processing" warning: we already did (preprocess.py)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # entropy/percentile print to stdout (breaks --json)
            quantize_static(str(src), str(dst), _Reader(calibration, tick), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=calib, nodes_to_exclude=exclude,
                            extra_options={"CalibTensorRangeSymmetric": False,
                                           "CalibStridedMinMax": calibration_stride(len(calibration))},
                            **_cache_kwargs(cache))
    except Exception as exc:
        raise ModelError(f"static int8 quantization failed: {str(exc)[:300]}",
                         hint="Check the calibration data matches the model inputs; try --precision fp32.") from None
    finally:
        root.setLevel(level)


def _cache_kwargs(cache: Path) -> dict:
    """``calibration_cache_path`` (ranges computed once, reused by the rebuilds of the prefix search) exists
    only in recent onnxruntime; older ones recalibrate on every build instead of failing."""
    from onnxruntime.quantization import quantize_static

    return ({"calibration_cache_path": str(cache)}
            if "calibration_cache_path" in inspect.signature(quantize_static).parameters else {})


def int8_static(src: Path, dst: Path, calibration: Dataset, method: str = "minmax", *,
                reduce_range: bool = False, tick=lambda done, total: None,
                target_cosine: float | None = None) -> dict:
    """Static QDQ int8 of ``src`` into ``dst``; returns what the float-prefix search did ({} when off).

    With ``target_cosine`` the high-resolution prefix of the graph may stay fp32 when that is what
    brings the output cosine on calibration samples to the target (``converters.sensitivity``)."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod

    from .sensitivity import PROBE_SAMPLES, choose_float_prefix, float_prefix_names, model_outputs, probe_cosine

    if method not in CALIBRATION_METHODS:
        raise UsageError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    tail = float_tail(src)
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=dst.parent) as work:
        work = Path(work)

        def quantizer(data: Dataset, cache: Path):
            return lambda excluded, out: _quantize_static(src, out, data, calib, reduce_range=reduce_range,
                                                          exclude=tail + excluded, cache=cache, tick=tick)

        full = quantizer(calibration, work / "ranges.json")
        full([], dst)
        if target_cosine is not None and len(calibration) >= 2 * PROBE_SAMPLES:
            probe = calibration.head(PROBE_SAMPLES).inputs
            # in-sample cosine flatters the artifact: below the target it is a real miss worth a search
            reference = model_outputs(src, probe)
            in_sample = probe_cosine(reference, dst, probe)
            info = {"target_cosine": target_cosine, "in_sample_probe_cosine_all_int8": round(in_sample, 5),
                    "searched": in_sample < target_cosine, "float_nodes": 0}
            if info["searched"]:
                held_in = Dataset({k: v[PROBE_SAMPLES:] for k, v in calibration.inputs.items()})
                info.update(choose_float_prefix(src, quantizer(held_in, work / "search-ranges.json"), work, probe,
                                                target_cosine, reference=reference))
                if info["float_nodes"]:
                    full(float_prefix_names(src, info["float_nodes"]), dst)
    compact_names(dst)
    return info


def build(precision: str, src: Path, dst: Path, profile: Profile, calibration: Dataset,
          method: str = "minmax", tick=lambda done, total: None) -> dict:
    """Write the ``precision`` artifact of the prepared graph ``src`` to ``dst``; return recipe details
    for the report (static int8: the float-prefix search, ``converters.sensitivity``)."""
    if precision == "fp32":
        shutil.copy(src, dst)
    elif precision == "fp16":
        fp16(src, dst)
    elif precision == "int8-dynamic":
        int8_dynamic(src, dst)
    elif precision == "int8-static":
        return int8_static(src, dst, calibration, method, reduce_range=reduce_range_for(profile), tick=tick,
                           target_cosine=profile.validation["min_cosine"])
    else:
        raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)} or auto")
    return {}
