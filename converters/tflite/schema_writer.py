"""In-memory TFLite model representation and its serializer to flatbuffer bytes.

What it does: holds one subgraph (tensors with shape / dtype / constant data / quantization,
operators with a builtin code and explicit options, graph inputs and outputs) and writes it as a
``TFL3`` flatbuffer (schema version 3) with the ``tflite`` package's prefixed builder functions:
buffer 0 empty, both ``builtin_code`` and ``deprecated_builtin_code`` set, operator versions from
:mod:`.op_versions`, every option written explicitly (``ForceDefaults``), constant buffers 16-byte
aligned and copied in one block, and a ``serving_default`` SignatureDef naming the I/O tensors.

What it does not do: read models back, write more than one subgraph, custom ops, sparsity, or
models over 2 GiB (raises :class:`ModelError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.core.errors import ModelError

from .op_versions import op_version
from .options import write_options

# TensorType enum values of the TFLite schema.
TENSOR_TYPES = {"float32": 0, "float16": 1, "int32": 2, "uint8": 3, "int64": 4, "bool": 6,
                "int16": 7, "int8": 9, "float64": 10}
_MAX_BYTES = (1 << 31) - 1


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point); per-axis when len(scale) > 1."""

    scale: np.ndarray
    zero_point: np.ndarray
    dim: int = 0

    @classmethod
    def make(cls, scale, zero_point, dim: int = 0) -> "Quant":
        s = np.atleast_1d(np.asarray(scale, dtype=np.float32))
        z = np.atleast_1d(np.asarray(zero_point, dtype=np.int64))
        if z.size == 1 and s.size > 1:
            z = np.full(s.shape, int(z[0]), dtype=np.int64)
        return cls(s, z, dim)


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    data: np.ndarray | None = None
    quant: Quant | None = None
    signature: tuple[int, ...] | None = None     # shape_signature (-1 = resizable), when it differs

    @property
    def is_const(self) -> bool:
        return self.data is not None


@dataclass
class Operator:
    op: str                      # BuiltinOperator name, e.g. "CONV_2D"
    inputs: list[int]            # tensor indices; -1 = optional input left out
    outputs: list[int]
    options: dict = field(default_factory=dict)


@dataclass
class Model:
    tensors: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = "edgekit onnx->tflite"

    def add_tensor(self, name: str, shape, dtype: str = "float32", data: np.ndarray | None = None,
                   quant: Quant | None = None) -> int:
        if dtype not in TENSOR_TYPES:
            raise ModelError(f"tensor {name!r}: dtype {dtype} has no TFLite equivalent")
        if data is not None:
            data = np.asarray(data, dtype=np.dtype(dtype), order="C")
            shape = data.shape
        self.tensors.append(Tensor(name, tuple(int(d) for d in shape), dtype, data, quant))
        return len(self.tensors) - 1

    def add_const(self, name: str, data: np.ndarray, dtype: str | None = None) -> int:
        data = np.asarray(data)
        return self.add_tensor(name, data.shape, dtype or str(data.dtype), data)

    def add_op(self, op: str, inputs, outputs, **options) -> int:
        self.operators.append(Operator(op, [int(i) for i in inputs], [int(o) for o in outputs], options))
        return len(self.operators) - 1

    def producers(self) -> dict[int, int]:
        return {t: i for i, op in enumerate(self.operators) for t in op.outputs}

    def consumers(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, op in enumerate(self.operators):
            for t in op.inputs:
                if t >= 0:
                    out.setdefault(t, []).append(i)
        return out

    def prune(self) -> None:
        """Drop tensors that no operator or graph I/O references (renumbering indices)."""
        used = set(self.inputs) | set(self.outputs)
        for op in self.operators:
            used.update(t for t in op.inputs + op.outputs if t >= 0)
        keep = [i for i in range(len(self.tensors)) if i in used]
        remap = {old: new for new, old in enumerate(keep)}
        self.tensors = [self.tensors[i] for i in keep]
        for op in self.operators:
            op.inputs = [remap[t] if t >= 0 else -1 for t in op.inputs]
            op.outputs = [remap[t] for t in op.outputs]
        self.inputs = [remap[t] for t in self.inputs]
        self.outputs = [remap[t] for t in self.outputs]


def _int_vector(b, start_fn, values, prepend) -> int:
    start_fn(b, len(values))
    for v in reversed(values):
        prepend(int(v))
    return b.EndVector()


def _offsets_vector(b, start_fn, offsets) -> int:
    start_fn(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _aligned_bytes(b, raw: bytes | memoryview, alignment: int = 16) -> int:
    n = len(raw)
    b.StartVector(1, n, alignment)
    b.head = b.head - n
    b.Bytes[b.head:b.head + n] = raw
    b.vectorNumElems = n
    return b.EndVector()


def _quantization(b, tfl, q: Quant) -> int:
    scale = b.CreateNumpyVector(np.asarray(q.scale, dtype="<f4"))
    zp = b.CreateNumpyVector(np.asarray(q.zero_point, dtype="<i8"))
    tfl.QuantizationParametersStart(b)
    tfl.QuantizationParametersAddScale(b, scale)
    tfl.QuantizationParametersAddZeroPoint(b, zp)
    tfl.QuantizationParametersAddQuantizedDimension(b, int(q.dim))
    return tfl.QuantizationParametersEnd(b)


def serialize(model: Model) -> bytes:
    """The model as TFLite flatbuffer bytes."""
    import flatbuffers
    import tflite as tfl
    from tflite.BuiltinOperator import BuiltinOperator

    const_bytes = sum(t.data.nbytes for t in model.tensors if t.data is not None)
    if const_bytes > _MAX_BYTES - (1 << 20):
        raise ModelError(f"constant data of {const_bytes} bytes does not fit a 2 GiB flatbuffer")
    b = flatbuffers.Builder(const_bytes + 64 * 1024 + 256 * len(model.tensors))

    # Buffers: 0 is the empty sentinel, then one per constant tensor.
    buffer_offsets, tensor_buffer = [], {}
    tfl.BufferStart(b)
    buffer_offsets.append(tfl.BufferEnd(b))
    for i, t in enumerate(model.tensors):
        if t.data is None:
            continue
        raw = memoryview(np.ascontiguousarray(t.data).astype(t.data.dtype.newbyteorder("<"), copy=False)
                         .view(np.uint8).ravel())
        vec = _aligned_bytes(b, raw)
        tfl.BufferStart(b)
        tfl.BufferAddData(b, vec)
        tensor_buffer[i] = len(buffer_offsets)
        buffer_offsets.append(tfl.BufferEnd(b))

    tensor_offsets = []
    for i, t in enumerate(model.tensors):
        name = b.CreateString(t.name)
        shape = _int_vector(b, tfl.TensorStartShapeVector, t.shape, b.PrependInt32)
        sig = (_int_vector(b, tfl.TensorStartShapeSignatureVector, t.signature, b.PrependInt32)
               if t.signature is not None else None)
        quant = _quantization(b, tfl, t.quant) if t.quant is not None else None
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, shape)
        if sig is not None:
            tfl.TensorAddShapeSignature(b, sig)
        tfl.TensorAddType(b, TENSOR_TYPES[t.dtype])
        tfl.TensorAddBuffer(b, tensor_buffer.get(i, 0))
        tfl.TensorAddName(b, name)
        if quant is not None:
            tfl.TensorAddQuantization(b, quant)
        tensor_offsets.append(tfl.TensorEnd(b))

    # Operator codes: one per (op, version) pair, in first-use order.
    code_index: dict[tuple[str, int], int] = {}
    op_codes = []
    for op in model.operators:
        key = (op.op, op_version(model, op))
        op_codes.append(code_index.setdefault(key, len(code_index)))

    b.ForceDefaults(True)   # every option explicit: schema defaults such as stride 0 are unusable
    operator_offsets = []
    for op, code in zip(model.operators, op_codes):
        opt_type, opt_off = write_options(b, op.op, op.options)
        ins = _int_vector(b, tfl.OperatorStartInputsVector, op.inputs, b.PrependInt32)
        outs = _int_vector(b, tfl.OperatorStartOutputsVector, op.outputs, b.PrependInt32)
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, code)
        tfl.OperatorAddInputs(b, ins)
        tfl.OperatorAddOutputs(b, outs)
        if opt_off is not None:
            tfl.OperatorAddBuiltinOptionsType(b, opt_type)
            tfl.OperatorAddBuiltinOptions(b, opt_off)
        operator_offsets.append(tfl.OperatorEnd(b))
    b.ForceDefaults(False)

    code_offsets = []
    for (name, version) in code_index:
        code = getattr(BuiltinOperator, name)
        tfl.OperatorCodeStart(b)
        tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tfl.OperatorCodeAddBuiltinCode(b, code)
        tfl.OperatorCodeAddVersion(b, version)
        code_offsets.append(tfl.OperatorCodeEnd(b))

    tensors_vec = _offsets_vector(b, tfl.SubGraphStartTensorsVector, tensor_offsets)
    inputs_vec = _int_vector(b, tfl.SubGraphStartInputsVector, model.inputs, b.PrependInt32)
    outputs_vec = _int_vector(b, tfl.SubGraphStartOutputsVector, model.outputs, b.PrependInt32)
    ops_vec = _offsets_vector(b, tfl.SubGraphStartOperatorsVector, operator_offsets)
    sg_name = b.CreateString("main")
    tfl.SubGraphStart(b)
    tfl.SubGraphAddTensors(b, tensors_vec)
    tfl.SubGraphAddInputs(b, inputs_vec)
    tfl.SubGraphAddOutputs(b, outputs_vec)
    tfl.SubGraphAddOperators(b, ops_vec)
    tfl.SubGraphAddName(b, sg_name)
    subgraph = tfl.SubGraphEnd(b)

    signature = _signature(b, tfl, model)
    subgraphs_vec = _offsets_vector(b, tfl.ModelStartSubgraphsVector, [subgraph])
    codes_vec = _offsets_vector(b, tfl.ModelStartOperatorCodesVector, code_offsets)
    buffers_vec = _offsets_vector(b, tfl.ModelStartBuffersVector, buffer_offsets)
    sigs_vec = _offsets_vector(b, tfl.ModelStartSignatureDefsVector, [signature])
    desc = b.CreateString(model.description)
    tfl.ModelStart(b)
    tfl.ModelAddVersion(b, 3)
    tfl.ModelAddOperatorCodes(b, codes_vec)
    tfl.ModelAddSubgraphs(b, subgraphs_vec)
    tfl.ModelAddDescription(b, desc)
    tfl.ModelAddBuffers(b, buffers_vec)
    tfl.ModelAddSignatureDefs(b, sigs_vec)
    b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
    out = b.Output()
    if len(out) > _MAX_BYTES:
        raise ModelError(f"serialized model is {len(out)} bytes, over the 2 GiB flatbuffer limit")
    return bytes(out)


def _signature(b, tfl, model: Model) -> int:
    def tensor_maps(indices):
        offs = []
        for idx in indices:
            name = b.CreateString(model.tensors[idx].name)
            tfl.TensorMapStart(b)
            tfl.TensorMapAddName(b, name)
            tfl.TensorMapAddTensorIndex(b, idx)
            offs.append(tfl.TensorMapEnd(b))
        return offs

    ins = _offsets_vector(b, tfl.SignatureDefStartInputsVector, tensor_maps(model.inputs))
    outs = _offsets_vector(b, tfl.SignatureDefStartOutputsVector, tensor_maps(model.outputs))
    key = b.CreateString("serving_default")
    tfl.SignatureDefStart(b)
    tfl.SignatureDefAddInputs(b, ins)
    tfl.SignatureDefAddOutputs(b, outs)
    tfl.SignatureDefAddSignatureKey(b, key)
    tfl.SignatureDefAddSubgraphIndex(b, 0)
    return tfl.SignatureDefEnd(b)
