"""``edgekit inspect``: describe a .tflite or .onnx file and what a target profile cannot run.

What it does: for TFLite, ops with versions, tensors with quantization parameters, size and the
arena / peak-memory estimate (:mod:`converters.tflite.arena`), plus the problems a profile's
runtime has with it (:mod:`converters.tflite.compat`) or an explicit TF Lite runtime version
(e.g. ``tflite-runtime`` 2.14). For ONNX, opset, ops, I/O, weight bytes, and per profile: ops the
TFLite writer cannot translate (tflite profiles) or an opset outside the runtime's range.

What it does not do: run or convert the model.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.core.errors import ModelError, UsageError


def inspect_file(path: Path, profile=None, runtime: str | None = None, word_bits: int | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix == ".tflite" or head[4:8] == b"TFL3":
        return _inspect_tflite(path, profile, runtime, word_bits)
    if path.suffix == ".onnx":
        if runtime:
            raise UsageError("--runtime applies to .tflite files; use --profile for ONNX")
        return _inspect_onnx(path, profile)
    raise UsageError(f"{path.name}: inspect reads .tflite and .onnx files")


def _inspect_tflite(path: Path, profile, runtime: str | None, word_bits: int | None) -> dict:
    from converters.tflite.arena import estimate
    from converters.tflite.compat import profile_issues, version_issues
    from converters.tflite.reader import read_tflite
    from converters.tflite.runtime_versions import parse_version

    info = read_tflite(path)
    bits = word_bits or (profile.raw["memory"]["word_bits"] if profile else 64)
    issues = profile_issues(info, profile) if profile else []
    if runtime:
        version = parse_version(runtime.split("==")[-1].split("-")[-1])
        if len(version) < 2:
            raise UsageError(f"--runtime {runtime!r}: give a TF Lite version such as 2.14")
        issues += version_issues(info, version, f"TF Lite {'.'.join(map(str, version))}")
    main = info["graphs"][0]
    report = {k: v for k, v in info.items() if k != "graphs"}
    report.update(tensors=main["tensors"], operators=len(main["operators"]),
                  memory=estimate(info, bits), profile=profile.id if profile else None, runtime=runtime,
                  issues=issues)
    return report


def _inspect_onnx(path: Path, profile) -> dict:
    import onnx

    from converters.onnx_pipeline import inspect_onnx

    info = inspect_onnx(path)
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    weights = sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    report = {"format": "onnx", "name": path.name, "size_bytes": path.stat().st_size, "opset": info["opset"],
              "ops": [{"op": k, "count": v} for k, v in sorted(counts.items())], "nodes": info["nodes"],
              "inputs": info["inputs"], "outputs": info["outputs"], "weights_bytes": int(weights),
              "profile": profile.id if profile else None, "issues": []}
    if profile is None:
        return report
    static = profile.raw["runtime"].get("static_shapes") or profile.engine in ("tflite", "tflite-micro")
    for spec in info["inputs"]:
        dynamic = [d for d in spec["shape"][1:] if not isinstance(d, int) or d <= 0]
        if dynamic and static:
            report["issues"].append({"where": f"input {spec['name']!r} {spec['shape']}", "what": "dynamic_shape",
                                     "reason": f"dimensions {dynamic} are not fixed and {profile.id} needs static "
                                               "shapes: edgekit convert fixes them from the shape of the "
                                               "--validation data, so pass data of the size the device will see"})
    if profile.engine in ("tflite", "tflite-micro"):
        from converters.tflite import supported_onnx_ops

        ok = set(supported_onnx_ops())
        report["issues"] += [{"where": f"{n.op_type} node {n.name or n.output[0]!r}", "what": "unsupported_op",
                              "reason": "edgekit's TFLite writer has no translation for it"}
                             for n in model.graph.node if n.op_type not in ok]
    elif profile.engine == "onnxruntime":
        rt = profile.raw["runtime"]
        lo, hi = rt.get("opset_min", 1), rt.get("opset_max", 10**6)
        if not lo <= info["opset"] <= hi:
            report["issues"].append({"where": f"opset {info['opset']}", "what": "opset",
                                     "reason": f"{profile.id} runs opsets {lo}..{hi}"})
    if report["size_bytes"] > profile.budgets["max_model_bytes"]:
        report["issues"].append({"where": "model file", "what": "flash_budget",
                                 "reason": f"{report['size_bytes']} bytes > max_model_bytes "
                                           f"{profile.budgets['max_model_bytes']}"})
    return report


def issues_error(report: dict) -> ModelError:
    from edgekit.core.errors import TargetFitError, UnsupportedOpError

    kinds = {i["what"] for i in report["issues"]}
    cls = UnsupportedOpError if kinds & {"op_version", "op_not_supported", "op_not_allowed", "unsupported_op",
                                         "custom_op", "dtype"} else TargetFitError
    target = report["profile"] or f"TF Lite {report['runtime']}"
    return cls(f"{report['name']}: {len(report['issues'])} problem(s) for {target}: "
               + "; ".join(f"{i['where']}: {i['reason']}" for i in report["issues"]), issues=report["issues"])
