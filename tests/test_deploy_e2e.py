"""End to end on real parts: mosquitto, registry (SQLite), agent subprocesses, signed bundles.

Every bad input must be refused with a specific error event while the device keeps serving
its previous model.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
import requests

from edgekit.core import messages, topics
from edgekit.core.mqtt import MqttConnection
from edgekit.deploy import DeviceWatcher, infer_remote, make_notice, push, read_manifest, upload

pytestmark = pytest.mark.integration
FLEET = "demo"


class Operator:
    """What a fleet manager's tools do: upload, notify, follow events, ask for inference."""

    def __init__(self, broker, registry, devices, keystore=None):
        self.registry = registry
        self.signer = keystore.notice_signer() if keystore else None
        self.conn = MqttConnection(f"test-op-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port)
        self.conn.connect()
        self.watcher = DeviceWatcher(self.conn, FLEET, devices)

    def deploy(self, bundle, device="dev-1", manifest=None, timeout=30):
        stored = upload(bundle, self.registry.url)
        notice = make_notice(manifest or read_manifest(bundle), stored, device=device, fleet=FLEET, signer=self.signer)
        push(self.conn, FLEET, device, notice)
        return self.watcher.wait_terminal({device: notice["deployment_id"]}, timeout)[device]

    def infer(self, device="dev-1"):
        from edgekit.demo import SAMPLES

        with np.load(SAMPLES / "validation.npz") as data:
            x = data["input"][:1]
        return infer_remote(self.conn, FLEET, device, {"input": x}, timeout=10)


@pytest.fixture
def operator(broker, registry, keystore):
    op = Operator(broker, registry, ["dev-1", "dev-2"], keystore)
    yield op
    op.conn.close()


def test_deploy_infer_and_registry_inventory(operator, agent_factory, make_bundle, registry):
    agent_factory("dev-1", "raspberry-pi-4")
    ev = operator.deploy(make_bundle(version="1.0.0"))
    assert ev["state"] == "committed", ev
    assert ev["details"]["health"]["failures"] == []
    outputs, resp = operator.infer()
    assert resp["version"] == "1.0.0" and outputs["logits"].shape == (1, 10)
    # the registry saw the device online with its model, and stored the deployment events
    # (the registry stores in batches: poll until the last event and the telemetry are in)
    deadline = time.time() + 10
    while time.time() < deadline:
        dev = requests.get(f"{registry.url}/api/v1/devices/dev-1", timeout=5).json()
        events = requests.get(f"{registry.url}/api/v1/events", params={"device": "dev-1"}, timeout=5).json()["events"]
        states = [e["state"] for e in events]
        if dev.get("version") == "1.0.0" and dev.get("inference") and "committed" in states:
            break
        time.sleep(0.2)
    assert dev["online"] is True and dev["profile"] == "raspberry-pi-4" and dev["version"] == "1.0.0"
    # checking_release: [install] freshness = "auto" and this registry hosts no TUF metadata (ADR 0010)
    assert states == ["checking_release", "downloading", "verifying", "staging", "health_check", "switching",
                      "committed"]
    assert events[1]["details"]["freshness"] == "unavailable"


def test_upgrade_then_same_release_is_idempotent(operator, agent_factory, make_bundle):
    agent_factory("dev-1", "raspberry-pi-4")
    assert operator.deploy(make_bundle(version="1.0.0"))["state"] == "committed"
    b2 = make_bundle(version="1.1.0")
    assert operator.deploy(b2)["state"] == "committed"
    assert operator.infer()[1]["version"] == "1.1.0"
    assert operator.deploy(b2)["state"] == "already_installed"


def _flip_byte_in_member(path, member="model.onnx"):
    import tarfile

    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    data = bytearray(path.read_bytes())
    data[info.offset_data + info.size // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case, code", [
    ("tampered", "integrity"),
    ("unknown_key", "trust"),
    ("expired", "expired"),
    ("other_profile", "incompatible"),
    ("older_release", "rollback"),
    ("truncated", "integrity"),
])
def test_bad_bundles_are_refused_and_previous_model_keeps_serving(
        case, code, operator, agent_factory, make_bundle, other_keystore, tmp_path):
    agent_factory("dev-1", "raspberry-pi-4")
    good = make_bundle(version="2.0.0", release=50)
    assert operator.deploy(good)["state"] == "committed"
    if case == "tampered":
        bad = make_bundle(version="2.1.0", release=51)
        _flip_byte_in_member(bad)
    elif case == "unknown_key":
        bad = make_bundle(version="2.1.0", release=51, store=other_keystore)
    elif case == "expired":
        bad = make_bundle(version="2.1.0", release=51, expiry_days=-1)
    elif case == "other_profile":
        bad = make_bundle(profile="x86-64-gateway", version="2.1.0", release=51)
    elif case == "older_release":
        bad = make_bundle(version="1.9.0", release=49)
    else:  # truncated: the registry serves a bundle cut in half (its hash matches the cut file)
        full = make_bundle(version="2.1.0", release=51)
        bad = tmp_path / "cut.bundle"
        bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    manifest = read_manifest(good) if case == "truncated" else None
    ev = operator.deploy(bad, manifest=manifest)
    assert ev["state"] == "failed" and ev["ok"] is False
    assert ev["error"]["code"] == code, ev["error"]
    assert ev["error"]["message"]
    _, resp = operator.infer()
    assert resp["version"] == "2.0.0", "the device must keep serving its previous model"


def test_download_hash_mismatch_is_refused(operator, agent_factory, make_bundle):
    agent_factory("dev-1", "raspberry-pi-4")
    b = make_bundle(version="1.0.0")
    stored = upload(b, operator.registry.url)
    notice = make_notice(read_manifest(b), {**stored, "sha256": "0" * 64}, device="dev-1", fleet=FLEET,
                         signer=operator.signer)
    push(operator.conn, FLEET, "dev-1", notice)
    ev = operator.watcher.wait_terminal({"dev-1": notice["deployment_id"]}, 30)["dev-1"]
    assert ev["state"] == "failed" and ev["error"]["code"] == "integrity"


@pytest.mark.parametrize("payload", [
    b"not json",
    b"[1,2]",
    json.dumps({"schema": "edgekit.notice/1", "deployment_id": "x"}).encode(),
    json.dumps({"schema": "edgekit.notice/9"}).encode(),
])
def test_malformed_notice_is_rejected_with_event(payload, operator, agent_factory, make_bundle):
    agent_factory("dev-1", "raspberry-pi-4")
    assert operator.deploy(make_bundle(version="1.0.0"))["state"] == "committed"
    operator.conn.publish(topics.command(FLEET, "dev-1", "deploy"), payload)
    ev = operator.watcher.wait_terminal({"dev-1": None}, 10)["dev-1"]
    assert ev["state"] == "rejected" and ev["error"]["code"] == "malformed_message"
    assert operator.infer()[1]["version"] == "1.0.0"


def test_malformed_inference_request_gets_error_reply(operator, agent_factory, make_bundle):
    agent_factory("dev-1", "raspberry-pi-4")
    assert operator.deploy(make_bundle(version="1.0.0"))["state"] == "committed"
    req = messages.build(messages.INFER_REQUEST, id="r1", inputs={"input": {"dtype": "float32", "shape": [1, 1, 8, 8],
                                                                             "b64": "AAAA"}})
    raw = operator.conn.request(topics.rpc_request(FLEET, "dev-1"), messages.dumps(req),
                                topics.rpc_response(FLEET, "dev-1", "tester"), timeout=10)
    resp = messages.loads(raw, messages.INFER_RESPONSE)
    assert resp["ok"] is False and resp["error"]["code"] == "malformed_message"


def test_last_will_marks_device_offline(operator, agent_factory, registry):
    proc = agent_factory("dev-2", "x86-64-gateway")

    def state():
        return requests.get(f"{registry.url}/api/v1/devices/dev-2", timeout=5).json()

    deadline = time.time() + 10
    while time.time() < deadline and not state().get("online"):
        time.sleep(0.1)
    assert state()["online"] is True
    proc.proc.kill()  # no clean disconnect: the broker publishes the last will after keepalive
    proc.proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and state().get("online"):
        time.sleep(0.2)
    assert state()["online"] is False and state()["status_reason"] == "connection lost"
