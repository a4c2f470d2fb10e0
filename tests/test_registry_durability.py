"""Ingest durability: a registry process killed with SIGKILL in the middle of ingest loses no
telemetry, event or status message and stores none twice once it restarts, because it
acknowledges messages to the broker only after committing them (the persistent session
redelivers the rest) and stores idempotently."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import urllib.request

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgekit.broker import free_port
from edgekit.core import messages, topics
from edgekit.core.mqtt import MqttConnection
from edgekit.demo import Proc
from edgekit.fleetsim import FleetSim
from edgekit.registry import db

pytestmark = pytest.mark.integration
N_DEVICES, PER_DEVICE, N_EVENTS = 40, 250, 300


def start_registry(tmp_path, broker, port: int, receiver: str) -> Proc:
    proc = Proc("registry", [sys.executable, "-m", "edgekit.cli.main", "registry", "serve", "--no-rollouts",
                             "--receiver", receiver,
                             "--db", f"sqlite:///{tmp_path}/r.db", "--store", str(tmp_path / "a"),
                             "--port", str(port), "--broker", f"127.0.0.1:{broker.port}"], tmp_path / "registry.log")
    proc.ready()
    return proc


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as r:
        return json.loads(r.read())


def wait_for(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := pred()):
            return v
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached in {timeout}s")


def publish_events(port: int, n: int) -> None:
    """A separate device publishing deployment events (QoS 1, each PUBACKed by the broker)."""
    conn = MqttConnection("evt-device", "127.0.0.1", port)
    conn.connect()
    try:
        for i in range(1, n + 1):
            msg = messages.build(messages.EVENT, device="evt-device", seq=i, state="downloading", ok=True,
                                 deployment_id="d-kill", model="digits-cnn", version="1.0.0")
            conn.publish(topics.events("default", "evt-device"), messages.dumps(msg), timeout=20)
    finally:
        conn.close()


@pytest.mark.parametrize("receiver", ["process", "thread"])
def test_registry_killed_mid_ingest_loses_and_duplicates_nothing(tmp_path, broker, receiver):
    port = free_port()
    reg = start_registry(tmp_path, broker, port, receiver)
    sim = FleetSim("127.0.0.1", broker.port, N_DEVICES, telemetry_s=None).start()
    killed_at = None
    try:
        wait_for(lambda: health(port)["rows"]["devices"] >= N_DEVICES, what="births stored")
        events = threading.Thread(target=publish_events, args=(broker.port, N_EVENTS))
        events.start()
        flood = threading.Thread(target=sim.flood_telemetry, args=(PER_DEVICE,))
        flood.start()
        wait_for(lambda: health(port)["ingest"]["kinds"].get("telemetry", 0) >= 1000, what="ingest under way")
        reg.proc.send_signal(signal.SIGKILL)  # no clean shutdown: whatever is queued in memory dies
        reg.proc.wait(10)
        engine = db.open_db(f"sqlite:///{tmp_path}/r.db")
        with Session(engine) as s:
            killed_at = s.scalar(select(func.count()).select_from(db.TelemetryRow))
        # while it is down: more telemetry, the rest of the events, and last wills of two devices
        flood.join(120)
        events.join(120)
        sim.wait_acked()
        for dev in ("sim-0001", "sim-0007"):
            sim.drop(dev)
        time.sleep(0.5)

        reg = start_registry(tmp_path, broker, port, receiver)
        sent = N_DEVICES * PER_DEVICE
        assert killed_at < sent, "the kill came after ingest finished: the test proves nothing"
        try:
            wait_for(lambda: (r := health(port)["rows"])["telemetry"] >= sent and r["events"] >= N_EVENTS,
                     what="every message stored after the restart")
        except AssertionError as exc:
            with Session(engine) as s:
                have = set(s.execute(select(db.TelemetryRow.device, db.TelemetryRow.seq)).all())
            missing = sorted({(f"sim-{i:04d}", q) for i in range(N_DEVICES) for q in range(1, PER_DEVICE + 1)} - have)
            raise AssertionError(f"{exc}: killed at {killed_at}, now {health(port)}, missing {missing[:80]}") from None
        time.sleep(1.0)  # any duplicate redelivery would land now
        rows = health(port)["rows"]
        assert rows["telemetry"] == sent and rows["events"] == N_EVENTS, (killed_at, rows)
        devices = {d["id"]: d for d in db.list_devices(engine)}
        assert len(devices) == N_DEVICES + 1
        offline = sorted(d for d, v in devices.items() if not v["online"] and d.startswith("sim-"))
        assert offline == ["sim-0001", "sim-0007"]
        with Session(engine) as s:  # the last telemetry of every device is there, in order
            last = dict(s.execute(select(db.TelemetryRow.device, func.max(db.TelemetryRow.seq))
                                  .group_by(db.TelemetryRow.device)).all())
        assert set(last.values()) == {PER_DEVICE}
    finally:
        sim.stop()
        if reg.proc.poll() is None:
            reg.stop()


def test_redelivered_messages_are_stored_once(tmp_path):
    """store_batch is idempotent for telemetry and events (the unit under the kill test)."""
    engine = db.open_db(f"sqlite:///{tmp_path}/r.db")
    tel = messages.build(messages.TELEMETRY, device="d1", seq=1, health={}, inference={})
    evt = messages.build(messages.EVENT, device="d1", seq=1, state="committed", ok=True)
    batch = [("telemetry", "f", "d1", tel), ("events", "f", "d1", evt)]
    db.store_batch(engine, batch)
    db.store_batch(engine, batch + [("telemetry", "f", "d1", {**tel, "ts": tel["ts"] + 1})])
    rows = db.count_rows(engine)
    assert rows["telemetry"] == 2 and rows["events"] == 1
