"""The running agent: MQTT session, deployment intake, inference serving, telemetry.

Threads: paho's network loop (message callbacks: parse and enqueue only, never block), one
install worker (the state machine), a small pool for inference RPC, one telemetry timer.
The serving model is swapped under a lock only after an install commits.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.core import messages, topics
from edgekit.core.atomic import atomic_write_json, read_json
from edgekit.core.errors import BundleError, EdgekitError, ModelError, TransportError
from edgekit.core.mqtt import MqttConnection, TlsFiles, Will, reply
from edgekit.core.profiles import load_profile

from . import __version__
from .config import AgentConfig
from .installer import TERMINAL, InstallRequest, Installer
from .runtime import Runner, load_runner, serving_threads
from .spool import Spool
from .telemetry import InferenceStats, health

if TYPE_CHECKING:  # numpy and the drift/tensor codecs load with the first model or request
    import numpy as np

    from edgekit.core.drift import Sketch

# True: every install event is fsynced in the spool (the policy before ADR 0015; benchmarks/agent.py
# compares both). False: only outcomes (terminal states) and failures are.
DURABLE_EVENTS = False


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.profile = load_profile(cfg.profile)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.stats = InferenceStats()
        self._lock = threading.RLock()
        self.runner: Runner | None = None
        self.manifest: dict | None = None
        self.drift: Sketch | None = None  # drift sketch when the serving bundle ships drift.json
        self.conn: MqttConnection | None = None
        self._seq = 0            # events
        self._telemetry_seq = 0
        self._deployments: queue.Queue[InstallRequest | None] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="infer")
        self._stop = threading.Event()
        self.endpoint = None  # agent.endpoint.LocalEndpoint when [endpoint] is configured
        self.spool = Spool(cfg.data_dir / "spool", cfg.spool_bytes)  # telemetry waits here for its PUBACK
        self._wake = threading.Event()  # set on append and on (re)connect: the sender flushes the spool
        self.restart_on_stuck = False  # run_forever: re-exec when a health check cannot be stopped (ADR 0012)
        self.installer = Installer(cfg.data_dir, self.profile, cfg.trusted_root, self._emit,
                                   threads=cfg.threads, allow_expired=cfg.allow_expired,
                                   health_runs=cfg.health_runs, health_timeout_s=cfg.health_timeout_s,
                                   on_commit=self._load_model, device_id=cfg.device_id, device_key=cfg.device_key,
                                   min_rate_bps=cfg.min_rate_bps, download_grace_s=cfg.download_grace_s,
                                   chunk_source=self._chunk_source, spin=cfg.spin, freshness=cfg.freshness,
                                   metadata_fetcher=self._metadata_fetcher)
        self.session = self._next_session()

    # -- model serving ---------------------------------------------------------------------
    def _load_model(self, slot_dir: Path, manifest: dict, runner: Runner | None = None) -> None:
        """Serve ``manifest``'s model; ``runner`` is the session the health check built, if any."""
        if runner is None:
            runner = load_runner(slot_dir / manifest["artifact"], manifest["engine"],
                                 serving_threads(self.cfg.threads, self.profile.threads), self.cfg.spin)
        sketch = load_drift(slot_dir)
        with self._lock:
            self.runner, self.manifest, self.drift = runner, manifest, sketch

    def load_current(self) -> None:
        slot = self.installer.slots.current()
        if slot:
            self._load_model(self.installer.slots.path(slot), self.installer.slots.manifest(slot))

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """In-process inference API (also what the RPC and the local endpoint call).

        ``inputs`` maps each model input name to a numpy array of the manifest's dtype and shape
        (batch dimension included); returns output name -> array. Thread-safe; the model may be
        swapped by an install between two calls, never during one. Raises ``ModelError`` when no
        model is installed or the inputs do not fit. Every call is counted in telemetry::

            agent = Agent(load_config("agent.toml")); agent.load_current()
            out = agent.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})["logits"]
        """
        with self._lock:
            runner, sketch = self.runner, self.drift
        if runner is None:
            raise ModelError("no model installed yet", hint="Deploy one with `edgekit push`.")
        t0 = time.perf_counter()
        try:
            out = runner.run(inputs)
        except EdgekitError:
            self.stats.record(0.0, ok=False)
            raise
        self.stats.record((time.perf_counter() - t0) * 1000)
        if sketch is not None and self.stats.count % self.cfg.drift_every == 0:
            sketch.update(inputs, out)
        return out

    def endpoint_info(self) -> dict:
        """What the local endpoint's /v1/model shows ({} without a model)."""
        m = self.manifest
        if not m:
            return {}
        return {**self.model_info, "engine": m["engine"], "inputs": m["inputs"], "outputs": m["outputs"]}

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
        if self.conn is not None:  # through the spool, like telemetry: a broker outage loses no event
            # an install's progress events are not fsynced (2 fsyncs each, 7 per install); its outcome is,
            # and survives a power cut like the install's own state record (ADR 0015)
            self.spool.append(topics.events(self.cfg.fleet, self.cfg.device_id), payload,
                              durable=DURABLE_EVENTS or state in TERMINAL or not ok)
            self._wake.set()
        else:
            print(payload.decode(), flush=True)

    def _publish_telemetry(self) -> None:
        """Spool the message on disk first, then send what the spool holds (QoS 1, oldest first)."""
        self._telemetry_seq += 1
        msg = messages.build(messages.TELEMETRY, device=self.cfg.device_id, seq=self._telemetry_seq,
                             health=health(str(self.cfg.data_dir)), inference=self.stats.snapshot(),
                             spool=self.spool.stats(), drift=self.drift.snapshot() if self.drift else None,
                             **self.model_info)
        self.spool.append(topics.telemetry(self.cfg.fleet, self.cfg.device_id), messages.dumps(msg))
        self._wake.set()  # the sender thread flushes: a stalled broker never delays measuring

    def _flush_spool(self) -> None:
        conn = self.conn
        if conn is not None and conn.connected:  # offline: paho would queue (and later resend) in memory
            self.spool.flush(lambda topic, payload: conn.publish(topic, payload, qos=1, wait=True, timeout=5))

    # -- MQTT intake (network thread: parse, enqueue, never block) ----------------------------
    def _on_message(self, topic: str, payload: bytes, props) -> None:
        try:
            parsed = topics.parse(topic)
            if parsed.kind == "cmd" and parsed.rest == ("deploy",):
                self._on_notice(payload)
            elif parsed.kind == "cmd" and parsed.rest == ("rollback",):
                self._on_notice(payload, messages.ROLLBACK)
            elif parsed.kind == "rpc" and parsed.rest == ("infer",):
                self._pool.submit(self._on_infer, payload, props)
            elif parsed.kind == "sensors" and len(parsed.rest) == 1 and parsed.rest[0] in self.cfg.streams:
                self._pool.submit(self._on_sensor, parsed.rest[0], payload)
        except EdgekitError as exc:  # malformed, or a notice refused by verify_notice: say why
            self._emit("rejected", False, {"topic": topic}, exc,
                       getattr(exc, "details", {}).get("deployment_id"))

    def _on_notice(self, payload: bytes, schema: str = messages.NOTICE) -> None:
        """A signed deploy notice, or (``schema=ROLLBACK``) a signed rollback command: same checks."""
        from edgekit.core.notices import check_on_device

        notice = check_on_device(messages.loads(payload, schema), self.cfg.trusted_root,
                                 self.installer.root_history, device=self.cfg.device_id, fleet=self.cfg.fleet,
                                 replay_path=self.cfg.data_dir / "notices.json",
                                 now=self.installer._reference_time())  # clock with the persisted floor
        if schema == messages.ROLLBACK:
            return self._deployments.put(InstallRequest(deployment_id=notice["deployment_id"], model=notice["model"],
                                                        version=notice["version"], kind="rollback"))
        self._deployments.put(InstallRequest(
            deployment_id=notice["deployment_id"], url=notice["bundle_url"], sha256=notice["sha256"],
            length=notice["length"], model=notice["model"], version=notice["version"],
            transport=notice.get("transport", "http")))

    def _chunk_source(self, req: InstallRequest):
        """MQTT transfer (notice transport "mqtt"): bundle chunks from the registry over this session."""
        from .fetch_mqtt import MqttChunkSource

        if self.conn is None:
            raise TransportError("no broker session for an MQTT transfer")
        return MqttChunkSource(self.conn, self.cfg.fleet, self.cfg.device_id, req.sha256,
                               chunk_bytes=self.cfg.mqtt_chunk_bytes)

    def _metadata_fetcher(self, end: float):
        """MQTT transfer: the release check reads the registry's hosted TUF metadata over this session."""
        from .trust_mqtt import metadata_fetcher

        if self.conn is None:
            raise TransportError("no broker session to check the release over")
        return metadata_fetcher(self.conn, self.cfg.fleet, self.cfg.device_id, end,
                                chunk_bytes=self.cfg.mqtt_chunk_bytes)

    def _on_infer(self, payload: bytes, props) -> None:
        from edgekit.core import tensors

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

    def _on_sensor(self, stream: str, payload: bytes) -> None:
        """Streaming mode: infer on one sensor sample, publish the prediction (QoS 1, no wait)."""
        from edgekit.core import tensors

        fields: dict = {}
        try:
            msg = messages.loads(payload, messages.SENSOR)
            fields = {"seq": msg.get("seq"), "sensor_ts": msg["ts"]}
            inputs = {name: tensors.decode(t, f"input {name!r}") for name, t in msg["inputs"].items()}
            t0 = time.perf_counter()
            outputs = self.infer(inputs)
            out = messages.build(messages.PREDICTION, device=self.cfg.device_id, stream=stream, ok=True,
                                 latency_ms=(time.perf_counter() - t0) * 1000,
                                 outputs={k: tensors.encode(v) for k, v in outputs.items()}, **fields,
                                 **self.model_info)
        except EdgekitError as exc:
            out = messages.build(messages.PREDICTION, device=self.cfg.device_id, stream=stream, ok=False,
                                 error=exc.to_dict(), **fields)
        self.conn.publish(topics.prediction(self.cfg.fleet, self.cfg.device_id, stream), messages.dumps(out),
                          wait=False)

    # -- lifecycle ---------------------------------------------------------------------------
    def _worker(self) -> None:
        while (req := self._deployments.get()) is not None:
            rec = self.installer.install(req)
            self._announce()
            self._restart_if_stuck(rec.request.deployment_id)

    def _restart_if_stuck(self, deployment_id: str | None) -> None:
        """A health check that could not be stopped (TFLite ``invoke()`` has no interrupt) leaves a
        thread burning a core and holding the rejected model. Its install is already recorded as
        failed (state.json, spooled events), so the agent replaces itself with a fresh process:
        same pid and argv, the committed slot serves again (ADR 0012). Only the ``run`` daemon
        does this; an embedded :class:`Agent` never replaces its host process."""
        stuck = self.installer.stuck_worker
        if stuck is None or not stuck.is_alive():
            return
        self._emit("restarting", True, {"reason": "the health check's inference thread could not be stopped; "
                                                  "restarting the agent to release it", "thread": stuck.name,
                                        "threads_before": threading.active_count()}, None, deployment_id)
        if not self.restart_on_stuck:
            self.installer.stuck_worker = None  # reported once; an embedded agent cannot release it
            return
        deadline = time.monotonic() + 2.0  # let the spooled events leave now (else: after the restart)
        while self.spool.stats()["pending"] and time.monotonic() < deadline and self.conn and self.conn.connected:
            time.sleep(0.02)
        self.stop("restarting")
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, sys.orig_argv)
        except OSError as exc:  # a supervisor (systemd Restart=) brings the agent back
            print(json.dumps({"agent": "restart_failed", "error": repr(exc)}), flush=True)
            os._exit(75)

    def _announce(self, session_present: bool = False) -> None:
        self.conn.publish(topics.status(self.cfg.fleet, self.cfg.device_id), self._status(True),
                          retain=True, wait=False)

    def _on_connected(self, session_present: bool = False) -> None:  # paho's network thread: never block
        self._announce(session_present)
        self._wake.set()

    def _telemetry_loop(self) -> None:
        self._publish_telemetry()  # right away, then every interval_s; spooled even while offline
        while not self._stop.wait(self.cfg.telemetry_interval_s):
            self._publish_telemetry()

    def _sender_loop(self) -> None:
        """Flush the spool whenever a message was added or the connection came back."""
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if not self._stop.is_set():
                try:
                    self._flush_spool()
                except Exception as exc:  # noqa: BLE001 - the sender must outlive any one failure
                    print(json.dumps({"agent": "spool_error", "error": repr(exc)}), flush=True)

    def start(self) -> None:
        self.load_current()
        cid = f"edgekit-agent-{self.cfg.device_id}"
        tls = TlsFiles.from_dir(self.cfg.tls_identity) if self.cfg.tls_identity else None
        self.conn = MqttConnection(cid, self.cfg.mqtt_host, self.cfg.mqtt_port, keepalive=self.cfg.keepalive_s, tls=tls,
                                   will=Will(topics.status(self.cfg.fleet, self.cfg.device_id),
                                             self._status(False, "connection lost")))
        self.conn.on_connected = self._on_connected
        self.conn.connect()
        # resume an install a crash interrupted; connected first so its events reach the registry
        if (rec := self.installer.recover()) is not None:
            self._announce()
            self._restart_if_stuck(rec.request.deployment_id)
        base = topics.device_base(self.cfg.fleet, self.cfg.device_id)
        self.conn.subscribe([(f"{base}/cmd/#", 1), (f"{base}/rpc/infer", 1)], self._on_message)
        if self.cfg.streams:  # streaming mode
            self.conn.subscribe([(topics.sensor(self.cfg.fleet, self.cfg.device_id, s), 1) for s in self.cfg.streams],
                                self._on_message)
        threading.Thread(target=self._worker, name="installer", daemon=True).start()
        threading.Thread(target=self._sender_loop, name="spool-sender", daemon=True).start()
        threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True).start()
        self.start_endpoint()

    def start_endpoint(self) -> None:
        if self.cfg.endpoint_port is None and self.cfg.endpoint_socket is None:
            return
        from .endpoint import LocalEndpoint

        self.endpoint = LocalEndpoint(self.infer, self.endpoint_info, port=self.cfg.endpoint_port,
                                      socket_path=self.cfg.endpoint_socket).start()

    def stop(self, reason: str = "shutdown") -> None:
        self._stop.set()
        self._wake.set()
        if self.endpoint is not None:
            self.endpoint.stop()
        self._deployments.put(None)
        if self.conn:
            self.conn.close(publish_first=(topics.status(self.cfg.fleet, self.cfg.device_id),
                                           self._status(False, reason)))
        self._pool.shutdown(wait=False)

    def run_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.restart_on_stuck = True
        self.start()
        ep = self.endpoint
        print(json.dumps({"agent": "ready", "device": self.cfg.device_id, "profile": self.profile.id,
                          "session": self.session, **self.model_info,
                          **({"endpoint_port": ep.port, "endpoint_socket": str(ep.socket_path or "") or None}
                             if ep else {}), **({"streams": self.cfg.streams} if self.cfg.streams else {})}),
              flush=True)
        done.wait()
        self.stop()


def load_drift(slot_dir: Path) -> Sketch | None:
    """The drift sketch of a slot whose bundle shipped a (signed, verified) drift.json, else None."""
    from edgekit.core.drift import MEMBER, Sketch

    try:
        ref = read_json(slot_dir / MEMBER)
        return Sketch(ref) if ref is not None else None
    except (BundleError, ValueError):  # a malformed reference disables drift, never serving
        return None


def new_deployment_id() -> str:
    return uuid.uuid4().hex[:12]
