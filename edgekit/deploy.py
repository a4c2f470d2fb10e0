"""Host side of a deployment: upload a bundle to the registry, send the notice, follow events.

Also MQTT inference requests to a device (``infer_remote``). Used by ``edgekit push``,
``edgekit infer`` and the demo.
"""

from __future__ import annotations

import queue
import time
import uuid
from pathlib import Path

import numpy as np
import requests

from .core import bundle, messages, tensors, topics
from .core.errors import EdgekitError, InstallError, MessageError, TimeoutError_, TransportError, UsageError
from .core.mqtt import MqttConnection

TERMINAL_OK = ("committed", "already_installed")
TERMINAL_FAIL = ("failed", "rolled_back", "rejected")


def parse_broker(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise TransportError(f"--broker must be HOST:PORT, got {value!r}")
    return host, int(port)


def upload(bundle_path: Path, registry: str, token: str | None = None) -> dict:
    """Upload a bundle with an operator token (``token`` or ``$EDGEKIT_REGISTRY_TOKEN``)."""
    from .registry_client import auth_headers, raise_for_auth

    size = bundle_path.stat().st_size
    auth = auth_headers(token)
    try:
        with open(bundle_path, "rb") as fh:
            r = requests.post(f"{registry.rstrip('/')}/api/v1/artifacts", params={"name": bundle_path.name},
                              data=fh, headers={"Content-Length": str(size), **auth}, timeout=60)
    except requests.RequestException as exc:
        raise TransportError(f"cannot upload to the registry at {registry}: {exc}",
                             hint="Start it with `edgekit registry serve` or pass --registry URL.") from None
    if r.status_code in (401, 403):
        try:
            data = r.json()
        except ValueError:
            data = {}
        raise_for_auth(r.status_code, data, registry, bool(auth))
    if r.status_code != 201:
        raise TransportError(f"registry refused the upload: HTTP {r.status_code} {r.text[:200]}")
    return r.json()


def read_manifest(bundle_path: Path) -> dict:
    """The (unverified) manifest of a bundle, to fill the notice. Devices verify for themselves."""
    return bundle.peek_manifest(bundle_path)


def make_notice(manifest: dict, stored: dict, ttl_s: float = 3600, *, device: str | None = None,
                fleet: str = "default", signer=None, transport: str | None = None) -> dict:
    """A deployment notice; with ``signer`` (``KeyStore.notice_signer()``) and ``device`` it is
    signed for that one device and fleet, single-use (nonce) and expires after ``ttl_s``.
    Agents refuse unsigned notices (see :mod:`edgekit.core.notices`). ``transport="mqtt"`` makes
    the device fetch the bundle in chunks over the broker instead of HTTP (signed like the rest)."""
    now = time.time()
    notice = messages.build(messages.NOTICE, deployment_id=uuid.uuid4().hex[:12], model=manifest["model"]["name"],
                            version=manifest["model"]["version"], profile=manifest["profile"],
                            bundle_url=stored["url"], sha256=stored["sha256"], length=stored["length"],
                            issued_at=now, expires_at=now + ttl_s, transport=transport)
    if signer is None:
        return notice
    if device is None:
        raise UsageError("a signed notice names its device: pass device=")
    return signer.sign(notice, device=device, fleet=fleet)


def make_rollback(model: str, version: str, ttl_s: float = 3600, *, device: str | None = None,
                  fleet: str = "default", signer=None, from_version: str | None = None) -> dict:
    """A ``cmd/rollback`` command: switch back to the previous verified slot holding ``model@version``.
    Signed, single-use and expiring exactly like a deployment notice (same notices key); the
    signed schema id keeps a deploy notice from being replayed as a rollback and vice versa."""
    now = time.time()
    cmd = messages.build(messages.ROLLBACK, deployment_id=uuid.uuid4().hex[:12], model=model, version=version,
                         from_version=from_version, issued_at=now, expires_at=now + ttl_s)
    if signer is None:
        return cmd
    if device is None:
        raise UsageError("a signed rollback command names its device: pass device=")
    return signer.sign(cmd, device=device, fleet=fleet)


class DeviceWatcher:
    """Subscribes to the events of some devices and hands them out per deployment."""

    def __init__(self, conn: MqttConnection, fleet: str, devices: list[str]) -> None:
        self.q: queue.Queue = queue.Queue()
        conn.subscribe([(topics.events(fleet, d), 1) for d in devices], self._on_event)

    def _on_event(self, topic: str, payload: bytes, _props) -> None:
        try:
            self.q.put((topics.parse(topic).device, messages.loads(payload, messages.EVENT)))
        except MessageError:
            pass

    def wait_terminal(self, pending: dict[str, str], timeout: float, on_event=lambda d, e: None) -> dict[str, dict]:
        """``pending`` maps device → deployment id; returns device → terminal event."""
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(pending):
            try:
                device, ev = self.q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                missing = sorted(set(pending) - set(done))
                raise TimeoutError_(f"no final answer from {', '.join(missing)} within {timeout:.0f}s",
                                    hint="A silent device counts as failed: check `edgekit fleet ls`.",
                                    devices=missing) from None
            if device in pending and device not in done and ev.get("deployment_id") in (pending[device], None):
                on_event(device, ev)
                if ev["state"] in TERMINAL_OK + TERMINAL_FAIL:
                    done[device] = ev
        return done


def push(conn: MqttConnection, fleet: str, device: str, notice: dict) -> None:
    conn.publish(topics.command(fleet, device, "deploy"), messages.dumps(notice), qos=1)


def check_outcome(device: str, ev: dict) -> None:
    if ev["state"] not in TERMINAL_OK:
        err = ev.get("error") or {}
        raise InstallError(f"{device}: deployment ended in {ev['state']}: {err.get('message', 'no reason given')}",
                           hint=err.get("hint") or "See `edgekit fleet ls` and the device's events.")


def infer_remote(conn: MqttConnection, fleet: str, device: str, inputs: dict[str, np.ndarray],
                 timeout: float = 10.0) -> tuple[dict[str, np.ndarray], dict]:
    req = messages.build(messages.INFER_REQUEST, id=uuid.uuid4().hex[:12],
                         inputs={k: tensors.encode(v) for k, v in inputs.items()})
    raw = conn.request(topics.rpc_request(fleet, device), messages.dumps(req),
                       topics.rpc_response(fleet, device, conn.client_id.replace("/", "-")), timeout=timeout)
    resp = messages.loads(raw, messages.INFER_RESPONSE)
    if not resp["ok"]:
        err = resp.get("error") or {}
        raise EdgekitError(f"{device}: inference failed: {err.get('message')}", hint=err.get("hint"))
    return {k: tensors.decode(v, k) for k, v in resp["outputs"].items()}, resp
