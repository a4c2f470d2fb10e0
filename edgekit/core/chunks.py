"""MQTT chunked transfer of bundle bytes: the request message and the binary answer frame.

For devices that reach only the broker. The device publishes ``edgekit.chunk.request/1``
(JSON: ``sha256`` of a bundle *or* ``name`` of a hosted TUF metadata file, ``offset``, ``length``)
on :func:`~edgekit.core.topics.chunk_request` with an MQTT 5 correlation id; the chunk server (the
registry) answers on :func:`~edgekit.core.topics.chunk_response` of *that* device with one binary frame::

    frame  = magic "EKC1" | u32 header_len | header (JSON, UTF-8) | data
    header = {"sha256"|"name", "offset", "total", "length"}          on success (length = len(data))
           | {"sha256"|"name", "offset", "error": {code, message}}    on failure (no data; a missing
                                                                       file has details.status 404)

No base64: the bytes travel as they are. The frame only says which bytes these are; what they
are worth is decided by the device (byte cap from the signed length, SHA-256 of the whole
bundle against the signed notice). This module does not touch the network.
"""

from __future__ import annotations

import json
import struct

from .errors import EdgekitError, MessageError, error_from_dict

MAGIC = b"EKC1"
MAX_CHUNK = 4 << 20  # the largest chunk a server hands out (the broker's message_size_limit is 16 MiB)
_HEAD = struct.Struct("<4sI")


def encode(header: dict, data: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, len(head)) + head + data


def decode(frame: bytes) -> tuple[dict, memoryview]:
    """``(header, data)``; a server-side error comes back raised as its own edgekit error."""
    if len(frame) < _HEAD.size or frame[:4] != MAGIC:
        raise MessageError("chunk answer is not an EKC1 frame")
    (_, n) = _HEAD.unpack_from(frame)
    if _HEAD.size + n > len(frame):
        raise MessageError(f"chunk answer header of {n} bytes exceeds the frame ({len(frame)} bytes)")
    try:
        header = json.loads(bytes(frame[_HEAD.size:_HEAD.size + n]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"chunk answer header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MessageError("chunk answer header must be a JSON object")
    if "error" in header:
        err = header["error"]
        raise error_from_dict(err) if isinstance(err, dict) else MessageError(f"chunk server error: {err!r}")
    data = memoryview(frame)[_HEAD.size + n:]
    if header.get("length") != len(data) or not isinstance(header.get("offset"), int) \
            or not isinstance(header.get("total"), int):
        raise MessageError(f"chunk answer header {header!r} does not describe its {len(data)} data bytes")
    return header, data


def error_frame(ref: dict, offset: int, err: EdgekitError) -> bytes:
    """``ref``: what was asked for, ``{"sha256": ...}`` or ``{"name": ...}``."""
    return encode({**ref, "offset": offset, "error": err.to_dict()})
