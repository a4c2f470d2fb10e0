"""Versioned JSON message schemas for the MQTT contract, and (de)serialization helpers.

Every payload is a JSON object with ``"schema": "edgekit.<kind>/<major>"``. A receiver accepts
the major version it knows and ignores unknown extra fields (forward compatible additions);
anything else is a :class:`MessageError` naming the field and the reason. Tensors inside
messages use :mod:`edgekit.core.tensors`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from .errors import MessageError
from .schema import matches, non_negative, one_of, positive, validate

_SHA256 = matches(re.compile(r"^[0-9a-f]{64}$"), "a lower-case hex SHA-256")
_URL = matches(re.compile(r"https?://\S+"), "an http(s) URL")
_TRUST_NAME = matches(re.compile(r"^(?:\d{1,10}\.[a-z]{1,32}|timestamp)\.json$"),
                      "a TUF metadata file name (timestamp.json or N.ROLE.json)")
MAX_PAYLOAD = 8 * 1024 * 1024

STATUS = "edgekit.status/1"
TELEMETRY = "edgekit.telemetry/1"
EVENT = "edgekit.event/1"
NOTICE = "edgekit.notice/1"
INFER_REQUEST = "edgekit.infer.request/1"
INFER_RESPONSE = "edgekit.infer.response/1"
SENSOR = "edgekit.sensor/1"          # streaming mode: a sample for the device to infer on
PREDICTION = "edgekit.prediction/1"  # streaming mode: the device's answer to one SENSOR message
CHUNK_REQUEST = "edgekit.chunk.request/1"  # MQTT transfer: bytes [offset, offset+length) of a bundle (sha256)
                                           # or of a hosted trust metadata file (name), exactly one of them
TRANSPORTS = ("http", "mqtt")
ROLLBACK = "edgekit.rollback/1"      # cmd/rollback: switch back to the previous verified slot (signed)

SCHEMAS: dict[str, dict] = {
    STATUS: {
        "schema": (str, True, None), "device": (str, True, None), "fleet": (str, True, None),
        "online": (bool, True, None), "ts": ((int, float), True, positive),
        "session": (int, True, non_negative), "profile": (str, False, None),
        "agent_version": (str, False, None), "model": (str, False, None), "version": (str, False, None),
        "reason": (str, False, None),
    },
    TELEMETRY: {
        "schema": (str, True, None), "device": (str, True, None), "ts": ((int, float), True, positive),
        "seq": (int, True, non_negative), "health": (dict, True, None), "inference": (dict, True, None),
        "model": (str, False, None), "version": (str, False, None),
        "spool": (dict, False, None),  # agent/spool.py stats: pending, bytes, budget_bytes, dropped
        "drift": (dict, False, None),  # edgekit.core.drift.Sketch.snapshot(): stats, histograms, PSI
    },
    EVENT: {
        "schema": (str, True, None), "device": (str, True, None), "ts": ((int, float), True, positive),
        "seq": (int, True, non_negative), "state": (str, True, None), "ok": (bool, True, None),
        "deployment_id": (str, False, None), "model": (str, False, None), "version": (str, False, None),
        "error": (dict, False, None), "details": (dict, False, None),
    },
    NOTICE: {
        "schema": (str, True, None), "deployment_id": (str, True, None), "model": (str, True, None),
        "version": (str, True, None), "profile": (str, True, None), "bundle_url": (str, True, _URL),
        "sha256": (str, True, _SHA256), "length": (int, True, positive),
        "issued_at": ((int, float), True, positive), "expires_at": ((int, float), False, positive),
        # signed notices (edgekit.core.notices): target, single use, signatures, root chain to follow
        "device": (str, False, None), "fleet": (str, False, None), "nonce": (str, False, None),
        "signatures": (list, False, None), "roots": (list, False, None),
        # how the device fetches the bundle: "http" (bundle_url, default) or "mqtt" (chunks by sha256
        # from the registry over the broker, edgekit.core.chunks); signed like every other field
        "transport": (str, False, one_of(TRANSPORTS)),
    },
    ROLLBACK: {  # signed like a NOTICE (edgekit.core.notices); the schema id is part of the signed bytes
        "schema": (str, True, None), "deployment_id": (str, True, None), "model": (str, True, None),
        "version": (str, True, None), "issued_at": ((int, float), True, positive),
        "expires_at": ((int, float), False, positive), "from_version": (str, False, None),
        "device": (str, False, None), "fleet": (str, False, None), "nonce": (str, False, None),
        "signatures": (list, False, None), "roots": (list, False, None),
    },
    INFER_REQUEST: {
        "schema": (str, True, None), "id": (str, True, None), "inputs": (dict, True, None),
        "timeout_s": ((int, float), False, positive),
    },
    INFER_RESPONSE: {
        "schema": (str, True, None), "id": (str, True, None), "ok": (bool, True, None),
        "outputs": (dict, False, None), "error": (dict, False, None),
        "latency_ms": ((int, float), False, non_negative), "model": (str, False, None),
        "version": (str, False, None), "device": (str, False, None),
    },
    CHUNK_REQUEST: {
        "schema": (str, True, None), "sha256": (str, False, _SHA256), "name": (str, False, _TRUST_NAME),
        "offset": (int, True, non_negative), "length": (int, True, positive),
    },
    SENSOR: {
        "schema": (str, True, None), "ts": ((int, float), True, positive), "inputs": (dict, True, None),
        "seq": (int, False, non_negative),
    },
    PREDICTION: {
        "schema": (str, True, None), "ts": ((int, float), True, positive), "device": (str, True, None),
        "stream": (str, True, None), "ok": (bool, True, None), "seq": (int, False, non_negative),
        "sensor_ts": ((int, float), False, positive), "outputs": (dict, False, None), "error": (dict, False, None),
        "latency_ms": ((int, float), False, non_negative), "model": (str, False, None),
        "version": (str, False, None),
    },
}
for _name, _schema in SCHEMAS.items():
    _schema["schema"] = (str, True, one_of((_name,)))


def dumps(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in edgekit messages")


def loads(payload: bytes | str, expected: str) -> dict:
    """Parse and validate a payload against the ``expected`` schema id."""
    if len(payload) > MAX_PAYLOAD:
        raise MessageError(f"{expected}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        obj = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"{expected}: payload is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MessageError(f"{expected}: payload must be a JSON object")
    got = obj.get("schema")
    if got != expected:
        raise MessageError(f"unexpected schema {got!r}; this receiver understands {expected!r}",
                           hint="Upgrade the sender or the receiver so both speak the same contract version.")
    errors = validate(obj, SCHEMAS[expected], allow_unknown=True)
    if errors:
        raise MessageError(f"{expected}: invalid message: " + "; ".join(errors), errors=errors)
    return obj


def build(schema: str, **fields: Any) -> dict:
    """Make a message, filling ``schema`` and ``ts``; validates so senders fail early too."""
    msg = {"schema": schema, **{k: v for k, v in fields.items() if v is not None}}
    if "ts" in SCHEMAS[schema] and "ts" not in msg:
        msg["ts"] = time.time()
    errors = validate(msg, SCHEMAS[schema], allow_unknown=True)
    if errors:
        raise MessageError(f"{schema}: refusing to send an invalid message: " + "; ".join(errors))
    return msg
