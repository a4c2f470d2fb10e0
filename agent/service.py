"""The running agent: MQTT session, deployment intake, inference serving, telemetry.

Threads: paho's network loop (message callbacks: parse and enqueue only, never block), one
install worker (the state machine), a small pool for inference RPC, one telemetry timer.
The serving model is swapped under a lock only after an install commits.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgekit.core import messages, tensors, topics
from edgekit.core.atomic import atomic_write_json, read_json
from edgekit.core.errors import EdgekitError, ModelError
from edgekit.core.mqtt import MqttConnection, TlsFiles, Will, reply
from edgekit.core.profiles import load_profile

from . import __version__
from .config import AgentConfig
from .installer import InstallRequest, Installer
from .runtime import Runner, load_runner
from .telemetry import InferenceStats, health


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.profile = load_profile(cfg.profile)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.stats = InferenceStats()
        self._lock = threading.RLock()
        self.runner: Runner | None = None
        self.manifest: dict | None = None
        self.conn: MqttConnection | None = None
        self._seq = 0            # events
        self._telemetry_seq = 0
        self._deployments: queue.Queue[InstallRequest | None] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="infer")
        self._stop = threading.Event()
        self.installer = Installer(cfg.data_dir, self.profile, cfg.trusted_root, self._emit,
                                   threads=cfg.threads, allow_expired=cfg.allow_expired,
                                   health_runs=cfg.health_runs, on_commit=self._load_model,
                                   device_id=cfg.device_id, device_key=cfg.device_key)
        self.session = self._next_session()

    # -- model serving ---------------------------------------------------------------------
    def _load_model(self, slot_dir: Path, manifest: dict) -> None:
        runner = load_runner(slot_dir / manifest["artifact"], manifest["engine"],
                             self.cfg.threads or self.profile.threads)
        with self._lock:
            self.runner, self.manifest = runner, manifest

    def load_current(self) -> None:
        slot = self.installer.slots.current()
        if slot:
            self._load_model(self.installer.slots.path(slot), self.installer.slots.manifest(slot))

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """In-process inference API (also what the RPC and endpoints call)."""
        with self._lock:
            runner = self.runner
        if runner is None:
            raise ModelError("no model installed yet", hint="Deploy one with `edgekit push`.")
        t0 = time.perf_counter()
        try:
            out = runner.run(inputs)
        except EdgekitError:
            self.stats.record(0.0, ok=False)
            raise
        self.stats.record((time.perf_counter() - t0) * 1000)
        return out

    @property
    def model_info(self) -> dict:
        m = self.manifest
        return {"model": m["model"]["name"], "version": m["model"]["version"]} if m else {}

    # -- reporting ---------------------------------------------------------------------------
    def _next_session(self) -> int:
        path = self.cfg.data_dir / "session.json"
        n = (read_json(path) or {}).get("session", 0) + 1
        atomic_write_json(path, {"session": n})
        return n

    def _status(self, online: bool, reason: str | None = None) -> bytes:
        return messages.dumps(messages.build(
            messages.STATUS, device=self.cfg.device_id, fleet=self.cfg.fleet, online=online,
            session=self.session, profile=self.profile.id, agent_version=__version__, reason=reason,
            **(self.model_info if online else {})))

    def _emit(self, state: str, ok: bool, details: dict, error: EdgekitError | None,
              deployment_id: str | None = None) -> None:
        self._seq += 1
        msg = messages.build(messages.EVENT, device=self.cfg.device_id, seq=self._seq, state=state, ok=ok,
                             deployment_id=deployment_id, error=error.to_dict() if error else None, details=details or None,
                             model=details.get("model"), version=details.get("version"))
        payload = messages.dumps(msg)
        if self.conn is not None and self.conn.connected:
            self.conn.publish(topics.events(self.cfg.fleet, self.cfg.device_id), payload, wait=False)
        else:
            print(payload.decode(), flush=True)

    def _publish_telemetry(self) -> None:
        self._telemetry_seq += 1
        msg = messages.build(messages.TELEMETRY, device=self.cfg.device_id, seq=self._telemetry_seq,
                             health=health(str(self.cfg.data_dir)), inference=self.stats.snapshot(),
                             **self.model_info)
        self.conn.publish(topics.telemetry(self.cfg.fleet, self.cfg.device_id), messages.dumps(msg), wait=False)

    # -- MQTT intake (network thread: parse, enqueue, never block) ----------------------------
    def _on_message(self, topic: str, payload: bytes, props) -> None:
        try:
            parsed = topics.parse(topic)
            if parsed.kind == "cmd" and parsed.rest == ("deploy",):
                self._on_notice(payload)
            elif parsed.kind == "rpc" and parsed.rest == ("infer",):
                self._pool.submit(self._on_infer, payload, props)
        except EdgekitError as exc:  # malformed, or a notice refused by verify_notice: say why
            self._emit("rejected", False, {"topic": topic}, exc,
                       getattr(exc, "details", {}).get("deployment_id"))

    def _on_notice(self, payload: bytes) -> None:
        from edgekit.core.notices import check_on_device

        notice = check_on_device(messages.loads(payload, messages.NOTICE), self.cfg.trusted_root,
                                 self.installer.root_history, device=self.cfg.device_id, fleet=self.cfg.fleet,
                                 replay_path=self.cfg.data_dir / "notices.json",
                                 now=self.installer._reference_time())  # clock with the persisted floor
        self._deployments.put(InstallRequest(
            deployment_id=notice["deployment_id"], url=notice["bundle_url"], sha256=notice["sha256"],
            length=notice["length"], model=notice["model"], version=notice["version"]))

    def _on_infer(self, payload: bytes, props) -> None:
        req_id = "?"
        try:
            req = messages.loads(payload, messages.INFER_REQUEST)
            req_id = req["id"]
            inputs = {name: tensors.decode(t, f"input {name!r}") for name, t in req["inputs"].items()}
            t0 = time.perf_counter()
            outputs = self.infer(inputs)
            resp = messages.build(messages.INFER_RESPONSE, id=req_id, ok=True, device=self.cfg.device_id,
                                  latency_ms=(time.perf_counter() - t0) * 1000,
                                  outputs={k: tensors.encode(v) for k, v in outputs.items()}, **self.model_info)
        except EdgekitError as exc:
            resp = messages.build(messages.INFER_RESPONSE, id=req_id, ok=False, device=self.cfg.device_id,
                                  error=exc.to_dict())
        reply(self.conn, props, messages.dumps(resp))

    # -- lifecycle ---------------------------------------------------------------------------
    def _worker(self) -> None:
        while (req := self._deployments.get()) is not None:
            self.installer.install(req)
            self._announce()

    def _announce(self, session_present: bool = False) -> None:
        self.conn.publish(topics.status(self.cfg.fleet, self.cfg.device_id), self._status(True),
                          retain=True, wait=False)

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.cfg.telemetry_interval_s):
            if self.conn.connected:
                self._publish_telemetry()

    def start(self) -> None:
        self.load_current()
        cid = f"edgekit-agent-{self.cfg.device_id}"
        tls = TlsFiles.from_dir(self.cfg.tls_identity) if self.cfg.tls_identity else None
        self.conn = MqttConnection(cid, self.cfg.mqtt_host, self.cfg.mqtt_port, keepalive=self.cfg.keepalive_s, tls=tls,
                                   will=Will(topics.status(self.cfg.fleet, self.cfg.device_id),
                                             self._status(False, "connection lost")))
        self.conn.on_connected = self._announce
        self.conn.connect()
        # resume an install a crash interrupted; connected first so its events reach the registry
        if self.installer.recover() is not None:
            self._announce()
        base = topics.device_base(self.cfg.fleet, self.cfg.device_id)
        self.conn.subscribe([(f"{base}/cmd/#", 1), (f"{base}/rpc/infer", 1)], self._on_message)
        threading.Thread(target=self._worker, name="installer", daemon=True).start()
        threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True).start()
        self._publish_telemetry()

    def stop(self) -> None:
        self._stop.set()
        self._deployments.put(None)
        if self.conn:
            self.conn.close(publish_first=(topics.status(self.cfg.fleet, self.cfg.device_id),
                                           self._status(False, "shutdown")))
        self._pool.shutdown(wait=False)

    def run_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        print(json.dumps({"agent": "ready", "device": self.cfg.device_id, "profile": self.profile.id,
                          "session": self.session, **self.model_info}), flush=True)
        done.wait()
        self.stop()


def new_deployment_id() -> str:
    return uuid.uuid4().hex[:12]
