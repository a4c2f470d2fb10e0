"""TFLite artifacts for tflite / tflite-micro profiles: fp32, fp16, int8-dynamic/-static/-full.

For each profile this module picks a precision (``auto``: the profile's preferred order, keeping
only candidates that pass the parity gate and, while another candidate remains, are not slower
than the fp32 TFLite model built in the same run), writes
``out_dir/<profile>/{model.tflite, golden.npz, report.json}`` with the same report keys as
:func:`converters.onnx_pipeline.convert_onnx`, and never writes an artifact that fails the gate.
Reference: onnxruntime on the source ONNX (one thread); candidate: ai-edge-litert (one thread,
default resolver with XNNPACK).

Precisions (profile names -> converter recipe):

* ``fp32``; ``fp16`` (float16 weights behind DEQUANTIZE); ``int8-dynamic`` (weight-only int8:
  per-channel int8 weights behind DEQUANTIZE, float compute; no hybrid kernels);
* ``int8-static``: full-integer kernels, float inputs/outputs (QUANTIZE / DEQUANTIZE at the edges);
* ``int8-full``: full-integer with int8 inputs/outputs (Edge TPU, microcontrollers). The golden
  vectors then hold int8 inputs/outputs; the parity gate compares dequantized outputs;
* ``int16x8``: int16 activations, int8 weights, float I/O (TFLite's 16x8 scheme), for models whose
  activations per-tensor int8 cannot represent. XNNPACK has no 16x8 kernels: it runs on the
  builtin integer kernels, slower than fp32 with XNNPACK on a CPU, so ``auto`` never picks it;
* ``int8-mixed``: int8-static with a float prefix (the first blocks stay float, chosen on the
  calibration data by ``converters.tflite.mixed``), for models whose int8 loss sits in the stem
  (PP-OCRv4 det). Explicit only; the report's ``mixed`` shows the cut and the scores tried.

I/O layout: profiles declaring ``layout = "NHWC"`` get NHWC 4-D inputs/outputs (no transposes at
the model edges); the report's ``inputs``/``outputs`` and the golden vectors use the artifact's
own layout and dtype. The validation/calibration data stay in the ONNX layout. With int8 I/O an
output concat of differently scaled parts (YOLOv8 boxes + scores) is returned as separate parts:
``report["output_layout"]`` (copied into each part's output spec as ``part_of``, hence into the
bundle manifest) says how to join them; the gate compares the joined output (ADR 0014).

Not here: the flatbuffer writer (``converters.tflite``), the gate's thresholds (``converters.gate``).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.core import drift, parity
from edgekit.core.outputs import join_parts
from edgekit.core.atomic import atomic_write_bytes, atomic_write_json, remove_tree
from edgekit.core.errors import ParityError, UsageError
from edgekit.core.profiles import Profile

from .data import Dataset
from .gate import LATENCY_RUNS, Candidate, choose_precisions, evaluate, gate_reasons, slower
from .onnx_pipeline import check_data, inspect_onnx
from .preprocess import external_bytes
from .steps import StepLog
from .tasks import resolve as resolve_task

TFLITE_ENGINES = ("tflite", "tflite-micro")
# profile precision -> (converter precision, int8 inputs/outputs)
RECIPES = {"fp32": ("fp32", False), "fp16": ("fp16", False), "int8-dynamic": ("int8-weights", False),
           "int8-static": ("int8-full", False), "int8-full": ("int8-full", True),
           "int16x8": ("int16x8", False), "int8-mixed": ("int8-mixed", False)}
CALIBRATED = ("int8-full", "int16x8", "int8-weights", "int8-mixed")   # int8-weights: data only for bias correction
# never picked by auto: int16x8 is slower than fp32 on CPUs (no XNNPACK kernels); int8-mixed is a
# fallback to ask for when int8-static is refused (its float prefix costs conversion time)
EXPLICIT_ONLY = ("int16x8", "int8-mixed")
FP32_MAX_REL_DIFF = 1e-4     # fp32 must match onnxruntime to 1e-4 x the output's scale


def _to_layout(x: np.ndarray, io_layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if io_layout == "nhwc" and x.ndim == 4 else x


def _from_layout(x: np.ndarray, io_layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if io_layout == "nhwc" and x.ndim == 4 else x


def _quantize(x: np.ndarray, d: dict) -> np.ndarray:
    scale, zp = d["quantization"]
    if d["dtype"] == np.float32 or not scale:
        return x.astype(d["dtype"])
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(d["dtype"])


def _dequantize(y: np.ndarray, d: dict) -> np.ndarray:
    scale, zp = d["quantization"]
    if y.dtype == np.float32 or not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


class TfliteCandidate:
    """A .tflite artifact loaded in ai-edge-litert; quacks like :class:`converters.gate.Candidate`.

    ``outputs`` are float and in the ONNX layout (comparable with the reference); ``native_inputs``
    / ``native_outputs`` are what the artifact itself takes and returns (its layout and dtype).
    """

    def __init__(self, name: str, path: Path, io_layout: str, output_layout: dict | None = None) -> None:
        from converters.tflite.runtime import interpreter

        self.name, self.path, self.io_layout, self.output_layout = name, path, io_layout, output_layout or {}
        self.interp = interpreter(path.read_bytes(), "auto", threads=1)
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()
        self.latency_ms = 0.0
        self.outputs: dict[str, np.ndarray] = {}
        self.native_inputs: dict[str, np.ndarray] = {}
        self.native_outputs: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, name: str, path: Path, data: Dataset, io_layout: str,
             output_layout: dict | None = None) -> "TfliteCandidate":
        cand = cls(name, path, io_layout, output_layout)
        cand.native_inputs = {d["name"]: _quantize(_to_layout(data.inputs[d["name"]], io_layout), d)
                              for d in cand._in}
        cand.latency_ms = cand.measure_latency()
        cand.native_outputs = cand.run_all(len(data))
        cand.outputs = join_parts({d["name"]: _from_layout(_dequantize(cand.native_outputs[d["name"]], d), io_layout)
                                   for d in cand._out}, cand.output_layout)
        return cand

    def _invoke(self, i: int) -> None:
        for d in self._in:
            self.interp.set_tensor(d["index"], self.native_inputs[d["name"]][i:i + 1])
        self.interp.invoke()

    def run_all(self, n: int) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {d["name"]: [] for d in self._out}
        for i in range(n):
            self._invoke(i)
            for d in self._out:
                rows[d["name"]].append(self.interp.get_tensor(d["index"]).copy())
        return {k: np.concatenate(v) for k, v in rows.items()}

    def measure_latency(self) -> float:
        for _ in range(5):
            self._invoke(0)
        times = []
        for _ in range(LATENCY_RUNS):
            t0 = time.perf_counter()
            self._invoke(0)
            times.append((time.perf_counter() - t0) * 1000)
        return float(np.median(times))


def _io_layout(profile: Profile) -> str:
    return "nhwc" if profile.raw["runtime"].get("layout", "NHWC") == "NHWC" else "nchw"


def _target_reasons(path: Path, profile: Profile) -> tuple[list[str], dict]:
    """What the profile's runtime cannot run in the artifact (op versions, allowlist, TFLM kernels,
    types, tensor arena vs RAM budget), and the memory estimate; size is the gate's job."""
    from converters.tflite.arena import estimate
    from converters.tflite.compat import profile_issues
    from converters.tflite.reader import read_tflite

    info = read_tflite(path)
    issues = [i for i in profile_issues(info, profile) if i["what"] != "flash_budget"]
    return [f"{i['where']}: {i['reason']}" for i in issues], estimate(info, profile.raw["memory"]["word_bits"])


def _spec(d: dict, io_layout: str, output_layout: dict | None = None) -> dict:
    spec = {"name": d["name"], "dtype": np.dtype(d["dtype"]).name, "shape": [int(x) for x in d["shape"]],
            "layout": "NHWC" if io_layout == "nhwc" and len(d["shape"]) == 4 else "as-onnx"}
    scale, zp = d["quantization"]
    if scale:
        spec["quantization"] = {"scale": float(scale), "zero_point": int(zp)}
    for joined, entry in (output_layout or {}).items():      # a part of a split output (int8 I/O)
        names = [p["name"] for p in entry["parts"]]
        if d["name"] in names:
            spec["part_of"] = {"output": joined, "axis": entry["axis"], "index": names.index(d["name"])}
    return spec


def check_calibration_method(profile: Profile, method: str) -> None:
    """The TFLite writer calibrates with MinMax: refuse another named method instead of ignoring it."""
    if method not in ("auto", "minmax"):
        raise UsageError(f"--calibration-method {method} is not available for {profile.id} "
                         f"({profile.engine}): the TFLite writer calibrates with MinMax ranges",
                         hint="Use --calibration-method auto (or minmax) for TFLite profiles, or convert them "
                              "in a separate run from the ONNX profiles.")


def convert_tflite(src: Path, profile: Profile, out_dir: Path, *, precision: str, calibration: Dataset,
                   validation: Dataset, progress=lambda msg: None, task: str = "auto",
                   dynamic_batch: bool = False, calibration_method: str = "auto") -> dict:
    """Produce ``out_dir/<profile>/{model.tflite, golden.npz, report.json}``; return the report.

    The TFLite writer calibrates activations with MinMax ranges: ``calibration_method`` may be
    ``auto`` or ``minmax``; another named method is refused rather than silently replaced.

    ``task`` (``auto`` or one of ``converters.tasks.TASKS``) selects the task metric of the gate.
    ``dynamic_batch`` asks for a resizable batch axis inside the artifact (checked by running a
    batch of 3 against batch-1 runs; where a graph cannot, the report's ``batch.reason`` says why
    and the artifact keeps batch 1, served row by row by the agent)."""
    from converters.tflite import convert_onnx_to_tflite

    if profile.engine not in TFLITE_ENGINES:
        raise UsageError(f"profile {profile.id} runs {profile.engine}; this pipeline writes TFLite")
    check_calibration_method(profile, calibration_method)
    if dynamic_batch and (profile.raw["runtime"].get("static_shapes") or profile.engine == "tflite-micro"):
        raise UsageError(f"profile {profile.id} needs static shapes: a resizable batch is not possible there",
                         hint="Drop --dynamic-batch; the agent serves batches row by row on batch-1 artifacts.")
    info = inspect_onnx(src)
    check_data(info, calibration, "calibration")
    check_data(info, validation, "validation")
    order = choose_precisions(profile, precision, RECIPES, "TFLite", fp32_fallback=False,
                              explicit_only=EXPLICIT_ONLY)
    io_layout = _io_layout(profile)
    shapes = {s["name"]: [1, *validation.inputs[s["name"]].shape[1:]] for s in info["inputs"]}
    source_bytes = src.read_bytes()
    dest = out_dir / profile.id
    log = StepLog(lambda step: progress(f"{profile.id}: {step}"))
    report: dict = {"profile": profile.id, "source": str(src), "source_sha256": hashlib.sha256(source_bytes).hexdigest(),
                    "source_bytes": len(source_bytes) + external_bytes(src), "source_opset": info["opset"], "opset": info["opset"],
                    "candidates": [], "threads": 1, "io_layout": io_layout, "fixed_input_shapes": shapes,
                    "calibration_method": "minmax", "calibration_samples": len(calibration),
                    "validation_samples": len(validation), "steps": log.steps}
    with tempfile.TemporaryDirectory(prefix="edgekit-tflite-") as tmp:
        tmp = Path(tmp)
        with log.step("reference fp32 (onnxruntime)"):
            reference = Candidate.load("fp32-reference", src, validation)
        report["reference_latency_ms"] = round(reference.latency_ms, 4)
        spec = resolve_task(task, reference.outputs, validation.labels is not None)
        report["task"] = spec.as_dict()
        progress(f"{profile.id}: task {spec.name} ({spec.reason})")
        built: dict[str, tuple[TfliteCandidate, dict, float]] = {}

        def build(prec: str) -> tuple[TfliteCandidate, dict, float]:
            if prec not in built:
                kind, int8_io = RECIPES[prec]
                path = tmp / f"{prec}.tflite"
                with log.step(f"build {prec}") as step:
                    conv = convert_onnx_to_tflite(src, path, precision=kind, io_layout=io_layout, input_shapes=shapes,
                                                  calibration=calibration.inputs if kind in CALIBRATED else None,
                                                  int8_io=int8_io, dynamic_batch=dynamic_batch,
                                                  op_allowlist=profile.raw["runtime"].get("op_allowlist", ()))
                with log.step(f"validate {prec}"):
                    cand = TfliteCandidate.load(prec, path, validation, io_layout, conv["output_layout"])
                built[prec] = (cand, conv, step["seconds"])
            return built[prec]

        baseline = build("fp32")[0]     # the latency baseline, measured in the same run
        chosen: TfliteCandidate | None = None
        for prec in order:
            cand, conv, convert_s = build(prec)
            entry = evaluate(cand, reference, validation, profile, spec)
            entry.update(convert_s=round(convert_s, 3), ops=conv["ops"], coverage=conv["coverage"],
                         batch=conv["batch"], **({"mixed": conv["mixed"]} if "mixed" in conv else {}),
                         tflite_fp32_latency_ms=round(baseline.latency_ms, 4),
                         speedup_vs_tflite_fp32=round(baseline.latency_ms / max(cand.latency_ms, 1e-9), 3))
            reasons = gate_reasons(entry, profile, allow_slower=True)
            if prec == "fp32":
                reasons += [f"{n}: fp32 max abs diff {m['max_abs_diff']:.3g} exceeds {FP32_MAX_REL_DIFF:g} x "
                            f"the output scale" for n, m in entry["outputs"].items()
                            if m["relative_max_diff"] > FP32_MAX_REL_DIFF]
            elif prec != order[-1] and slower(cand.latency_ms, baseline.latency_ms):   # a fallback remains
                reasons.append(f"slower than fp32 TFLite ({cand.latency_ms:.3f} ms vs {baseline.latency_ms:.3f} ms)")
            target, entry["memory"] = _target_reasons(cand.path, profile)
            entry["reasons"] = reasons + target
            entry["passed"] = not entry["reasons"]
            report["candidates"].append(entry)
            if entry["passed"]:
                chosen = cand
                break
            progress(f"{profile.id}: {prec} dropped: {'; '.join(entry['reasons'])}")
        if chosen is None:
            last = report["candidates"][-1]
            raise ParityError(f"no TFLite artifact for {profile.id} passed the parity gate: "
                              + "; ".join(last["reasons"]), report=report["candidates"])
        k = profile.validation["golden_vectors"]
        golden = parity.save_golden({n: v[:k] for n, v in chosen.native_inputs.items()},
                                    {n: v[:k] for n, v in chosen.native_outputs.items()})
        remove_tree(dest)
        dest.mkdir(parents=True)
        atomic_write_bytes(dest / "model.tflite", chosen.path.read_bytes())
        atomic_write_bytes(dest / "golden.npz", golden)
        # on-device drift reference, in the layout/dtype the device is fed (edgekit.core.drift)
        atomic_write_json(dest / drift.MEMBER, drift.reference(chosen.native_inputs, chosen.native_outputs))
    artifact = (dest / "model.tflite").read_bytes()
    report.update(precision=chosen.name, artifact="model.tflite", artifact_bytes=len(artifact),
                  artifact_sha256=hashlib.sha256(artifact).hexdigest(), engine=profile.engine, format="tflite",
                  golden_vectors=k, inputs=[_spec(d, io_layout) for d in chosen._in],
                  batch=built[chosen.name][1]["batch"],
                  outputs=[_spec(d, io_layout, chosen.output_layout) for d in chosen._out])
    if chosen.output_layout:
        report["output_layout"] = chosen.output_layout
    report["size_ratio"] = round(report["source_bytes"] / report["artifact_bytes"], 3)
    atomic_write_json(dest / "report.json", report)
    return report
