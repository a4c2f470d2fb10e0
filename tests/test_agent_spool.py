"""Telemetry spool: disk-backed, byte budget, oldest dropped first and counted, order kept.

The proof is a real ``edgekit-agent run`` subprocess publishing telemetry every 0.2 s through a
real mosquitto that is stopped and restarted on the same port: a subscriber with a persistent
session counts the sequence numbers. Within the budget nothing is lost; past it, the oldest
messages of the outage are the ones missing and the agent reports exactly that many drops.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from agent.spool import Spool
from edgekit.broker import ManagedBroker
from edgekit.core import topics
from edgekit.core.errors import TransportError
from edgekit.core.mqtt import MqttConnection
from edgekit.demo import Proc, provision_device

FLEET = "demo"


# -- the spool itself (real files) ---------------------------------------------------------------------
def test_spool_keeps_order_survives_restart_and_drops_oldest(tmp_path):
    sp = Spool(tmp_path, budget_bytes=100)
    for i in range(5):
        assert sp.append("t/x", f"m{i}".encode() * 5)  # 4 + 10 bytes each
    assert sp.stats() == {"pending": 5, "bytes": 70, "budget_bytes": 100, "dropped": 0}
    sp = Spool(tmp_path, budget_bytes=100)  # the agent restarted
    for i in range(5, 8):
        sp.append("t/x", f"m{i}".encode() * 5)
    assert sp.stats()["dropped"] == 1 and sp.stats()["pending"] == 7
    sent = []

    def flaky(topic, payload):
        if len(sent) == 3:
            raise TransportError("broker went away")
        sent.append(payload[:2].decode())
    assert sp.flush(flaky) == 3 and sp.stats()["pending"] == 4
    assert sp.flush(lambda t, p: sent.append(p[:2].decode())) == 4
    assert sent == [f"m{i}" for i in range(1, 8)] and sp.stats()["pending"] == 0
    assert Spool(tmp_path, 100).dropped == 1  # the count is persisted
    assert not sp.append("t/x", b"x" * 200) and sp.dropped == 2  # larger than the whole budget


def test_concurrent_appends_and_flushes_lose_nothing(tmp_path):
    sp = Spool(tmp_path, budget_bytes=1 << 20)
    got: list[int] = []
    lock = threading.Lock()

    def send(topic, payload):
        with lock:
            got.append(int(payload))

    def produce(base):
        for i in range(50):
            sp.append("t", str(base + i).encode())
            sp.flush(send)
    threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sp.flush(send)
    assert sorted(got) == sorted(k * 1000 + i for k in range(3) for i in range(50))
    for k in range(3):  # each producer's messages left in its order
        mine = [g for g in got if g // 1000 == k]
        assert mine == sorted(mine)


# -- broker restart with a real agent ------------------------------------------------------------------
class Collector:
    """A subscriber with a persistent session (as the registry has) counting telemetry seqs."""

    def __init__(self, port):
        self.msgs: list[dict] = []
        self.conn = MqttConnection(f"spool-sub-{uuid.uuid4().hex[:6]}", "127.0.0.1", port, clean_start=False,
                                   session_expiry_s=3600)
        self.conn.connect()
        self.conn.subscribe([(topics.telemetry(FLEET, "dev-spool"), 1)],
                            lambda t, p, props: self.msgs.append(json.loads(p)))

    def seqs(self):
        return sorted({m["seq"] for m in self.msgs})

    def wait(self, pred, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; seqs so far {self.seqs()}")


class PersistentBroker(ManagedBroker):
    """Mosquitto with persistence, so the subscriber's session (and what is queued for it)
    survives the restart. Started as root, mosquitto drops to the `mosquitto` user, which cannot
    write under pytest's 0700 tmp dirs: keep the user."""

    def config_text(self) -> str:
        return super().config_text() + "user root\n"


@pytest.fixture
def rig(tmp_path):
    started = []

    def make(spool_bytes):
        broker = PersistentBroker(tmp_path / "broker", persistence=True).start()
        started.append(broker)
        from edgekit.keys import init_keystore

        store = init_keystore(tmp_path / "keys")
        home = tmp_path / "dev"
        cfg = provision_device(home, "dev-spool", "raspberry-pi-4", broker.port, store.root_path, telemetry_s=0.2)
        cfg.write_text(cfg.read_text().replace("[telemetry]\n", f"[telemetry]\nspool_bytes = {spool_bytes}\n"))
        col = Collector(broker.port)
        started.append(col.conn)
        agent = Proc("dev-spool", [__import__("sys").executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                     home / "agent.log")
        started.append(agent)
        agent.ready()
        return broker, col

    yield make
    for obj in reversed(started):
        (obj.close if isinstance(obj, MqttConnection) else obj.stop)()


def outage(broker, col, seconds):
    col.wait(lambda: len(col.seqs()) >= 3)
    broker.stop()
    last_before = max(col.seqs())
    time.sleep(seconds)
    broker.start()
    restarted = time.time()
    # wait for a message built after the restart *and* after the spool drained: every message
    # before it has been acknowledged by the broker (flushes go oldest first)
    col.wait(lambda: any(m["ts"] > restarted and m["spool"]["pending"] == 0 for m in col.msgs))
    return last_before


def test_broker_restart_loses_no_telemetry_within_the_budget(rig):
    broker, col = rig(spool_bytes=1 << 20)
    last_before = outage(broker, col, 2.0)  # ~10 messages produced while the broker is down
    seqs = col.seqs()
    assert seqs == list(range(1, seqs[-1] + 1)), f"gaps in {seqs}"
    assert seqs[-1] >= last_before + 5, (last_before, seqs)  # the outage's messages are among them
    assert all(m["spool"]["dropped"] == 0 for m in col.msgs)
    pending = [m["spool"]["pending"] for m in col.msgs]
    assert max(pending) >= 3, pending  # they really waited in the spool


def test_past_the_budget_the_oldest_are_dropped_and_counted(rig):
    broker, col = rig(spool_bytes=4000)  # a telemetry message is ~500-700 bytes: room for ~6
    last_before = outage(broker, col, 3.0)  # ~15 messages produced while the broker is down
    seqs = col.seqs()
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
    assert missing, "the outage should have overflowed the spool"
    assert missing == list(range(missing[0], missing[-1] + 1)), "one contiguous gap: the oldest of the outage"
    assert missing[0] > last_before - 2  # only outage messages were dropped
    reported = max(m["spool"]["dropped"] for m in col.msgs)
    # at-least-once: a message the broker took just before it stopped may be dropped from the spool
    # (its PUBACK never came) although the subscriber has it, so the count may exceed the gap by one
    assert len(missing) <= reported <= len(missing) + 1, (reported, missing)


def test_install_events_emitted_during_an_outage_arrive_after_it(tmp_path):
    """In-process Agent on a real broker: an event emitted while the broker is down is spooled and
    delivered, in order, once it is back (a lost `committed` would stall a rollout)."""
    from agent.config import AgentConfig
    from agent.service import Agent
    from edgekit.keys import init_keystore

    broker = PersistentBroker(tmp_path / "broker", persistence=True).start()
    got: list[dict] = []
    sub = MqttConnection(f"ev-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port, clean_start=False,
                         session_expiry_s=3600)
    agent = Agent(AgentConfig(device_id="dev-ev", fleet=FLEET, profile="raspberry-pi-4", data_dir=tmp_path / "data",
                              trusted_root=init_keystore(tmp_path / "keys").root_path, mqtt_port=broker.port,
                              telemetry_interval_s=30))
    try:
        sub.connect()
        sub.subscribe([(topics.events(FLEET, "dev-ev"), 1)], lambda t, p, _: got.append(json.loads(p)))
        agent.start()
        broker.stop()
        for state in ("switching", "committed"):
            agent._emit(state, True, {"model": "m", "version": "2"}, None, "dep-outage")
        assert agent.spool.stats()["pending"] >= 2
        broker.start()
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = list(dict.fromkeys((e["seq"], e["state"]) for e in got))  # at-least-once: dedupe on seq
        assert [state for _, state in first][:2] == ["switching", "committed"], got
        assert all(e["deployment_id"] == "dep-outage" for e in got)
    finally:
        agent.stop()
        sub.close()
        broker.stop()


def test_any_send_failure_keeps_the_message(tmp_path):
    sp = Spool(tmp_path, budget_bytes=1000)
    sp.append("t", b"one")

    def broken(topic, payload):
        raise RuntimeError("paho: not connected")
    assert sp.flush(broken) == 0 and sp.stats()["pending"] == 1
    got = []
    assert sp.flush(lambda t, p: got.append((t, p))) == 1 and got == [("t", b"one")]


def test_non_durable_records_torn_by_a_power_cut_are_dropped_and_counted_never_sent(tmp_path):
    sp = Spool(tmp_path, budget_bytes=1 << 20)
    assert sp.append("fleet/d/events", b'{"state": "staging"}', durable=False)
    assert sp.append("fleet/d/events", b'{"state": "health_check"}', durable=False)
    assert sp.append("fleet/d/events", b'{"state": "committed"}')
    assert sp.append("fleet/d/events", b'{"state": "x"}', durable=False)
    files = sorted(tmp_path.glob("*.msg"))
    files[0].write_bytes(b"")                                     # delayed allocation: the size never hit disk
    files[1].write_bytes(b"fleet/d/events\n" + b"\0" * 16)          # metadata committed, data blocks not
    files[3].write_bytes(b"\0" * 40)                                # nothing but zeros
    sp = Spool(tmp_path, budget_bytes=1 << 20)                      # the agent after the power cut
    assert sp.stats()["dropped"] == 1 and sp.stats()["pending"] == 3  # the empty one at start-up
    sent = []
    assert sp.flush(lambda topic, payload: sent.append((topic, payload))) == 1
    assert sent == [("fleet/d/events", b'{"state": "committed"}')]
    assert sp.stats() == {"pending": 0, "bytes": 0, "budget_bytes": 1 << 20, "dropped": 3}
    assert Spool(tmp_path, 1 << 20).dropped == 3 and not list(tmp_path.glob("*.msg"))


def test_agent_fsyncs_install_outcomes_and_failures_not_progress_events(tmp_path, monkeypatch):
    from agent.config import AgentConfig
    from agent.service import Agent
    from edgekit.core.errors import ParityError

    agent = Agent(AgentConfig(device_id="d1", profile="x86-64-gateway", data_dir=tmp_path / "data",
                              trusted_root=tmp_path / "root.json"))
    agent.conn = object()  # as when running: events go through the spool
    calls = []
    real = agent.spool.append
    monkeypatch.setattr(agent.spool, "append", lambda topic, payload, durable=True: (calls.append(
        (messages_state(payload), durable)), real(topic, payload, durable))[1])
    for state in ("downloading", "verifying", "health_check", "committed"):
        agent._emit(state, True, {}, None, "dep-1")
    agent._emit("failed", False, {}, ParityError("health check failed"), "dep-2")
    assert calls == [("downloading", False), ("verifying", False), ("health_check", False), ("committed", True),
                     ("failed", True)]
    assert agent.spool.stats()["pending"] == 5


def messages_state(payload: bytes) -> str:
    return json.loads(payload)["state"]
