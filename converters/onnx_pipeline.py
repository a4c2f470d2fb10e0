"""ONNX artifacts for onnxruntime profiles: pre-process, build precision candidates, gate, write.

For each profile this module prepares the graph (``preprocess``), checks the profile can run it
(``checks``), builds candidates in the profile's preferred order (``recipes``; ``auto`` keeps the
first one that passes the parity gate and budgets and is not slower than fp32, a forced
precision that fails raises ``ParityError`` with the numbers), and writes
``out_dir/<profile>/{model.onnx, golden.npz, report.json}`` only when everything succeeded.
The source file is never modified; scratch work happens in a temporary directory that is always
removed. Not here: TFLite output (``converters.tflite``), report rendering (the CLI).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from edgekit.core import drift, parity
from edgekit.core.atomic import atomic_write_bytes, atomic_write_json, remove_tree
from edgekit.core.errors import ModelError, ParityError, UsageError
from edgekit.core.profiles import Profile

from . import calibration_choice, recipes, tasks
from .checks import budget_verdicts, check_source, verdict_reasons
from .data import Dataset
from .gate import Candidate, choose_precisions, evaluate, fidelity_reasons, gate_reasons
from .preprocess import external_bytes, load_source, prepare
from .steps import StepLog

ONNX_PRECISIONS = recipes.PRECISIONS
IDEAL_RATIO = {"fp32": 1.0, "fp16": 2.0, "int8-dynamic": 4.0, "int8-static": 4.0}


def _signature(values) -> list[dict]:
    import onnx

    out = []
    for v in values:
        t = v.type.tensor_type
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                    "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                              for d in t.shape.dim]})
    return out


def describe(model) -> dict:
    from .preprocess import opset_of

    inits = {i.name for i in model.graph.initializer}
    return {"opset": opset_of(model), "inputs": _signature([i for i in model.graph.input if i.name not in inits]),
            "outputs": _signature(model.graph.output), "ops": sorted({n.op_type for n in model.graph.node}),
            "nodes": len(model.graph.node)}


def inspect_onnx(path: Path) -> dict:
    """Signature, opset and ops of an ONNX file; raises ModelError for anything edgekit cannot take."""
    return describe(load_source(Path(path)))


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _try_candidate(prec: str, prepared: Path, tmp: Path, profile: Profile, calibration: Dataset,
                   validation: Dataset, reference: Candidate, log: StepLog, *, method: str,
                   forced: bool, progress, source_bytes: int,
                   task: tasks.TaskSpec | None = None) -> tuple[dict, Candidate | None, Path]:
    path = tmp / (f"{prec}.onnx" if prec != "int8-static" else f"{prec}-{method}.onnx")
    with log.step(f"build {prec}") as build:
        if prec == "int8-static":
            build["status"] = f"calibration {method}"
        try:
            details = recipes.build(prec, prepared, path, profile, calibration, method,
                                    tick=lambda done, total: progress(f"{profile.id}: calibrating {done}/{total}"))
        except recipes.RecipeSkipped as exc:
            if forced:
                raise ModelError(f"--precision {prec} does not apply to this model: {exc}") from None
            build["status"] = f"skipped: {exc}"
            return {"precision": prec, "passed": False, "skipped": True, "reasons": [str(exc)]}, None, path
    with log.step(f"validate {prec}"):
        cand = Candidate.load(prec, path, validation)
        # time fp32 again right after the candidate, so machine load drifts hit both alike
        reference.latency_ms = reference.measure_latency(validation)
        entry = evaluate(cand, reference, validation, profile, task)
        verdicts = budget_verdicts(path, profile)
    if prec == "int8-static":
        entry["calibration_method"] = method
    if details:
        entry["float_prefix"] = details   # static int8: the sensitivity search (converters.sensitivity)
    entry.update(convert_s=build["seconds"], convert_peak_rss_bytes=build["peak_rss_bytes"], budgets=verdicts,
                 size_ratio=round(source_bytes / entry["bytes"], 3),
                 ideal_size_ratio=IDEAL_RATIO[prec])
    entry["reasons"] = (gate_reasons(entry, profile, allow_slower=prec == "fp32" or forced)
                        + verdict_reasons(verdicts))
    entry["passed"] = not entry["reasons"]
    entry["fidelity_passed"] = not fidelity_reasons(entry, profile)  # what another calibration could change
    return entry, cand, path


def convert_onnx(src: Path, profile: Profile, out_dir: Path, *, precision: str, calibration: Dataset,
                 validation: Dataset, progress=lambda msg: None, input_shapes: dict[str, list[int]] | None = None,
                 calibration_method: str = calibration_choice.AUTO, task: str = "auto") -> dict:
    """Produce ``out_dir/<profile>/{model.onnx, golden.npz, report.json}``; return the report.

    ``task`` (``auto`` or one of ``converters.tasks.TASKS``) selects the task metric of the gate.
    ``calibration_method`` ``auto``: MinMax, plus Percentile when MinMax misses the profile's
    min_cosine on validation, keeping the better (``converters.calibration_choice``)."""
    src = Path(src)
    if profile.engine != "onnxruntime":
        raise UsageError(f"profile {profile.id} runs {profile.engine}; this pipeline writes ONNX for onnxruntime")
    if calibration_method not in (calibration_choice.AUTO, *recipes.CALIBRATION_METHODS):
        raise UsageError(f"unknown calibration method {calibration_method!r}; use one of "
                         f"{', '.join(recipes.CALIBRATION_METHODS)} or {calibration_choice.AUTO}")
    wanted = choose_precisions(profile, precision, ONNX_PRECISIONS, "ONNX", fp32_fallback=True)
    info = inspect_onnx(src)
    check_data(info, calibration, "calibration")
    check_data(info, validation, "validation")
    for name, shape in (input_shapes or {}).items():
        for what, data in (("calibration", calibration), ("validation", validation)):
            if name in data.inputs and list(data.inputs[name].shape[1:]) != shape[1:]:
                raise UsageError(f"{what} samples for {name!r} have shape {list(data.inputs[name].shape[1:])}; "
                                 f"--input-shape fixes it to {shape} (first axis = batch)",
                                 hint="Make --input-shape match the data (or resize the data).")
    log = StepLog(lambda step: progress(f"{profile.id}: {step}"))
    dest = out_dir / profile.id
    report: dict = {"profile": profile.id, "source": str(src), "source_sha256": _sha256(src),
                    # with external data: the .onnx plus its weight files (what the size ratio compares)
                    "source_bytes": src.stat().st_size + external_bytes(src), "source_opset": info["opset"],
                    "candidates": [],
                    "threads": 1, "calibration_method": calibration_method, "calibration_samples": len(calibration),
                    "validation_samples": len(validation), "steps": log.steps}
    with tempfile.TemporaryDirectory(prefix="edgekit-convert-") as tmp:
        tmp = Path(tmp)
        prep = prepare(src, tmp, profile, log, input_shapes=input_shapes,
                       sample_shapes={k: v.shape for k, v in validation.inputs.items()})
        import onnx

        prepared_model = onnx.load(str(prep.path), load_external_data=False)
        check_source(prepared_model, profile)
        sig = describe(prepared_model)
        report.update(opset=prep.opset, fixed_input_shapes=prep.fixed_shapes, inputs=sig["inputs"],
                      outputs=sig["outputs"])
        with log.step("reference fp32"):
            reference = Candidate.load("fp32-reference", src, validation)
        report["reference_latency_ms"] = round(reference.latency_ms, 4)
        spec = tasks.resolve(task, reference.outputs, validation.labels is not None)
        report["task"] = spec.as_dict()
        progress(f"{profile.id}: task {spec.name} ({spec.reason})")
        chosen = last = None
        for prec in wanted:
            tried = []
            for method in calibration_choice.methods_for(prec, calibration_method):
                tried.append(_try_candidate(prec, prep.path, tmp, profile, calibration, validation, reference, log,
                                            method=method, forced=precision != "auto", progress=progress,
                                            source_bytes=report["source_bytes"], task=spec))
                if calibration_choice.good_enough(tried[-1][0], profile.validation["min_cosine"]):
                    break
            keep = calibration_choice.best([t[0] for t in tried])
            for i, (entry, _, _) in enumerate(tried):
                if len(tried) > 1:   # the default static int8 path built more than one calibration method
                    entry["kept"] = i == keep
                report["candidates"].append(entry)
            last, cand, path = tried[keep]
            if last["passed"]:
                chosen = (cand, path)
                if "calibration_method" in last:
                    report["calibration_method"] = last["calibration_method"]
                break
        if chosen is None:
            raise ParityError(f"no artifact for {profile.id} passed the parity gate: " + "; ".join(last["reasons"]),
                              report=report["candidates"])
        cand, path = chosen
        k = profile.validation["golden_vectors"]
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{profile.id}.partial-", dir=out_dir))
        try:
            shutil.copy(path, stage / "model.onnx")
            gold_in = {n: v[:k] for n, v in validation.inputs.items()}
            atomic_write_bytes(stage / "golden.npz",
                               parity.save_golden(gold_in, {n: v[:k] for n, v in cand.outputs.items()}))
            # reference distribution for on-device drift (shipped in the bundle, edgekit.core.drift)
            atomic_write_json(stage / drift.MEMBER, drift.reference(validation.inputs, cand.outputs))
            report.update(precision=cand.name, artifact="model.onnx", artifact_bytes=(stage / "model.onnx").stat().st_size,
                          artifact_sha256=_sha256(stage / "model.onnx"), engine="onnxruntime", format="onnx",
                          golden_vectors=k)
            report["size_ratio"] = round(report["source_bytes"] / report["artifact_bytes"], 3)
            atomic_write_json(stage / "report.json", report)
            remove_tree(dest)
            os.replace(stage, dest)
        except BaseException:
            remove_tree(stage)
            raise
    return report
