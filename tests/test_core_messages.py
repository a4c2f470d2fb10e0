"""edgekit.core.messages: build/dumps/loads for every schema, and what loads refuses."""

from __future__ import annotations

import json

import pytest

from edgekit.core import messages as m
from edgekit.core.errors import MessageError

SHA = "ab" * 32

# Minimal valid fields per schema (``ts`` is filled in by build where the schema has it).
MINIMAL = {
    m.STATUS: {"device": "d1", "fleet": "f1", "online": True, "session": 0},
    m.TELEMETRY: {"device": "d1", "seq": 0, "health": {"cpu": 0.1}, "inference": {}},
    m.EVENT: {"device": "d1", "seq": 3, "state": "installing", "ok": True},
    m.NOTICE: {"deployment_id": "dep-1", "model": "kws", "version": "1.0", "profile": "esp32-s3",
               "bundle_url": "https://registry/b.bundle", "sha256": SHA, "length": 10, "issued_at": 1.0},
    m.INFER_REQUEST: {"id": "r1", "inputs": {"x": {"dtype": "float32", "shape": [], "b64": "AAAAAA=="}}},
    m.INFER_RESPONSE: {"id": "r1", "ok": True},
    m.SENSOR: {"inputs": {"x": {"dtype": "float32", "shape": [], "b64": "AAAAAA=="}}},
    m.PREDICTION: {"device": "d1", "stream": "cam0", "ok": True},
    m.CHUNK_REQUEST: {"sha256": SHA, "offset": 0, "length": 65536},
    m.ROLLBACK: {"deployment_id": "rb1", "model": "digits-cnn", "version": "1.0.0", "issued_at": 1.0},
}

# (schema, field, wrong value, expected fragment of the error)
WRONG_TYPES = [
    (m.STATUS, "online", "yes", "online: must be bool"),
    (m.STATUS, "session", -1, "session: must be >= 0"),
    (m.CHUNK_REQUEST, "offset", -1, "offset: must be >= 0"),
    (m.NOTICE, "transport", "ftp", "transport: must be one of http, mqtt"),
    (m.STATUS, "ts", 0, "ts: must be > 0"),
    (m.TELEMETRY, "seq", 1.5, "seq: must be int"),
    (m.TELEMETRY, "health", [], "health: must be dict"),
    (m.EVENT, "ok", 1, "ok: must be bool"),
    (m.NOTICE, "sha256", "ABCD", "sha256: must be a lower-case hex SHA-256"),
    (m.NOTICE, "bundle_url", "ftp://x", "bundle_url: must be an http(s) URL"),
    (m.NOTICE, "length", True, "length: must be int"),
    (m.INFER_REQUEST, "timeout_s", "5", "timeout_s: must be int or float"),
    (m.INFER_RESPONSE, "latency_ms", -1, "latency_ms: must be >= 0"),
    (m.ROLLBACK, "version", 1, "version: must be str"),
]


def payload(schema_id: str, **overrides) -> dict:
    msg = {"schema": schema_id, **MINIMAL[schema_id], **overrides}
    if "ts" in m.SCHEMAS[schema_id]:
        msg.setdefault("ts", 1_700_000_000.5)
    return msg


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def loads_error(data, schema: str) -> MessageError:
    with pytest.raises(MessageError) as info:
        m.loads(data, schema)
    return info.value


@pytest.mark.parametrize("schema", sorted(m.SCHEMAS))
def test_build_dumps_loads_round_trip(schema):
    msg = m.build(schema, **MINIMAL[schema])
    assert msg["schema"] == schema
    if "ts" in m.SCHEMAS[schema]:
        assert isinstance(msg["ts"], float) and msg["ts"] > 0
    back = m.loads(m.dumps(msg), schema)
    assert back == msg
    assert m.loads(m.dumps(msg).decode(), schema) == msg  # str payloads too


def test_build_drops_none_and_keeps_given_ts():
    msg = m.build(m.STATUS, **MINIMAL[m.STATUS], ts=5.0, reason=None)
    assert msg["ts"] == 5.0 and "reason" not in msg


def test_build_refuses_invalid():
    with pytest.raises(MessageError, match="online: must be bool"):
        m.build(m.STATUS, **{**MINIMAL[m.STATUS], "online": "yes"})


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe\x00", b"", "nan-ish"])
def test_loads_rejects_non_json(data):
    assert "not valid JSON" in loads_error(data, m.STATUS).message


@pytest.mark.parametrize("data", [b"[1, 2]", b"42", b'"str"', b"null"])
def test_loads_rejects_non_object(data):
    assert "must be a JSON object" in loads_error(data, m.STATUS).message


@pytest.mark.parametrize("schema_value", ["edgekit.status/2", m.TELEMETRY, None, 1])
def test_loads_rejects_wrong_schema_id(schema_value):
    err = loads_error(raw(payload(m.STATUS, schema=schema_value)), m.STATUS)
    assert "unexpected schema" in err.message and repr(schema_value) in err.message


@pytest.mark.parametrize("schema", sorted(m.SCHEMAS))
def test_loads_rejects_each_missing_required_field(schema):
    required = [k for k, spec in m.SCHEMAS[schema].items() if spec[1] and k != "schema"]
    assert required
    for field in required:
        msg = payload(schema)
        del msg[field]
        err = loads_error(raw(msg), schema)
        assert f"{field}: missing required field" in err.message
        assert err.details["errors"] == [f"{field}: missing required field"]


@pytest.mark.parametrize("schema,field,value,fragment", WRONG_TYPES)
def test_loads_rejects_wrong_type(schema, field, value, fragment):
    err = loads_error(raw(payload(schema, **{field: value})), schema)
    assert fragment in err.message


def test_loads_accepts_unknown_extra_fields():
    msg = payload(m.STATUS, future_field={"nested": [1]}, another=3)
    assert m.loads(raw(msg), m.STATUS)["future_field"] == {"nested": [1]}


def test_loads_rejects_oversized_bytes_payload():
    big = raw(payload(m.STATUS, pad="x" * m.MAX_PAYLOAD))
    assert len(big) > m.MAX_PAYLOAD
    assert "exceeds" in loads_error(big, m.STATUS).message
    assert "exceeds" in loads_error(bytearray(big), m.STATUS).message


def test_loads_rejects_oversized_str_payload():
    big = json.dumps(payload(m.STATUS, pad="x" * m.MAX_PAYLOAD))
    loads_error(big, m.STATUS)


def test_notice_sha256_with_trailing_newline_is_rejected():
    loads_error(raw(payload(m.NOTICE, sha256=SHA + "\n")), m.NOTICE)


def test_dumps_is_compact_and_refuses_nan():
    assert m.dumps({"a": 1, "b": [1, 2]}) == b'{"a":1,"b":[1,2]}'
    with pytest.raises(ValueError):
        m.dumps({"x": float("nan")})


def test_loads_rejects_non_finite_numbers():
    raw = b'{"schema": "edgekit.event/1", "device": "d", "ts": Infinity, "seq": 1, "state": "x", "ok": true}'
    with pytest.raises(MessageError, match="Infinity"):
        m.loads(raw, m.EVENT)
