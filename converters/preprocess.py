"""Load-time checks and graph pre-processing of a source ONNX model, inside a scratch directory.

Order (each step timed by ``StepLog``): check the file (size, external data) → load → fix input
shapes (on request, when the profile needs static shapes, or when non-batch dims are dynamic)
→ opset upgrade (≥ 13, before per-channel QDQ) → onnxslim simplification (skipped with a reason
if it fails) → exact Conv/affine folds (``fold``) → onnxruntime offline BASIC optimization (kept only if it removes nodes) → shape
inference. The source file is never written. Quantization and profile checks live elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.core.errors import ModelError, UsageError
from edgekit.core.profiles import Profile

from .steps import StepLog

MAX_MODEL_BYTES = 2 * 1024**3          # protobuf's hard limit for one serialized ModelProto
MIN_OPSET = 7
QDQ_OPSET = 13                          # per-channel QuantizeLinear/DequantizeLinear need opset 13
_SHAPE_RE = re.compile(r"^([^:]+):(\d+(?:,\d+)*)$")


@dataclass
class Prepared:
    path: Path
    opset_source: int
    opset: int
    fixed_shapes: dict[str, list[int]] = field(default_factory=dict)


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, list[int]]:
    """``["images:1,3,640,640"]`` → ``{"images": [1, 3, 640, 640]}``."""
    out = {}
    for spec in specs:
        m = _SHAPE_RE.match(spec.strip())
        if not m:
            raise UsageError(f"--input-shape {spec!r} is not NAME:D1,D2,...",
                             hint="Example: --input-shape images:1,3,640,640")
        out[m.group(1)] = [int(d) for d in m.group(2).split(",")]
    return out


def opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def external_files(model, base: Path) -> dict[str, int]:
    """``{location: bytes}`` of the external data files ``model`` (loaded next to ``base``) reads.

    Raises ModelError when a file is missing or its location leaves the model's folder (a
    ``../`` location would let a model file read anything on the machine)."""
    from onnx.external_data_helper import uses_external_data

    files: dict[str, int] = {}
    root = base.resolve()
    for t in model.graph.initializer:
        if not uses_external_data(t):
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        if location in files:
            continue
        f = (base / location).resolve()
        if not location or root not in f.parents:
            raise ModelError(f"tensor {t.name!r} keeps its data at {location!r}, outside the model's folder {base}",
                             hint="External data files must sit next to the .onnx file (re-save the model with "
                                  "onnx.save(..., save_as_external_data=True, location='weights.bin')).")
        if not f.is_file():
            raise ModelError(f"the external data file {location} of tensor {t.name!r} is missing (looked in {base})",
                             hint="Keep the external data files next to the .onnx file, under the names it was "
                                  "saved with.")
        files[location] = f.stat().st_size
    return files


def external_bytes(path: Path) -> int:
    """Bytes of the external data files of the ONNX model at ``path`` (0 when it has none)."""
    import onnx

    return sum(external_files(onnx.load(str(path), load_external_data=False), path.parent).values())


def load_source(path: Path):
    """Load ``path`` as ONNX with every bad-input case mapped to a ModelError naming what to do."""
    import onnx

    size = path.stat().st_size
    gb = lambda n: f"{n / 1024**3:.2f} GB"  # noqa: E731
    limit = f"{MAX_MODEL_BYTES / 1024**3:g} GB"
    if size > MAX_MODEL_BYTES:
        raise ModelError(f"{path.name} is {gb(size)}; edgekit converts models up to {limit} (protobuf limit)",
                         hint="Split the model or export it with external data and quantize it with a "
                              "dedicated large-model tool; edge targets rarely fit > 2 GB anyway.",
                         bytes=size)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model: {exc}",
                         hint="Pass a .onnx file exported with torch.onnx.export or similar.") from None
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model: the graph has no nodes",
                         hint="Pass a .onnx file exported with torch.onnx.export or similar.")
    ext = sum(external_files(model, path.parent).values())
    if size + ext > MAX_MODEL_BYTES:
        raise ModelError(f"{path.name} with its external data is {gb(size + ext)} ({gb(ext)} in external files); "
                         f"edgekit converts models up to {limit} (protobuf limit of the graph it rewrites)",
                         hint="Edge targets rarely fit > 2 GB: prune or distil the model first, or split it into "
                              "parts that each convert on their own.", bytes=size + ext, external_bytes=ext)
    if ext:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ModelError(f"cannot read the external data of {path.name}: {exc}",
                             hint="Keep the external data files next to the .onnx file.") from None
    opset = opset_of(model)
    if opset < MIN_OPSET:
        raise ModelError(f"{path.name} uses opset {opset}; edgekit needs opset >= {MIN_OPSET}",
                         hint="Upgrade it first: python -c \"import onnx; from onnx import version_converter as v; "
                              f"onnx.save(v.convert_version(onnx.load('{path.name}'), 13), 'upgraded.onnx')\" "
                              "or re-export with a newer opset.", opset=opset)
    return model


def wanted_shapes(model, profile: Profile, requested: dict[str, list[int]],
                  sample_shapes: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
    """Input shapes to fix: requested ones, else (static profile or dynamic non-batch dims) 1 × sample shape."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    names = {i.name for i in inputs}
    unknown = sorted(set(requested) - names)
    if unknown:
        raise UsageError(f"--input-shape names {unknown}, but the model's inputs are {sorted(names)}")
    out = dict(requested)
    for i in inputs:
        dims = i.type.tensor_type.shape.dim
        dynamic = [k for k, d in enumerate(dims) if not d.HasField("dim_value")]
        if i.name in out or not dynamic or i.name not in sample_shapes:
            continue
        if profile.raw["runtime"]["static_shapes"] or any(k > 0 for k in dynamic):
            out[i.name] = [1, *sample_shapes[i.name][1:]]
    for name, shape in out.items():
        dims = next(i for i in inputs if i.name == name).type.tensor_type.shape.dim
        if len(dims) and len(dims) != len(shape):
            raise UsageError(f"--input-shape {name}:{','.join(map(str, shape))} has {len(shape)} dims; "
                             f"the model input has {len(dims)}")
    return out


def _fix_shapes(model, shapes: dict[str, list[int]]) -> None:
    for i in model.graph.input:
        if i.name in shapes:
            shp = i.type.tensor_type.shape
            while len(shp.dim):
                shp.dim.pop()
            for d in shapes[i.name]:
                shp.dim.add().dim_value = d
    # Output/intermediate shapes were computed for symbolic dims: let shape inference redo them.
    del model.graph.value_info[:]
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")


def _simplify(model, entry: dict):
    try:
        import onnxslim
    except ImportError:
        entry["status"] = "skipped: onnxslim is not installed (pip install edgekit[host])"
        return model
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
    except Exception as exc:  # simplification is an optimization: keep the graph we have
        entry["status"] = f"skipped: onnxslim failed ({type(exc).__name__}: {str(exc)[:200]})"
        return model
    entry.update(nodes_before=len(model.graph.node), nodes_after=len(slim.graph.node))
    return slim


def _ort_optimize(src: Path, dst: Path, entry: dict) -> bool:
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable: ONNX ops only
    opts.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["ConstantSharing"])
        before, after = len(onnx.load(str(src)).graph.node), len(onnx.load(str(dst)).graph.node)
    except Exception as exc:
        entry["status"] = f"skipped: onnxruntime could not optimize the graph ({str(exc)[:200]})"
        return False
    entry.update(nodes_before=before, nodes_after=after)
    if after >= before:
        entry["status"] = "skipped: no nodes removed"
        return False
    return True


def prepare(src: Path, workdir: Path, profile: Profile, log: StepLog, *,
            input_shapes: dict[str, list[int]] | None = None,
            sample_shapes: dict[str, tuple[int, ...]] | None = None) -> Prepared:
    """Write ``workdir/prepared.onnx`` from ``src`` and return where it is and what was done."""
    import onnx
    from onnx import version_converter

    with log.step("load"):
        model = load_source(src)
    source_opset = opset_of(model)
    shapes = wanted_shapes(model, profile, input_shapes or {}, sample_shapes or {})
    if shapes:
        with log.step("fix-input-shapes", shapes=shapes):
            _fix_shapes(model, shapes)
    target = max(QDQ_OPSET, profile.raw["runtime"].get("opset_min", 0))
    if source_opset < target:
        with log.step("upgrade-opset", source=source_opset, target=target):
            try:
                model = version_converter.convert_version(model, target)
            except Exception as exc:
                raise ModelError(f"cannot upgrade {src.name} from opset {source_opset} to {target}: {str(exc)[:300]}",
                                 hint=f"Re-export the model with opset >= {target}.") from None
    with log.step("simplify") as entry:
        model = _simplify(model, entry)
    with log.step("fold-affine") as entry:
        from .fold import fold_all

        entry.update(fold_all(model))
    staged = workdir / "staged.onnx"
    onnx.save(model, str(staged))
    with log.step("ort-offline-optimize") as entry:
        optimized = workdir / "ort-optimized.onnx"
        if _ort_optimize(staged, optimized, entry):
            staged = optimized
    with log.step("shape-inference"):
        model = onnx.load(str(staged))
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:
            raise ModelError(f"shape inference failed on {src.name}: {str(exc)[:300]}",
                             hint="Check the model with onnx.checker.check_model; fix or re-export it.") from None
        taken = {n.name for n in model.graph.node}
        for i, n in enumerate(model.graph.node):  # quantization excludes nodes by name
            if not n.name:
                n.name = next(c for c in (f"{n.op_type}_{i}", f"{n.op_type}_{i}_{len(taken)}") if c not in taken)
                taken.add(n.name)
        out = workdir / "prepared.onnx"
        onnx.save(model, str(out))
    return Prepared(out, source_opset, opset_of(model), shapes)
