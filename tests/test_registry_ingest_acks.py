"""Ingest hot path on a real broker: PUBACKs sent in one batch reach the broker (only the
acknowledged messages are forgotten, the rest is redelivered to the persistent session), and the
decoder refuses payloads it cannot store instead of storing them."""

from __future__ import annotations

import queue
import time
import uuid

import pytest

from edgekit.core import messages, topics
from edgekit.core.mqtt import MqttConnection
from edgekit.registry.ingest import Ingest

pytestmark = pytest.mark.integration


def _receive(port: int, client_id: str, expect: int, timeout: float = 15.0) -> tuple[MqttConnection, list]:
    got: queue.Queue = queue.Queue()
    conn = MqttConnection(client_id, "127.0.0.1", port, clean_start=False, session_expiry_s=300, max_queued=0,
                          manual_ack=True, receive_maximum=1000)
    flt = [("acks/test/#", 1)]
    handler = lambda t, p, _props, d: got.put((p, d))  # noqa: E731
    conn.add_handler(flt, handler)  # before connect: redeliveries follow CONNACK at once
    conn.connect()
    conn.subscribe(flt, handler)
    out, deadline = [], time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        try:
            out.append(got.get(timeout=0.2))
        except queue.Empty:
            pass
    return conn, out


def test_batched_acks_release_exactly_the_acknowledged_messages(broker):
    cid = f"acks-{uuid.uuid4().hex[:6]}"
    conn, _ = _receive(broker.port, cid, 0, timeout=0.1)  # create the persistent session
    conn.close()
    pub = MqttConnection(f"pub-{cid}", "127.0.0.1", broker.port)
    pub.connect()
    for i in range(50):
        pub.publish(f"acks/test/{i}", str(i).encode(), qos=1)
    pub.close()

    conn, first = _receive(broker.port, cid, 50)
    assert sorted(int(p) for p, _ in first) == list(range(50))
    acked = [d for p, d in first if int(p) < 30]
    assert conn.ack(acked) == 30  # one queued write of 30 PUBACKs
    time.sleep(0.5)  # let paho's loop write them before we leave
    conn.close()

    conn, again = _receive(broker.port, cid, 20)
    try:
        assert sorted(int(p) for p, _ in again) == list(range(30, 50)), "only unacknowledged messages come back"
        conn.ack([d for _, d in again])
        time.sleep(0.5)
    finally:
        conn.close()
    conn, none = _receive(broker.port, cid, 1, timeout=1.5)
    conn.close()
    assert none == []


def test_decoder_rejects_bad_payloads_and_keeps_the_text_it_validated():
    ing = Ingest.__new__(Ingest)
    ing.rejected = 0
    topic = topics.telemetry("default", "dev-1")
    good = messages.dumps(messages.build(messages.TELEMETRY, device="dev-1", seq=1, health={}, inference={}))
    kind, fleet, device, msg = ing._decode(topic, good)
    assert (kind, fleet, device) == ("telemetry", "default", "dev-1") and msg.text == good.decode()
    bad = [(topic, b"\xff\xfe{}"),                                                # not UTF-8
           (topic, good.replace(b'"seq":1', b'"seq":true')),                      # bool where an int is required
           (topic, good.replace(b'"seq":1', b'"seq":-1')),                        # fails the check
           (topics.telemetry("default", "dev-2"), good),                          # names another device
           (topic, b"x" * (messages.MAX_PAYLOAD + 1)),                            # oversize
           ("edgekit/v1/default/devices/dev 1/telemetry", good)]                  # not a device topic
    for t, p in bad:
        assert ing._decode(t, p) is None, p[:40]
    assert ing.rejected == len(bad)
