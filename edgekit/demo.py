"""``edgekit demo``: the whole flow on one machine with real parts, then everything is stopped.

Starts a managed mosquitto (loopback, free port), the registry and three agents (separate
processes and data folders, different profiles), converts the sample model for each profile,
signs and uploads the bundles, marks the version released and lets the registry roll it out
(signed notices, waves with abort rules, the same path as ``edgekit deploy``), runs one inference
per device through the agent and compares it with the fp32 reference. Returns the result rows; raises on any failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np

from .broker import ManagedBroker, free_port, stop_process
from .core.errors import EdgekitError, TransportError

SAMPLES = Path(__file__).parent / "samples" / "digits"
DEMO_DEVICES = (("pi4-kitchen", "raspberry-pi-4"), ("gateway-01", "x86-64-gateway"), ("jetson-lab", "jetson-orin-nano"))
# the demo's rollout: one device first, then the rest; any failed install or parity failure aborts it
DEMO_WAVES, DEMO_ABORT_IF = "34%,100%", ("failure_rate>0%", "parity_failures>0")


class Proc:
    """A child process that prints a JSON line with a ``"ready"`` value on stdout once it serves."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def ready(self, timeout: float = 30.0) -> dict:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "ready" in obj.values():  # e.g. {"agent": "ready", ...}
                return obj
        tail = self.log.read_text()[-800:] if self.log.exists() else ""
        raise TransportError(f"{self.name} did not start (exit {self.proc.poll()}): {tail}")

    def stop(self) -> None:
        stop_process(self.proc)


def provision_device(home: Path, device: str, profile: str, broker_port: int, root: Path, *,
                     fleet: str = "demo", telemetry_s: float = 2.0, threads: int = 0, host: str = "127.0.0.1",
                     identity: str | None = None, freshness: str = "auto") -> Path:
    """Write what a device gets at provisioning: its copy of the trust root and an agent config
    (``identity``: its TLS identity folder, relative to ``home``; see ``edgekit device enroll``)."""
    from agent.config import render_config

    home.mkdir(parents=True, exist_ok=True)
    (home / "root.json").write_bytes(root.read_bytes())
    cfg = home / "agent.toml"
    cfg.write_text(render_config(device_id=device, fleet=fleet, profile=profile, data_dir="data",
                                 trusted_root="root.json", host=host, port=broker_port,
                                 telemetry_interval_s=telemetry_s, threads=threads, identity=identity,
                                 freshness=freshness))
    return cfg


def start_agent(workdir: Path, device: str, profile: str, broker: ManagedBroker, root: Path,
                telemetry_s: float = 2.0) -> Proc:
    home = workdir / "devices" / device
    if broker.tls:  # mTLS broker: enroll (certificate + key in the device folder), then let the ACL know
        from .pki import enroll_device

        cfg = enroll_device(broker.pki, device, profile, home, root, broker_port=broker.port,
                            fleet=broker.pki.index["fleet"], telemetry_s=telemetry_s, force=True)
        broker.reload()
        return Proc(device, [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
    cfg = provision_device(home, device, profile, broker.port, root, telemetry_s=telemetry_s)
    return Proc(device, [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")


def registry_token(db_url: str, name: str = "demo") -> str:
    """An operator API token, created in the registry database before the registry starts."""
    from edgekit.registry import db, tokens

    engine = db.open_db(db_url)
    try:
        return tokens.create(engine, "operator", name)["token"]
    finally:
        engine.dispose()


def start_registry(workdir: Path, broker: ManagedBroker, keys: Path | None = None) -> tuple[Proc, str]:
    """The registry as a child process; ``keys``: key store whose notices key signs rollout notices and
    whose online snapshot/timestamp keys sign the hosted TUF metadata (``--trust``, ADR 0010) after the
    operator step ``registry trust init`` done here with the same store."""
    if keys:
        from edgekit.registry import db
        from edgekit.registry.trust_repo import TrustRepo

        engine = db.open_db(f"sqlite:///{workdir}/registry.db")
        try:
            TrustRepo(engine, keys).init_targets()
        finally:
            engine.dispose()
    port = free_port()
    tls = ["--identity", str(broker.pki.directory / "services" / "edgekit-registry")] if broker.tls else []
    proc = Proc("registry", [sys.executable, "-m", "edgekit.cli.main", "registry", "serve",
                             "--db", f"sqlite:///{workdir}/registry.db", "--store", str(workdir / "artifacts"),
                             "--port", str(port), "--broker", f"127.0.0.1:{broker.port}", *tls,
                             *(["--keys", str(keys), "--trust"] if keys else [])],
                workdir / "registry.log")
    return proc, proc.ready()["url"]


def run_demo(workdir: Path | None = None, log: Callable[[str], None] = print, *, secure: bool = True) -> list[dict]:
    from converters.data import load_dataset
    from converters.onnx_pipeline import convert_onnx
    from edgekit.core.mqtt import MqttConnection
    from edgekit.core.profiles import load_profile
    from edgekit.deploy import infer_remote, upload
    from edgekit.keys import init_keystore
    from edgekit.pki import HOST, init_pki
    from edgekit.release import release_artifact

    t_start = time.perf_counter()
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgekit-demo-")))
        workdir.mkdir(parents=True, exist_ok=True)
        pki = init_pki(workdir / "pki", fleet="demo") if secure else None
        log(f"[1/7] starting mosquitto (loopback, {'mTLS + per-device ACL' if secure else 'PLAIN, no auth'}) in {workdir}")
        broker = stack.enter_context(ManagedBroker(workdir / "broker", pki=pki))
        store = init_keystore(workdir / "keys")
        log(f"[2/7] starting the registry (signs rollout notices, hosts TUF metadata); broker on 127.0.0.1:{broker.port}")
        token = registry_token(f"sqlite:///{workdir}/registry.db")  # writes to the registry API need a token
        registry, url = start_registry(workdir, broker, keys=store.directory)
        stack.callback(registry.stop)
        log(f"[3/7] starting {len(DEMO_DEVICES)} agents: " + ", ".join(f"{d} ({p})" for d, p in DEMO_DEVICES))
        agents = [start_agent(workdir, d, p, broker, store.root_path) for d, p in DEMO_DEVICES]
        for a in agents:
            stack.callback(a.stop)
        for a in agents:
            a.ready()

        log("[4/7] converting the sample model per profile (parity gate on the validation split)")
        model = SAMPLES / "digits_cnn.onnx"
        cal = load_dataset(SAMPLES / "calibration.npz", ["input"])
        val = load_dataset(SAMPLES / "validation.npz", ["input"])
        reports = {p: convert_onnx(model, load_profile(p), workdir / "out", precision="auto", calibration=cal,
                                   validation=val) for _, p in DEMO_DEVICES}

        log("[5/7] signing bundles and uploading them to the registry")
        bundles = {p: release_artifact(workdir / "out" / p, store, workdir / "bundles", name="digits-cnn",
                                       version="1.0.0") for p in reports}
        for b in bundles.values():
            upload(b, url, token)  # registers digits-cnn@1.0.0 (draft) and its per-profile artifacts

        log(f"[6/7] releasing digits-cnn@1.0.0 and rolling it out from the registry: waves {DEMO_WAVES}, "
            f"abort if {' or '.join(DEMO_ABORT_IF)}")
        _wait_registry(url, {d for d, _ in DEMO_DEVICES}, with_model=False)
        rollout = _rollout(url, "digits-cnn", "1.0.0", log, token)
        conn = MqttConnection(f"edgekit-demo-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port,
                              tls=pki.service(HOST) if pki else None)
        conn.connect()
        stack.callback(conn.close)

        log("[7/7] one inference per device through the agent, compared with the fp32 reference")
        import onnxruntime as ort

        ref_sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        sample = {"input": val.inputs["input"][:1]}
        ref = ref_sess.run(None, sample)[0]
        rows = []
        for device, profile in DEMO_DEVICES:
            t0 = time.perf_counter()
            outputs, resp = infer_remote(conn, "demo", device, sample, timeout=10)
            rtt = (time.perf_counter() - t0) * 1000
            got = outputs["logits"]
            cos = float(np.dot(got.ravel(), ref.ravel()) / (np.linalg.norm(got) * np.linalg.norm(ref)))
            agree = int(np.argmax(got)) == int(np.argmax(ref))
            rows.append({"device": device, "profile": profile, "precision": reports[profile]["precision"],
                         "model": f"{resp['model']}@{resp['version']}",
                         "parity": f"{'top-1 match' if agree else 'MISMATCH'}, cos {cos:.4f}",
                         "device_ms": round(resp["latency_ms"], 3), "round_trip_ms": round(rtt, 2),
                         "ok": agree and cos >= 0.99})
        fleet = _wait_registry(url, {d for d, _ in DEMO_DEVICES})
        for r in rows:
            d = fleet.get(r["device"], {})
            r["registry"] = f"{'online' if d.get('online') else 'offline'} {d.get('version') or '-'}"
            r["rollout"] = rollout
        bad = [r["device"] for r in rows if not r["ok"]]
        if bad:
            raise EdgekitError(f"parity check failed on {', '.join(bad)}")
        log(f"done in {time.perf_counter() - t_start:.1f}s; stopping everything the demo started")
        return rows


def _rollout(url: str, model: str, version: str, log: Callable[[str], None], token: str,
             timeout: float = 60.0) -> str:
    """Release ``model@version`` and roll it out to every device through the registry's engine
    (as ``edgekit models stage`` + ``edgekit deploy --wait`` do); return the rollout id once it succeeded."""
    from edgekit.registry_client import api

    api(url, "POST", f"/api/v1/models/{model}/versions/{version}", body={"stage": "released"}, token=token)
    out = api(url, "POST", "/api/v1/rollouts",
              body={"model": model, "version": version, "selector": "all", "waves": DEMO_WAVES,
                    "abort_if": list(DEMO_ABORT_IF), "timeout_s": 60}, token=token)
    deadline, wave = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        r = api(url, "GET", f"/api/v1/rollouts/{out['id']}", token=token)
        if r["wave"] != wave and r["state"] == "running":
            wave = r["wave"]
            log(f"      rollout {r['id']}: wave {wave}/{len(r['waves'])} ({r['waves'][wave - 1]:g}%)"
                if 0 < wave <= len(r["waves"]) else f"      rollout {r['id']}: {r['state']}")
        if r["state"] == "succeeded":
            log(f"      rollout {r['id']} succeeded: {r['counts'].get('succeeded', 0)} device(s) committed")
            return r["id"]
        if r["state"] not in ("running", "paused"):
            raise EdgekitError(f"demo rollout {r['id']} ended {r['state']}: {r.get('reason') or ''}",
                               hint=f"See the agent logs and `edgekit rollout status {r['id']} --registry {url}`.")
        time.sleep(0.2)
    raise TransportError(f"demo rollout {out['id']} did not finish within {timeout:.0f}s",
                         hint="See the agent and registry logs in the demo's work folder (--workdir).")


def _wait_registry(url: str, devices: set[str], timeout: float = 15.0, *, with_model: bool = True) -> dict[str, dict]:
    """Wait until the registry has seen every device online (with a model) via MQTT ingest."""
    import requests

    deadline = time.monotonic() + timeout
    seen: dict[str, dict] = {}
    while time.monotonic() < deadline:
        seen = {d["id"]: d for d in requests.get(f"{url}/api/v1/devices", timeout=5).json()["devices"]}
        if all(seen.get(d, {}).get("online") and (seen[d].get("version") or not with_model) for d in devices):
            return seen
        time.sleep(0.2)
    raise TransportError(f"registry did not report all devices online with a model: {sorted(devices - set(seen))}")
