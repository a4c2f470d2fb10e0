"""The secure setup end to end on real parts: mosquitto with mTLS + ACL, the registry and agent
subprocesses with enrolled certificates, signed notices, key rotation followed over MQTT."""

from __future__ import annotations

import uuid

import pytest

from edgekit.core import topics
from edgekit.core.mqtt import MqttConnection
from edgekit.deploy import DeviceWatcher, make_notice, push, read_manifest, upload
from edgekit.pki import HOST, REGISTRY

pytestmark = pytest.mark.integration
FLEET = "demo"


class SecureOperator:
    def __init__(self, broker, registry, keystore, devices=("dev-1", "dev-2")):
        self.registry, self.keystore = registry, keystore
        self.conn = MqttConnection(f"op-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port,
                                   tls=broker.pki.service(HOST))
        self.conn.connect()
        self.watcher = DeviceWatcher(self.conn, FLEET, list(devices))

    def notice(self, bundle, device="dev-1", **kw):
        return make_notice(read_manifest(bundle), upload(bundle, self.registry.url), kw.pop("ttl_s", 600),
                           device=kw.pop("for_device", device), fleet=FLEET, signer=self.keystore.notice_signer(), **kw)

    def send(self, notice, device="dev-1", timeout=30):
        push(self.conn, FLEET, device, notice)
        return self.watcher.wait_terminal({device: notice["deployment_id"]}, timeout)[device]


@pytest.fixture
def secure_registry(tmp_path, secure_broker, monkeypatch):
    from edgekit.registry.service import Registry

    reg = Registry(f"sqlite:///{tmp_path}/registry.db", tmp_path / "artifacts", "127.0.0.1", secure_broker.port,
                   tls=secure_broker.pki.service(REGISTRY)).start()
    monkeypatch.setenv("EDGEKIT_REGISTRY_TOKEN", reg.create_token("operator", "tests"))
    yield reg
    reg.stop()


@pytest.fixture
def op(secure_broker, secure_registry, keystore):
    o = SecureOperator(secure_broker, secure_registry, keystore)
    yield o
    o.conn.close()


def test_signed_notice_installs_then_replay_is_refused(op, secure_agent_factory, make_bundle, secure_registry):
    secure_agent_factory("dev-1")
    notice = op.notice(make_bundle(version="1.0.0"))
    ev = op.send(notice)
    assert ev["state"] == "committed", ev
    replay = op.send(notice)                       # the captured notice, published again
    assert replay["state"] == "rejected" and replay["error"]["code"] == "notice_replayed", replay
    # the registry (mTLS identity, read-only on reports) ingested the device's reports
    import time

    import requests

    deadline = time.time() + 10
    while time.time() < deadline:
        dev = requests.get(f"{secure_registry.url}/api/v1/devices/dev-1", timeout=5).json()
        if dev.get("version") == "1.0.0":
            break
        time.sleep(0.2)
    assert dev["online"] is True and dev["version"] == "1.0.0"


@pytest.mark.parametrize("case, code", [
    ("expired", "notice_expired"),
    ("unsigned", "notice_unsigned"),
    ("other_device", "notice_wrong_device"),
    ("forged_signature", "notice_unsigned"),
    ("tampered_url", "notice_unsigned"),
])
def test_bad_notices_are_refused_with_a_reason(case, code, op, secure_agent_factory, make_bundle, other_keystore):
    secure_agent_factory("dev-1")
    b = make_bundle(version="1.0.0")
    if case == "expired":
        n = op.notice(b, ttl_s=-5)
    elif case == "unsigned":
        n = make_notice(read_manifest(b), upload(b, op.registry.url))
    elif case == "other_device":
        n = op.notice(b, for_device="dev-2")
    elif case == "forged_signature":
        n = make_notice(read_manifest(b), upload(b, op.registry.url), device="dev-1", fleet=FLEET,
                        signer=other_keystore.notice_signer())
    else:
        n = op.notice(b)
        n["bundle_url"] = n["bundle_url"].replace("127.0.0.1", "localhost")
    ev = op.send(n)
    assert ev["state"] == "rejected" and ev["ok"] is False, ev
    assert ev["error"]["code"] == code and ev["error"]["message"], ev["error"]


def test_rotation_followed_over_mqtt_new_key_accepted_revoked_refused(tmp_path, secure_broker, secure_registry,
                                                                       artifacts):
    """Key compromise: revoke the targets key; devices learn it from the next notice/bundle."""
    from edgekit.demo import start_agent
    from edgekit.keys import init_keystore, rotate
    from edgekit.release import release_artifact

    store = init_keystore(tmp_path / "keys")
    agent = start_agent(tmp_path, "dev-1", "raspberry-pi-4", secure_broker, store.root_path, 1.0)
    op = SecureOperator(secure_broker, secure_registry, store)
    try:
        agent.ready()

        def rel(version, n):
            return release_artifact(artifacts / "fp32" / "raspberry-pi-4", store, tmp_path / f"b{n}",
                                    name="digits-cnn", version=version, release=n)
        assert op.send(op.notice(rel("1.0.0", 1)))["state"] == "committed"
        stolen = rel("6.6.6", 99)                  # made with the key that is about to be revoked
        info = rotate(store, "targets")
        rotate(store, "notices")                  # v3: the notices key changes too
        assert info["version"] == 2
        ev = op.send(op.notice(rel("2.0.0", 2)))  # notice + bundle carry roots v2, v3
        assert ev["state"] == "committed", ev
        ev = op.send(op.notice(stolen))
        assert ev["state"] == "failed" and ev["error"]["code"] == "trust", ev
        assert (tmp_path / "devices" / "dev-1" / "data" / "trust" / "3.root.json").exists()
    finally:
        op.conn.close()
        agent.stop()


def test_device_cannot_forge_another_devices_reports_through_the_stack(op, secure_agent_factory, tmp_path,
                                                                       secure_broker):
    """Spoofing: dev-1's own certificate cannot publish a status for dev-2 (0x87)."""
    from edgekit.core.errors import TransportError
    from edgekit.core.mqtt import TlsFiles

    secure_agent_factory("dev-1")
    dev1 = MqttConnection("spoof", "127.0.0.1", secure_broker.port,
                          tls=TlsFiles.from_dir(tmp_path / "devices" / "dev-1"))
    dev1.connect()
    try:
        with pytest.raises(TransportError) as exc:
            dev1.publish(topics.status(FLEET, "dev-2"), b"{}", qos=1)
        assert exc.value.details["reason_code"] == 0x87
    finally:
        dev1.close()


def test_encrypted_release_installs_only_where_wrapped(tmp_path, secure_broker, keystore, artifacts, monkeypatch):
    from edgekit.demo import start_agent
    from edgekit.registry.service import Registry
    from edgekit.release import release_artifact

    agents = [start_agent(tmp_path, d, "raspberry-pi-4", secure_broker, keystore.root_path, 1.0)
              for d in ("dev-1", "dev-2")]
    reg = Registry(f"sqlite:///{tmp_path}/r.db", tmp_path / "art", "127.0.0.1", secure_broker.port,
                   tls=secure_broker.pki.service("edgekit-registry")).start()
    monkeypatch.setenv("EDGEKIT_REGISTRY_TOKEN", reg.create_token("operator", "tests"))
    op = SecureOperator(secure_broker, reg, keystore)
    try:
        for a in agents:
            a.ready()
        pki = secure_broker.pki
        b = release_artifact(artifacts / "fp32" / "raspberry-pi-4", keystore, tmp_path / "b", name="secret-cnn",
                             version="1.0.0", encrypt_to={"dev-1": pki.device_x25519("dev-1")})
        assert op.send(op.notice(b, "dev-1"), "dev-1")["state"] == "committed"
        ev = op.send(op.notice(b, "dev-2"), "dev-2")
        assert ev["state"] == "failed" and ev["error"]["code"] == "encrypted_for_other_device", ev
    finally:
        op.conn.close()
        reg.stop()
        for a in agents:
            a.stop()


def test_fleet_ls_shows_certificate_expiry_and_warns(secure_broker, secure_registry, secure_agent_factory):
    import json
    import time

    import requests
    from click.testing import CliRunner

    from edgekit.cli.main import cli

    secure_agent_factory("dev-1")
    deadline = time.time() + 10
    while time.time() < deadline and not requests.get(f"{secure_registry.url}/api/v1/devices/dev-1",
                                                      timeout=5).json().get("online"):
        time.sleep(0.2)
    pki = secure_broker.pki
    index = json.loads((pki.directory / "pki.json").read_text())
    index["devices"]["dev-1"]["not_after"] = time.time() + 5 * 86400   # as if enrolled with --days 5
    (pki.directory / "pki.json").write_text(json.dumps(index))
    res = CliRunner().invoke(cli, ["fleet", "ls", "--registry", secure_registry.url, "--pki", str(pki.directory)])
    assert res.exit_code == 0, res.output
    assert "CERT_DAYS" in res.output and "warning: dev-1: certificate expiring" in res.output
    res = CliRunner().invoke(cli, ["fleet", "ls", "--registry", secure_registry.url, "--pki", str(pki.directory),
                                   "--json"])
    assert json.loads(res.output)[0]["cert"]["state"] == "expiring"


def test_cli_push_and_infer_over_mtls(secure_broker, secure_registry, secure_agent_factory, make_bundle, keystore):
    import json

    from click.testing import CliRunner

    from edgekit.cli.main import cli
    from edgekit.demo import SAMPLES

    secure_agent_factory("dev-1")
    host_id = str(secure_broker.pki.directory / "services" / HOST)
    common = ["--fleet", FLEET, "--broker", f"127.0.0.1:{secure_broker.port}"]
    res = CliRunner().invoke(cli, ["push", str(make_bundle(version="1.0.0")), "-d", "dev-1", *common,
                                   "--registry", secure_registry.url, "--keys", str(keystore.directory),
                                   "--identity", host_id, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dev-1"]["state"] == "committed"
    res = CliRunner().invoke(cli, ["infer", "-d", "dev-1", "--input", str(SAMPLES / "validation.npz"), *common,
                                   "--identity", host_id, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["version"] == "1.0.0"
    res = CliRunner().invoke(cli, ["infer", "-d", "dev-1", "--input", str(SAMPLES / "validation.npz"), *common])
    assert res.exit_code == 6, "no client certificate: the broker must refuse"
