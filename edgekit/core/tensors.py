"""Tensor wire format for JSON messages: ``{"dtype", "shape", "b64"}`` (little-endian, C order).

Used by MQTT RPC, the local inference endpoint and golden vectors in reports. The local
endpoint may also carry raw frames (see ``agent.endpoint``); this module is the JSON form only.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from .errors import MessageError

DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
MAX_ELEMENTS = 64 * 1024 * 1024


def encode(array: np.ndarray) -> dict[str, Any]:
    arr = np.asarray(array)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # ascontiguousarray would turn a 0-d array into 1-d
    if arr.dtype.name not in DTYPES:
        raise MessageError(f"unsupported tensor dtype {arr.dtype.name}")
    return {"dtype": arr.dtype.name, "shape": list(arr.shape),
            "b64": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()).decode()}


def decode(obj: Any, what: str = "tensor") -> np.ndarray:
    if not isinstance(obj, dict) or not {"dtype", "shape", "b64"} <= obj.keys():
        raise MessageError(f"{what}: expected an object with dtype, shape and b64")
    dtype, shape = obj["dtype"], obj["shape"]
    if dtype not in DTYPES:
        raise MessageError(f"{what}: unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise MessageError(f"{what}: shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)  # Python ints: no overflow on absurd shapes
    if count > MAX_ELEMENTS:
        raise MessageError(f"{what}: {count} elements exceeds the limit of {MAX_ELEMENTS}")
    try:
        raw = base64.b64decode(obj["b64"], validate=True)
    except (ValueError, TypeError) as exc:
        raise MessageError(f"{what}: b64 is not valid base64 ({exc})") from None
    dt = np.dtype(dtype).newbyteorder("<")
    if len(raw) != count * dt.itemsize:
        raise MessageError(f"{what}: {len(raw)} bytes do not match shape {shape} of {dtype}")
    return np.frombuffer(raw, dtype=dt).reshape(shape).astype(np.dtype(dtype), copy=False)
