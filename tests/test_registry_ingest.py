"""MQTT ingest of the registry on a real broker: no status lost at fleet scale, last wills mark
devices offline, shared subscriptions split the load between workers, failed commits are retried."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import exc as sa_exc

from edgekit.fleetsim import FleetSim
from edgekit.registry import db
from edgekit.registry.service import Registry

pytestmark = pytest.mark.integration


def wait_for(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := pred()):
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


def test_every_status_is_stored_and_last_wills_mark_devices_offline(tmp_path, broker):
    reg = Registry(f"sqlite:///{tmp_path}/r.db", tmp_path / "a", "127.0.0.1", broker.port, rollouts=False).start()
    sim = FleetSim("127.0.0.1", broker.port, 300, telemetry_s=None).start()
    try:
        devices = lambda: db.list_devices(reg.engine)  # noqa: E731
        wait_for(lambda: sum(d["online"] for d in devices()) == 300, what="300 devices online")
        for dev in ("sim-0003", "sim-0150"):
            sim.drop(dev)  # no DISCONNECT: the broker publishes the retained offline will
        wait_for(lambda: sum(not d["online"] for d in devices()) == 2, what="2 devices offline")
        offline = {d["id"]: d["status_reason"] for d in devices() if not d["online"]}
        assert offline == {"sim-0003": "connection lost", "sim-0150": "connection lost"}
        assert reg.ingest.rejected == 0 and reg.ingest.failed == 0
    finally:
        sim.stop()
        reg.stop()


def test_shared_subscription_splits_telemetry_between_workers_and_both_see_status(tmp_path, broker):
    url = f"sqlite:///{tmp_path}/r.db"
    workers = [Registry(url, tmp_path / "a", "127.0.0.1", broker.port, shared_group="ingest",
                        client_id=f"registry-{i}", rollouts=i == 0).start() for i in range(2)]
    sim = FleetSim("127.0.0.1", broker.port, 20, telemetry_s=None).start()
    try:
        sent = sim.flood_telemetry(50)
        wait_for(lambda: sum(w.ingest.stored for w in workers) >= sent + 2 * 20, what="all telemetry stored")
        rows = db.count_rows(workers[0].engine)
        assert rows["telemetry"] == sent == 1000  # each telemetry message stored once, by one worker
        assert all(w.ingest.stored > 20 for w in workers), [w.ingest.stored for w in workers]  # both took a share
        assert rows["devices"] == 20
    finally:
        sim.stop()
        for w in workers:
            w.stop()


def test_failed_batch_commits_are_retried_and_a_refused_message_is_isolated(tmp_path, broker, monkeypatch):
    real = db.store_batch
    calls = {"n": 0}

    def flaky(engine, batch):
        calls["n"] += 1
        if calls["n"] <= 3:  # the database is unreachable for a while
            raise sa_exc.OperationalError("INSERT", {}, Exception("database is locked"))
        if any(dev == "sim-0007" for _, _, dev, _ in batch):
            raise ValueError("refused by the database")  # a message the database will never accept
        return real(engine, batch)

    monkeypatch.setattr(db, "store_batch", flaky)
    reg = Registry(f"sqlite:///{tmp_path}/r.db", tmp_path / "a", "127.0.0.1", broker.port, rollouts=False).start()
    sim = FleetSim("127.0.0.1", broker.port, 50, telemetry_s=None).start()
    try:
        wait_for(lambda: len(db.list_devices(reg.engine)) == 49, what="49 devices stored")
        time.sleep(0.3)
        assert reg.ingest.retries >= 3 and reg.ingest.failed == 1
        assert "sim-0007" not in {d["id"] for d in db.list_devices(reg.engine)}
    finally:
        sim.stop()
        reg.stop()
