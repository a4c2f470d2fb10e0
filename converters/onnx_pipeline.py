"""ONNX artifacts for onnxruntime profiles: fp32 pass-through and static QDQ int8.

For each profile this module picks a precision (``auto``: the profile's preferred order, keeping
only candidates that pass the parity gate and are not slower than fp32), writes the artifact,
its golden vectors and a report into ``out_dir/<profile>/``. The source file is never modified;
scratch work happens in a temporary directory that is always removed.

Not here: TFLite output (``converters.tflite``), graph simplification and fp16 (later issue).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from edgekit.core import parity
from edgekit.core.atomic import atomic_write_bytes, atomic_write_json, remove_tree
from edgekit.core.errors import ModelError, ParityError, UsageError
from edgekit.core.profiles import Profile

from .data import Dataset
from .gate import Candidate, evaluate, gate_reasons

ONNX_PRECISIONS = ("fp32", "int8-static")


def inspect_onnx(path: Path) -> dict:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model: {exc}",
                         hint="Pass a .onnx file exported with torch.onnx.export or similar.") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 7:
        raise ModelError(f"{path.name} uses opset {opset}; edgekit needs opset >= 7",
                         hint="Re-export the model with a newer opset (onnx.version_converter).")

    def sig(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                  for d in t.shape.dim]})
        return out

    inits = {i.name for i in model.graph.initializer}
    return {"opset": opset, "inputs": sig([i for i in model.graph.input if i.name not in inits]),
            "outputs": sig(model.graph.output), "ops": sorted({n.op_type for n in model.graph.node}),
            "nodes": len(model.graph.node)}


def check_data(info: dict, data: Dataset, what: str) -> None:
    for spec in info["inputs"]:
        arr = data.inputs.get(spec["name"])
        if arr is None:
            raise UsageError(f"{what} data has no array for model input {spec['name']!r}")
        if arr.dtype.name != spec["dtype"]:
            raise UsageError(f"{what} data for {spec['name']!r} is {arr.dtype.name}; the model takes {spec['dtype']}",
                             hint=f"Convert it with array.astype('{spec['dtype']}').")
        fixed = [(i, d) for i, d in enumerate(spec["shape"]) if isinstance(d, int) and d > 0 and i > 0]
        if arr.ndim != len(spec["shape"]) or any(arr.shape[i] != d for i, d in fixed):
            raise UsageError(f"{what} data for {spec['name']!r} has shape {list(arr.shape)}; the model takes "
                             f"{spec['shape']} (first axis = samples)")


class _Reader:
    """onnxruntime CalibrationDataReader over a Dataset, one sample at a time."""

    def __init__(self, data: Dataset) -> None:
        self._it = iter(range(len(data)))
        self._data = data

    def get_next(self):
        i = next(self._it, None)
        return None if i is None else {k: v[i:i + 1] for k, v in self._data.inputs.items()}


def quantize_static_int8(src: Path, dst: Path, calibration: Dataset, method: str = "minmax") -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimization: fall back to the source graph
            shutil.copy(src, pre)
        calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
        out = Path(tmp) / "int8.onnx"
        try:
            quantize_static(str(pre), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calib, extra_options={"CalibTensorRangeSymmetric": False})
        except Exception as exc:
            raise ModelError(f"static int8 quantization failed: {exc}") from None
        shutil.copy(out, dst)


def _choose(profile: Profile, precision: str) -> list[str]:
    if precision == "auto":
        cands = [p for p in profile.precisions if p in ONNX_PRECISIONS]
        return cands + (["fp32"] if "fp32" not in cands else [])
    if precision not in ONNX_PRECISIONS:
        raise UsageError(f"precision {precision!r} is not available for ONNX profiles yet; use one of "
                         f"{', '.join(ONNX_PRECISIONS)} or auto")
    if precision not in profile.precisions:
        raise UsageError(f"profile {profile.id} does not allow precision {precision!r}; it allows "
                         f"{', '.join(profile.precisions)}")
    return [precision]


def convert_onnx(src: Path, profile: Profile, out_dir: Path, *, precision: str, calibration: Dataset,
                 validation: Dataset, progress=lambda msg: None) -> dict:
    """Produce ``out_dir/<profile>/{model.onnx, golden.npz, report.json}``; return the report."""
    if profile.engine != "onnxruntime":
        raise UsageError(f"profile {profile.id} runs {profile.engine}; this pipeline writes ONNX for onnxruntime")
    info = inspect_onnx(src)
    check_data(info, calibration, "calibration")
    check_data(info, validation, "validation")
    source_bytes = src.read_bytes()
    dest = out_dir / profile.id
    report: dict = {"profile": profile.id, "source": str(src), "source_sha256": hashlib.sha256(source_bytes).hexdigest(),
                    "source_bytes": len(source_bytes), "inputs": info["inputs"], "outputs": info["outputs"],
                    "candidates": [], "threads": 1}
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        tmp = Path(tmp)
        reference = Candidate.load("fp32-reference", src, validation)
        chosen: tuple[Candidate, Path] | None = None
        for prec in _choose(profile, precision):
            progress(f"{profile.id}: building {prec}")
            path = tmp / f"{prec}.onnx"
            t0 = time.perf_counter()
            if prec == "fp32":
                path.write_bytes(source_bytes)
            else:
                quantize_static_int8(src, path, calibration)
            cand = Candidate.load(prec, path, validation)
            entry = evaluate(cand, reference, validation, profile)
            entry["convert_s"] = round(time.perf_counter() - t0, 3)
            entry["reasons"] = gate_reasons(entry, profile, allow_slower=prec == "fp32" or precision != "auto")
            entry["passed"] = not entry["reasons"]
            report["candidates"].append(entry)
            if entry["passed"]:
                chosen = (cand, path)
                break
        if chosen is None:
            last = report["candidates"][-1]
            raise ParityError(f"no artifact for {profile.id} passed the parity gate: " + "; ".join(last["reasons"]),
                              report=report["candidates"])
        cand, path = chosen
        remove_tree(dest)
        dest.mkdir(parents=True)
        shutil.copy(path, dest / "model.onnx")
        k = profile.validation["golden_vectors"]
        gold_in = {n: v[:k] for n, v in validation.inputs.items()}
        atomic_write_bytes(dest / "golden.npz", parity.save_golden(gold_in, {n: v[:k] for n, v in cand.outputs.items()}))
        from edgekit.core import drift  # reference distribution for on-device drift (shipped in the bundle)
        atomic_write_json(dest / drift.MEMBER, drift.reference(validation.inputs, cand.outputs))
    report.update(precision=cand.name, artifact="model.onnx", artifact_bytes=(dest / "model.onnx").stat().st_size,
                  artifact_sha256=hashlib.sha256((dest / "model.onnx").read_bytes()).hexdigest(),
                  engine="onnxruntime", format="onnx", golden_vectors=k)
    report["size_ratio"] = round(report["source_bytes"] / report["artifact_bytes"], 3)
    atomic_write_json(dest / "report.json", report)
    return report
