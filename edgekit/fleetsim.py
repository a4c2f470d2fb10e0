"""Fleet simulator: N simulated devices in one process, one thread, speaking the real MQTT contract.

Each simulated device is a real paho MQTT 5 client with its own session and a retained
offline last will; it publishes a retained online status, periodic telemetry (inference p50/p95
and an optional ``drift_score``) and, for every deployment notice it receives, the install state
transitions the real agent reports (downloading → verifying → staging → health_check →
switching → committed, or ``failed`` with an error code). Behaviour per model version comes from
:class:`Knobs`: install failure rate, on-device parity failure rate, silence (never answers),
latency and drift. It does not download or verify bundles: it is for fleet-scale tests of the
registry and rollouts, not of the agent (tests of the agent use the real agent).

All clients share one thread: paho's external-loop hooks register each socket in a
``selectors`` selector (``loop_read``/``loop_write`` when ready, ``loop_misc`` every second).
Other threads talk to the loop only through :meth:`FleetSim.call`.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import selectors
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import paho.mqtt.client as paho

from edgekit.core import messages, topics
from edgekit.core.errors import MessageError, TimeoutError_, TransportError

INSTALL_STEPS = ("downloading", "verifying", "staging", "health_check", "switching")


@dataclass
class Knobs:
    failure_rate: float = 0.0         # install fails (error code "install") at "staging"
    parity_failure_rate: float = 0.0  # on-device health check fails (error code "parity")
    silent_rate: float = 0.0          # the device never answers the notice
    latency_ms: float = 5.0           # p95 reported in telemetry once this version runs
    drift_score: float | None = None  # reported in telemetry when set


@dataclass
class SimDevice:
    id: str
    client: paho.Client
    model: str
    version: str
    session: int = 1
    seq: int = 0
    telemetry_seq: int = 0
    connected: bool = False
    busy: bool = False
    notices: list[dict] = field(default_factory=list)
    previous: tuple[str, str] | None = None  # the inactive A/B slot: what a cmd/rollback can go back to


class FleetSim:
    def __init__(self, host: str, port: int, n: int, *, fleet: str = "default", profile: str = "raspberry-pi-4",
                 model: str = "digits-cnn", version: str = "1.0.0", prefix: str = "sim",
                 telemetry_s: float | None = 1.0, step_s: float = 0.01, knobs: dict[str, Knobs] | None = None,
                 default: Knobs | None = None, seed: int = 0, keepalive: int = 60) -> None:
        self.host, self.port, self.fleet, self.profile = host, port, fleet, profile
        self.telemetry_s, self.step_s, self.keepalive = telemetry_s, step_s, keepalive
        self.knobs, self.default = knobs or {}, default or Knobs()
        self.rng = random.Random(seed)
        self.sel = selectors.DefaultSelector()
        self.devices = {f"{prefix}-{i:04d}": None for i in range(n)}
        self._initial = (model, version)
        self._timers: list = []
        self._tick = itertools.count()
        self._calls: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleetsim", daemon=True)
        self.published = 0
        self.acked = 0  # PUBACKs received: published - acked is what is still in flight
        self.received_notices = 0

    # -- public API (any thread) -----------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "FleetSim":
        self._thread.start()
        self.call(self._connect_all)
        deadline = time.monotonic() + timeout
        while sum(d is not None and d.connected for d in self.devices.values()) < len(self.devices):
            if time.monotonic() > deadline or not self._thread.is_alive():
                up = sum(d is not None and d.connected for d in self.devices.values())
                raise TimeoutError_(f"fleetsim: only {up}/{len(self.devices)} devices connected in {timeout:.0f}s")
            time.sleep(0.05)
        return self

    def call(self, fn: Callable[[], object], wait: bool = True, timeout: float = 60.0):
        """Run ``fn`` on the simulator thread (paho clients are not thread-safe)."""
        box: dict = {}
        done = threading.Event()

        def run():
            try:
                box["v"] = fn()
            except Exception as exc:  # handed back to the caller
                box["e"] = exc
            done.set()

        self._calls.put(run)
        if wait:
            if not done.wait(timeout):
                raise TimeoutError_("fleetsim: the simulator thread did not answer")
            if "e" in box:
                raise box["e"]
            return box.get("v")

    def stop(self, graceful: bool = True) -> None:
        """Graceful: every device publishes a retained offline status ("shutdown"), waits for the
        broker's PUBACKs, then disconnects (no last will). Otherwise sockets are cut: wills fire."""
        if self._thread.is_alive():
            try:
                if graceful:
                    self.call(self._publish_offline, timeout=30)
                    self.wait_acked(timeout=30)
                self.call(lambda: self._disconnect_all(graceful), timeout=30)
            except TimeoutError_:
                pass
        self._stop.set()
        self._thread.join(10)

    def drop(self, device: str) -> None:
        """Cut a device's connection without DISCONNECT, so the broker publishes its last will."""
        def cut():
            d = self.devices[device]
            d.connected = False
            sock = d.client.socket()
            if sock is not None:
                self.sel.unregister(sock)
                sock.close()
            d.client = None
        self.call(cut)

    def flood_telemetry(self, per_device: int) -> int:
        """Every device publishes ``per_device`` telemetry messages (QoS 1) as fast as it can."""
        def burst():
            n = 0
            for d in self.devices.values():
                for _ in range(per_device):
                    self._telemetry(d)
                    n += 1
            return n
        return self.call(burst)

    def versions(self) -> dict[str, str]:
        return {i: f"{d.model}@{d.version}" for i, d in self.devices.items() if d}

    # -- simulator thread ------------------------------------------------------------------
    def _knobs(self, version: str) -> Knobs:
        return self.knobs.get(version, self.default)

    def _connect_all(self) -> None:
        model, version = self._initial
        for i, dev_id in enumerate(self.devices):
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"edgekit-agent-{dev_id}", protocol=paho.MQTTv5)
            d = SimDevice(dev_id, c, model, version)
            self.devices[dev_id] = d
            c.user_data_set(d)
            c.max_queued_messages_set(0)
            c.max_inflight_messages_set(100)
            c.will_set(topics.status(self.fleet, dev_id), self._status(d, False, "connection lost"), qos=1, retain=True)
            c.on_socket_open = lambda cl, ud, sock: self.sel.register(sock, selectors.EVENT_READ, cl)
            c.on_socket_close = lambda cl, ud, sock: self._unregister(sock)
            c.on_socket_register_write = lambda cl, ud, sock: self.sel.modify(
                sock, selectors.EVENT_READ | selectors.EVENT_WRITE, cl)
            c.on_socket_unregister_write = lambda cl, ud, sock: self.sel.modify(sock, selectors.EVENT_READ, cl)
            c.on_connect = self._on_connect
            c.on_message = self._on_message
            c.on_publish = self._on_publish
            try:
                c.connect(self.host, self.port, keepalive=self.keepalive)
            except OSError as exc:
                raise TransportError(f"fleetsim: cannot connect {dev_id} to {self.host}:{self.port}: {exc}") from None
            if self.telemetry_s:
                self._after(self.telemetry_s * (1 + i % 97 / 97), self._telemetry_timer, d)

    def _unregister(self, sock) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _publish_offline(self) -> None:
        for d in self.devices.values():
            if d is not None and d.client is not None and d.connected:
                self._publish(d, topics.status(self.fleet, d.id), self._status(d, False, "shutdown"), retain=True)

    def _disconnect_all(self, graceful: bool) -> None:
        for d in self.devices.values():
            if d is None or d.client is None:
                continue
            if graceful:
                d.client.disconnect()
                d.client.loop_write()  # DISCONNECT reaches the socket buffer before the close below
            sock = d.client.socket()
            if sock is not None:
                self._unregister(sock)
                sock.close()
            d.client, d.connected = None, False
        self._stop.set()

    def _on_connect(self, client, d: SimDevice, flags, reason_code, properties) -> None:
        if reason_code.value != 0:
            return
        d.connected = True
        base = topics.device_base(self.fleet, d.id)
        client.subscribe(f"{base}/cmd/#", qos=1)
        self._publish(d, topics.status(self.fleet, d.id), self._status(d, True), retain=True)

    def _on_publish(self, client, d, mid, reason_code, properties) -> None:
        self.acked += 1

    def wait_acked(self, timeout: float = 120.0) -> None:
        """Block until the broker acknowledged every QoS 1 message published so far."""
        deadline = time.monotonic() + timeout
        while self.acked < self.published:
            if time.monotonic() > deadline:
                raise TimeoutError_(f"fleetsim: {self.published - self.acked} publishes unacknowledged after {timeout:.0f}s")
            time.sleep(0.02)

    def _status(self, d: SimDevice, online: bool, reason: str | None = None) -> bytes:
        extra = {"model": d.model, "version": d.version} if online else {}
        return messages.dumps(messages.build(messages.STATUS, device=d.id, fleet=self.fleet, online=online,
                                             session=d.session, profile=self.profile, agent_version="sim",
                                             reason=reason, **extra))

    def _publish(self, d: SimDevice, topic: str, payload: bytes, retain: bool = False) -> None:
        if d.client is not None:
            d.client.publish(topic, payload, qos=1, retain=retain)
            self.published += 1

    def _telemetry(self, d: SimDevice) -> None:
        k = self._knobs(d.version)
        d.telemetry_seq += 1
        lat = k.latency_ms * (1 + 0.02 * self.rng.random())
        inference = {"count": d.telemetry_seq * 10, "errors": 0, "p50_ms": round(lat * 0.7, 4),
                     "p95_ms": round(lat, 4), "p99_ms": round(lat * 1.2, 4), "window": 10}
        if k.drift_score is not None:
            inference["drift_score"] = k.drift_score
        msg = messages.build(messages.TELEMETRY, device=d.id, seq=d.telemetry_seq, health={"cpu_percent": 1.0},
                             inference=inference, model=d.model, version=d.version)
        self._publish(d, topics.telemetry(self.fleet, d.id), messages.dumps(msg))

    def _telemetry_timer(self, d: SimDevice) -> None:
        if d.client is None:
            return
        if d.connected:
            self._telemetry(d)
        self._after(self.telemetry_s, self._telemetry_timer, d)

    def _event(self, d: SimDevice, notice: dict, state: str, ok: bool, error: dict | None = None) -> None:
        d.seq += 1
        msg = messages.build(messages.EVENT, device=d.id, seq=d.seq, state=state, ok=ok,
                             deployment_id=notice["deployment_id"], model=notice["model"], version=notice["version"],
                             error=error)
        self._publish(d, topics.events(self.fleet, d.id), messages.dumps(msg))

    def _on_message(self, client, d: SimDevice, msg) -> None:
        try:
            rest = topics.parse(msg.topic).rest
            if rest == ("rollback",):
                return self._on_rollback(d, messages.loads(msg.payload, messages.ROLLBACK))
            if rest != ("deploy",):
                return
            notice = messages.loads(msg.payload, messages.NOTICE)
        except MessageError:
            return
        self.received_notices += 1
        d.notices.append(notice)
        k = self._knobs(notice["version"])
        roll = self.rng.random()
        if roll < k.silent_rate:
            return
        outcome = "install" if roll < k.silent_rate + k.failure_rate else \
            "parity" if roll < k.silent_rate + k.failure_rate + k.parity_failure_rate else "ok"
        if (notice["model"], notice["version"]) == (d.model, d.version):
            outcome = "already"
        self._after(self.step_s, self._install_step, d, notice, 0, outcome)

    def _on_rollback(self, d: SimDevice, cmd: dict) -> None:
        """Answer a cmd/rollback like the agent: back to the previous slot if it holds model@version."""
        self.received_notices += 1
        d.notices.append(cmd)
        want = (cmd["model"], cmd["version"])
        if want == (d.model, d.version):
            return self._event(d, cmd, "already_installed", True)
        if want != d.previous:
            have = "@".join(d.previous) if d.previous else "nothing"
            return self._event(d, cmd, "failed", False, {"code": "rollback_unavailable", "message":
                               f"cannot roll back to {want[0]}@{want[1]}: the previous slot holds {have}"})
        self._event(d, cmd, "rolling_back", True)
        d.previous, (d.model, d.version) = (d.model, d.version), want
        self._event(d, cmd, "rolled_back", True)
        self._publish(d, topics.status(self.fleet, d.id), self._status(d, True), retain=True)
        self._telemetry(d)

    def _install_step(self, d: SimDevice, notice: dict, i: int, outcome: str) -> None:
        if d.client is None:
            return
        if outcome == "already":
            return self._event(d, notice, "already_installed", True)
        state = INSTALL_STEPS[i] if i < len(INSTALL_STEPS) else None
        if outcome == "install" and state == "staging":
            return self._event(d, notice, "failed", False, {"code": "install", "message": "simulated install failure"})
        if outcome == "parity" and state == "health_check":
            return self._event(d, notice, "failed", False, {"code": "parity",
                                                            "message": "health check failed: golden vectors differ"})
        if state is None:
            d.previous, (d.model, d.version) = (d.model, d.version), (notice["model"], notice["version"])
            self._event(d, notice, "committed", True)
            self._publish(d, topics.status(self.fleet, d.id), self._status(d, True), retain=True)
            self._telemetry(d)
            return
        self._event(d, notice, state, True)
        self._after(self.step_s, self._install_step, d, notice, i + 1, outcome)

    def _after(self, delay: float, fn, *args) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._tick), fn, args))

    def _loop(self) -> None:
        next_misc = time.monotonic() + 1
        while not self._stop.is_set():
            while True:
                try:
                    self._calls.get_nowait()()
                except queue.Empty:
                    break
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn, args = heapq.heappop(self._timers)
                fn(*args)
            wait = min(0.05, max(self._timers[0][0] - now, 0) if self._timers else 0.05)
            for key, mask in (self.sel.select(wait) if self.sel.get_map() else (time.sleep(wait) or [])):
                client = key.data
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
            if now >= next_misc:
                next_misc = now + 1
                for d in self.devices.values():
                    if d is not None and d.client is not None:
                        d.client.loop_misc()
