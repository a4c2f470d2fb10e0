"""Read any .tflite flatbuffer (ours or third-party) into a plain description, without running it.

What it does: checks the ``TFL3`` identifier and every index the file holds (operator codes,
tensors, buffers, buffer extents), and returns operators with builtin names and versions,
tensors with shape / shape signature / dtype / byte size / constant-ness / quantization
(per-axis summarized), graph inputs and outputs for each subgraph, custom ops and metadata
names. A damaged file raises :class:`ModelError` naming the first bad table and what to do.

What it does not do: execute the model (``converters.tflite.runtime``), plan memory
(:mod:`.arena`) or judge runtime compatibility (:mod:`.compat`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.core.errors import ModelError

DTYPE_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "STRING": 1, "BOOL": 1,
               "INT16": 2, "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8,
               "RESOURCE": 0, "VARIANT": 0, "UINT32": 4, "UINT16": 2, "INT4": 1, "BFLOAT16": 2}


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


class _Corrupt(Exception):
    pass


def read_tflite(source: str | Path | bytes, name: str | None = None) -> dict:
    """Describe a TFLite model given as a path or bytes; raise ModelError if it is not one."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"{path} does not exist") from None
        name = name or path.name
    else:
        data, name = bytes(source), name or "<bytes>"
    hint = "Re-export or re-download the model; a truncated copy or a non-TFLite file cannot be read."
    if len(data) < 16 or data[4:8] != b"TFL3":
        got = data[4:8] if len(data) >= 8 else data[:8]
        raise ModelError(f"{name} is not a TFLite flatbuffer (file identifier {got!r}, expected b'TFL3')", hint=hint)
    try:
        return _read(data, name)
    except _Corrupt as exc:
        raise ModelError(f"{name} is a damaged TFLite file: {exc}", hint=hint) from None
    except Exception as exc:  # flatbuffers reads past the end as struct/index errors
        raise ModelError(f"{name} is a damaged TFLite file: cannot parse it ({type(exc).__name__}: {exc})",
                         hint=hint) from None


def _read(data: bytes, name: str) -> dict:
    import tflite

    builtin = _enum_names(tflite.BuiltinOperator)
    types = _enum_names(tflite.TensorType)
    m = tflite.Model.GetRootAsModel(data, 0)
    codes = []
    for k in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(k)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        op = f"CUSTOM:{custom.decode(errors='replace')}" if code == tflite.BuiltinOperator.CUSTOM else builtin.get(code)
        if op is None:
            raise _Corrupt(f"operator code {k} has unknown builtin code {code}")
        codes.append((op, oc.Version()))
    buffers = []
    for k in range(m.BuffersLength()):
        b = m.Buffers(k)
        size = b.DataLength() or (b.Size() if b.Offset() > 1 else 0)
        if b.DataLength() and b.DataAsNumpy().size != b.DataLength():     # numpy raises past the end
            raise _Corrupt(f"buffer {k} is cut short")
        if b.Offset() > 1 and b.Offset() + b.Size() > len(data):
            raise _Corrupt(f"buffer {k} points past the end of the file ({b.Offset()} + {b.Size()} > {len(data)})")
        buffers.append(size)
    subgraphs = [_subgraph(m.Subgraphs(s), s, codes, buffers, types) for s in range(m.SubgraphsLength())]
    if not subgraphs:
        raise _Corrupt("it has no subgraph")
    metadata = [m.Metadata(k).Name().decode(errors="replace") for k in range(m.MetadataLength())]
    ops: dict[tuple[str, int], int] = {}
    for sg in subgraphs:
        for o in sg["operators"]:
            ops[(o["op"], o["version"])] = ops.get((o["op"], o["version"]), 0) + 1
    main = subgraphs[0]
    return {
        "format": "tflite", "name": name, "size_bytes": len(data), "schema_version": m.Version(),
        "description": (m.Description() or b"").decode(errors="replace"),
        "subgraphs": len(subgraphs), "metadata": metadata,
        "ops": [{"op": op, "version": v, "count": n} for (op, v), n in sorted(ops.items())],
        "custom_ops": sorted({op[7:] for op, _ in codes if op.startswith("CUSTOM:")}),
        "inputs": [main["tensors"][i] for i in main["inputs"]],
        "outputs": [main["tensors"][i] for i in main["outputs"]],
        "weights_bytes": sum(t["bytes"] for sg in subgraphs for t in sg["tensors"] if t["constant"]),
        "graphs": subgraphs,
    }


def _subgraph(sg, s: int, codes, buffers, types) -> dict:
    tensors = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        dtype = types.get(t.Type())
        if dtype is None:
            raise _Corrupt(f"subgraph {s} tensor {i} has unknown type {t.Type()}")
        if not 0 <= t.Buffer() < max(len(buffers), 1):
            raise _Corrupt(f"subgraph {s} tensor {i} ({t.Name()!r}) uses buffer {t.Buffer()} of {len(buffers)}")
        shape = [int(x) for x in t.ShapeAsNumpy()] if t.ShapeLength() else []
        sig = [int(x) for x in t.ShapeSignatureAsNumpy()] if t.ShapeSignatureLength() else shape
        n = int(np.prod([max(d, 1) for d in shape])) if shape else 1
        entry = {"index": i, "name": (t.Name() or b"").decode(errors="replace"), "shape": shape,
                 "shape_signature": sig, "dtype": dtype.lower(), "bytes": n * DTYPE_BYTES.get(dtype, 1),
                 "constant": bool(buffers and buffers[t.Buffer()] > 0), "variable": bool(t.IsVariable())}
        if t.Sparsity() is not None:
            entry["sparse"] = True
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            scale, zp = q.ScaleAsNumpy(), (q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1))
            entry["quantization"] = ({"scale": float(scale[0]), "zero_point": int(zp[0])} if scale.size == 1 else
                                     {"axis": q.QuantizedDimension(), "channels": int(scale.size),
                                      "scale_min": float(scale.min()), "scale_max": float(scale.max())})
        tensors.append(entry)
    operators = []
    for k in range(sg.OperatorsLength()):
        o = sg.Operators(k)
        if not 0 <= o.OpcodeIndex() < len(codes):
            raise _Corrupt(f"subgraph {s} operator {k} uses operator code {o.OpcodeIndex()} of {len(codes)}")
        ins = [int(x) for x in o.InputsAsNumpy()] if o.InputsLength() else []
        outs = [int(x) for x in o.OutputsAsNumpy()] if o.OutputsLength() else []
        bad = [x for x in ins + outs if not -1 <= x < len(tensors)]
        if bad:
            raise _Corrupt(f"subgraph {s} operator {k} ({codes[o.OpcodeIndex()][0]}) refers to tensor {bad[0]} "
                           f"of {len(tensors)}")
        op, version = codes[o.OpcodeIndex()]
        operators.append({"index": k, "op": op, "version": version, "inputs": ins, "outputs": outs})
    ins = [int(x) for x in sg.InputsAsNumpy()] if sg.InputsLength() else []
    outs = [int(x) for x in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
    if any(not 0 <= x < len(tensors) for x in ins + outs):
        raise _Corrupt(f"subgraph {s} lists an input/output tensor outside its {len(tensors)} tensors")
    return {"name": (sg.Name() or b"").decode(errors="replace"), "tensors": tensors, "operators": operators,
            "inputs": ins, "outputs": outs}
