"""Translation state shared by the ONNX op translators: values, layouts, and the handler registry.

What it does: maps every ONNX value to a TFLite tensor stored in some axis permutation of the
ONNX layout (``stored = onnx.transpose(perm)``; 4-D activations live in NHWC, perm
``(0, 2, 3, 1)``), hands out tensors in whatever permutation an operator needs (inserting a
TRANSPOSE, or a RESHAPE when only size-1 axes move), materializes constants on demand in any
layout, keeps "flattened NHWC" values lazy so a following FULLY_CONNECTED can absorb the
permutation into its weights, and fuses activations into the operator that produced their input.

What it does not do: know any ONNX operator (see the ``ops_*`` modules) or drive the graph walk
(see :mod:`.onnx_import`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .options import ACTIVATION
from .schema_writer import Model

NHWC = (0, 2, 3, 1)
HANDLERS: dict[str, Callable] = {}
# Operators with a fused_activation_function option.
_FUSABLE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "DIV",
            "TRANSPOSE_CONV", "CONCATENATION", "AVERAGE_POOL_2D", "MAX_POOL_2D"}


class NotConvertible(Exception):
    """Raised by a translator: this node cannot be expressed in TFLite (the message says why)."""


def handler(*op_types: str):
    def register(fn):
        for op in op_types:
            HANDLERS[op] = fn
        return fn
    return register


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def inverse(perm) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def tf_dtype(dtype) -> str:
    name = np.dtype(dtype).name
    return {"float64": "float32", "int64": "int32"}.get(name, name)


@dataclass
class Value:
    tensor: int
    perm: tuple[int, ...]
    flat_src: str | None = None          # lazy flatten of a permuted value: its source
    flat_perm: np.ndarray | None = None  # stored position j holds ONNX flat index flat_perm[j]
    producer: int | None = None          # index of the TFLite op that wrote it


class Context:
    def __init__(self, graph, model: Model) -> None:
        self.g = graph
        self.m = model
        self.values: dict[str, Value] = {}
        self._cache: dict[tuple, int] = {}
        self._names: set[str] = set()

    # ---- ONNX side -------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.g.shapes:
            raise NotConvertible(f"the shape of {name!r} is unknown after shape inference")
        return tuple(self.g.shapes[name])

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self.g.dtypes.get(name, np.float32))

    def const(self, name: str) -> np.ndarray | None:
        return self.g.consts.get(name) if name else None

    def need_const(self, node, k: int, what: str) -> np.ndarray:
        val = self.const(node.input[k]) if len(node.input) > k else None
        if val is None:
            raise NotConvertible(f"{what} (input {k}) must be a constant")
        return val

    @staticmethod
    def attr(node, name: str, default=None):
        from onnx.helper import get_attribute_value

        for a in node.attribute:
            if a.name == name:
                v = get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    # ---- TFLite side -----------------------------------------------------------------------
    def unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def new_tensor(self, name: str, stored_shape, dtype="float32") -> int:
        return self.m.add_tensor(self.unique(name), stored_shape, tf_dtype(dtype))

    def const_tensor(self, name: str, data: np.ndarray, dtype: str | None = None) -> int:
        data = np.asarray(data)
        dt = dtype or tf_dtype(data.dtype)
        digest = hashlib.sha1(np.ascontiguousarray(data).view(np.uint8).ravel()).hexdigest()
        key = ("const", name, dt, data.shape, digest)
        if key not in self._cache:
            self._cache[key] = self.m.add_const(self.unique(name), data.astype(dt), dt)
        return self._cache[key]

    def int32(self, name: str, values) -> int:
        return self.const_tensor(name, np.asarray(values, dtype=np.int32), "int32")

    def add_op(self, op: str, inputs, outputs, **options) -> int:
        return self.m.add_op(op, inputs, outputs, **options)

    def define(self, name: str, tensor: int, perm, producer: int | None = None) -> Value:
        v = Value(tensor, tuple(perm), producer=producer)
        self.values[name] = v
        return v

    def emit(self, op: str, inputs, out_name: str, perm, **options) -> int:
        """Add ``op`` writing ONNX value ``out_name`` stored in ``perm``; returns the op index."""
        shape = self.shape(out_name)
        t = self.new_tensor(out_name, [shape[p] for p in perm], self.dtype(out_name))
        k = self.add_op(op, inputs, [t], **options)
        self.define(out_name, t, perm, producer=k)
        return k

    def scratch(self, base: str, suffix: str, like: str | None = None, shape=None) -> str:
        """Name of a new intermediate ONNX-level value (shape of ``like`` unless given)."""
        name = f"{base}/{suffix}"
        self.g.shapes[name] = tuple(shape) if shape is not None else self.shape(like or base)
        self.g.dtypes[name] = self.dtype(like or base)
        return name

    def perm(self, name: str) -> tuple[int, ...]:
        v = self.values.get(name)
        return v.perm if v is not None and v.flat_src is None else identity(len(self.shape(name)))

    def tensor(self, name: str, perm=None, dtype: str | None = None) -> int:
        """Tensor index of ONNX value ``name`` stored in ``perm`` (default: as it is stored)."""
        const = self.const(name)
        if const is not None:
            p = tuple(perm) if perm is not None else identity(const.ndim)
            data = np.transpose(const, p) if const.ndim else const
            return self.const_tensor(name, data, dtype or tf_dtype(const.dtype))
        if name not in self.values:
            raise NotConvertible(f"input {name!r} is not produced by any translated node")
        v = self.values[name]
        if v.flat_src is not None:
            flat = Value(self._materialize_flat(name, v), identity(len(self.shape(name))))
            return flat.tensor if perm is None or tuple(perm) == flat.perm else self._relayout(name, flat, tuple(perm))
        if perm is None or tuple(perm) == v.perm:
            return v.tensor
        return self._relayout(name, v, tuple(perm))

    def _relayout(self, name: str, v: Value, perm: tuple[int, ...]) -> int:
        key = ("perm", name, perm)
        if key in self._cache:
            return self._cache[key]
        shape = self.shape(name)
        rel = [v.perm.index(p) for p in perm]          # new stored axis i = old stored axis rel[i]
        out = self.new_tensor(f"{name}/perm{''.join(map(str, perm))}", [shape[p] for p in perm],
                              self.m.tensors[v.tensor].dtype)
        moved = [a for a in rel if shape[v.perm[a]] != 1]
        if moved == sorted(moved):      # only size-1 axes move: a reshape is enough
            self.add_op("RESHAPE", [v.tensor, self.int32(f"{name}/shape", [shape[p] for p in perm])], [out])
        else:
            self.add_op("TRANSPOSE", [v.tensor, self.int32(f"{name}/transpose_perm", rel)], [out])
        self._cache[key] = out
        return out

    def _materialize_flat(self, name: str, v: Value) -> int:
        key = ("flat", name)
        if key not in self._cache:
            src = self.tensor(v.flat_src, identity(len(self.shape(v.flat_src))))
            out = self.new_tensor(f"{name}/flat", self.shape(name), self.m.tensors[v.tensor].dtype)
            self.add_op("RESHAPE", [src, self.int32(f"{name}/shape", self.shape(name))], [out])
            self._cache[key] = out
        return self._cache[key]

    def broadcast(self, name: str, rank: int, perm) -> int:
        """``name`` (constant or not) as a tensor of ``rank`` dims in layout ``perm`` (numpy broadcasting)."""
        shape = self.shape(name)
        if len(shape) == rank:
            return self.tensor(name, perm)
        full = (1,) * (rank - len(shape)) + shape
        const = self.const(name)
        if const is not None:
            data = np.transpose(const.reshape(full), perm)
            return self.const_tensor(name, data, tf_dtype(const.dtype))
        key = ("bcast", name, rank, tuple(perm))
        if key not in self._cache:
            src = self.tensor(name, identity(len(shape)))
            out = self.new_tensor(f"{name}/rank{rank}", [full[p] for p in perm], self.m.tensors[src].dtype)
            self.add_op("RESHAPE", [src, self.int32(f"{name}/rank{rank}_shape", [full[p] for p in perm])], [out])
            self._cache[key] = out
        return self._cache[key]

    def fuse_activation(self, node, act: str) -> bool:
        """Fold activation ``act`` into the op producing ``node.input[0]`` when nothing else reads it."""
        src = node.input[0]
        v = self.values.get(src)
        if (v is None or v.producer is None or v.flat_src is not None or self.g.consumers.get(src, 0) != 1
                or src in self.g.outputs):
            return False
        op = self.m.operators[v.producer]
        if op.op not in _FUSABLE or op.options.get("fused_activation_function", 0) != 0:
            return False
        if op.op == "CONCATENATION" and act != "RELU":
            return False
        op.options["fused_activation_function"] = ACTIVATION[act]
        out = node.output[0]
        t = self.m.tensors[v.tensor]
        self._names.discard(t.name)
        t.name = self.unique(out)
        self.values[out] = Value(v.tensor, v.perm, producer=v.producer)
        return True
