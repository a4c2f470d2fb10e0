"""Binary tensor frame: named tensors as a small header + raw bytes (no base64, no JSON).

Used by the agent's local inference endpoint (``Content-Type: application/x-edgekit-tensors``);
the JSON form is :mod:`edgekit.core.tensors`. All integers little-endian::

    frame   = magic "EKT1" | u32 count | count × tensor
    tensor  = u16 name_len | name (UTF-8) | u8 dtype | u8 ndim | ndim × u64 dim | pad | raw data
    pad     = 0-7 zero bytes so that raw data starts at a multiple of 8 from the frame start
    dtype   = index into tensors.DTYPES (0 float32, 1 float16, 2 float64, 3 int8, 4 uint8,
              5 int16, 6 int32, 7 int64, 8 bool)
    data    = prod(dims) × itemsize bytes, little-endian, C order, no padding

The local endpoint also speaks a *framed stream* beside HTTP (no request line, no headers: one
fixed header each way), told apart from HTTP by its first byte (no HTTP method starts with "E")::

    request   = "EKS1" | u32 length | length bytes: a tensor frame
    response  = "EKS1" | u16 status | u16 0 | f64 latency_ms | u32 length | length bytes
    status    = 200: the body is a tensor frame of the outputs; otherwise an HTTP status code
                (400, 413, 503, 500) and the body is JSON {"error": {code, message, hint}}

Decoding is zero-copy (arrays are read-only views of the frame, aligned when the frame buffer is)
and defensive: every length is checked against the remaining bytes and the element cap of
:mod:`tensors` before use.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from .errors import MessageError
from .tensors import DTYPES, MAX_ELEMENTS

MAGIC = b"EKT1"
CONTENT_TYPE = "application/x-edgekit-tensors"
MAX_NAME = 1024
_HEAD = struct.Struct("<4sI")
_NAME = struct.Struct("<H")
_SHAPE = struct.Struct("<BB")
_CODES = {name: i for i, name in enumerate(DTYPES)}
STREAM_MAGIC = b"EKS1"
STREAM_REQUEST = struct.Struct("<4sI")         # magic, body length
STREAM_RESPONSE = struct.Struct("<4sHxxdI")    # magic, status, latency_ms, body length


def encode(tensors: dict[str, np.ndarray]) -> bytes:
    parts = [_HEAD.pack(MAGIC, len(tensors))]
    pos = _HEAD.size
    for name, array in tensors.items():
        arr = np.asarray(array)
        code = _CODES.get(arr.dtype.name)
        if code is None:
            raise MessageError(f"tensor {name!r}: unsupported dtype {arr.dtype.name}")
        if arr.ndim > 255:
            raise MessageError(f"tensor {name!r}: {arr.ndim} dimensions exceeds 255")
        raw = name.encode()
        if len(raw) > MAX_NAME:
            raise MessageError(f"tensor name of {len(raw)} bytes exceeds {MAX_NAME}")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        pos += 2 + len(raw) + 2 + 8 * arr.ndim
        data = np.ascontiguousarray(arr).tobytes() if arr.ndim else arr.tobytes()
        parts += [_NAME.pack(len(raw)), raw, _SHAPE.pack(code, arr.ndim), struct.pack(f"<{arr.ndim}Q", *arr.shape),
                  b"\0" * (-pos % 8), data]
        pos += -pos % 8 + len(data)
    return b"".join(parts)


def decode(frame: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    buf = memoryview(frame).cast("B")
    if len(buf) < _HEAD.size:
        raise MessageError(f"tensor frame of {len(buf)} bytes is shorter than its header")
    magic, count = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise MessageError(f"not a tensor frame (magic {bytes(magic)!r}, expected {MAGIC!r})",
                           hint=f"Send Content-Type: application/json for JSON tensors, or {CONTENT_TYPE} frames.")
    pos, out = _HEAD.size, {}
    for i in range(count):
        try:
            (nlen,) = _NAME.unpack_from(buf, pos)
            name = bytes(buf[pos + 2:pos + 2 + nlen]).decode()
            pos += 2 + nlen
            code, ndim = _SHAPE.unpack_from(buf, pos)
            pos += 2
            shape = struct.unpack_from(f"<{ndim}Q", buf, pos)
            pos += 8 * ndim
            pos += -pos % 8  # padding to the 8-byte aligned data
        except (struct.error, UnicodeDecodeError) as exc:
            raise MessageError(f"tensor frame is truncated or malformed in tensor {i}: {exc}") from None
        if len(name.encode()) != nlen:
            raise MessageError(f"tensor frame is truncated in the name of tensor {i}")
        if code >= len(DTYPES):
            raise MessageError(f"tensor {name!r}: unknown dtype code {code}")
        count_el = math.prod(shape)
        if count_el > MAX_ELEMENTS:
            raise MessageError(f"tensor {name!r}: {count_el} elements exceeds the limit of {MAX_ELEMENTS}")
        dt = np.dtype(DTYPES[code]).newbyteorder("<")
        nbytes = count_el * dt.itemsize
        if pos + nbytes > len(buf):
            raise MessageError(f"tensor {name!r}: frame ends {pos + nbytes - len(buf)} bytes early")
        if name in out:
            raise MessageError(f"tensor {name!r} appears twice in the frame")
        out[name] = np.frombuffer(buf[pos:pos + nbytes], dtype=dt).reshape(shape)
        pos += nbytes
    if pos != len(buf):
        raise MessageError(f"tensor frame has {len(buf) - pos} trailing bytes")
    return out
