"""mTLS + per-device ACLs on a real mosquitto (threat: device impersonation, cross-device access).

Every client here authenticates with a certificate from the fleet PKI; the broker maps the
certificate's CN to the MQTT username and applies the ACL generated from the PKI index.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from edgekit.broker import render_acl
from edgekit.core import topics
from edgekit.core.errors import ConfigError, TransportError
from edgekit.core.mqtt import MqttConnection, TlsFiles
from edgekit.pki import HOST, REGISTRY, init_pki

pytestmark = pytest.mark.integration
FLEET = "demo"
NOT_AUTHORIZED = 0x87


@pytest.fixture
def enrolled(pki, tmp_path):
    """dev-1 and dev-2 enrolled before the broker starts (so the ACL knows them)."""
    return {d: (pki.enroll(d, tmp_path / "id" / d), TlsFiles.from_dir(tmp_path / "id" / d))[1]
            for d in ("dev-1", "dev-2")}


@pytest.fixture
def tls_broker(tmp_path, pki, enrolled):
    from edgekit.broker import ManagedBroker

    with ManagedBroker(tmp_path / "broker", pki=pki) as b:
        yield b


def connect(broker, tls, name="c") -> MqttConnection:
    conn = MqttConnection(f"{name}-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port, tls=tls)
    conn.connect(timeout=10)
    return conn


class Inbox:
    def __init__(self):
        self.topics: list[str] = []
        self.event = threading.Event()

    def __call__(self, topic, payload, props):
        self.topics.append(topic)
        self.event.set()


def test_device_publishes_its_own_subtree_and_gets_0x87_for_another_devices(tls_broker, enrolled):
    dev1 = connect(tls_broker, enrolled["dev-1"])
    try:
        dev1.publish(topics.status(FLEET, "dev-1"), b"{}", qos=1)       # own subtree: accepted
        dev1.publish(topics.events(FLEET, "dev-1"), b"{}", qos=1)
        for topic in (topics.status(FLEET, "dev-2"), topics.telemetry(FLEET, "dev-2"),
                      topics.command(FLEET, "dev-2", "deploy"),           # cannot push to a peer
                      topics.command(FLEET, "dev-1", "deploy"),           # nor order itself
                      topics.status("other-fleet", "dev-1"),              # nor act in another fleet
                      "edgekit/v1/demo/anything"):
            with pytest.raises(TransportError) as exc:
                dev1.publish(topic, b"{}", qos=1)
            assert exc.value.details["reason_code"] == NOT_AUTHORIZED, topic
    finally:
        dev1.close()


def test_device_never_receives_another_devices_messages(tls_broker, enrolled, pki):
    dev1 = connect(tls_broker, enrolled["dev-1"])
    host = connect(tls_broker, pki.service(HOST), "host")
    inbox = Inbox()
    try:
        # mosquitto 2.0 grants any filter in SUBACK and enforces "read" per delivered message
        for flt in (topics.device_filter(FLEET, "dev-2"), "#", f"{topics.ROOT}/{FLEET}/devices/+/cmd/#"):
            try:
                dev1.subscribe([(flt, 1)], inbox)
            except TransportError as exc:      # a broker that refuses the subscription is fine too
                assert exc.details.get("reason_code", NOT_AUTHORIZED) >= 0x80
        host.publish(topics.command(FLEET, "dev-2", "deploy"), b"for dev-2", qos=1)
        host.publish(topics.rpc_request(FLEET, "dev-2"), b"for dev-2", qos=1)
        host.publish(topics.command(FLEET, "dev-1", "deploy"), b"for dev-1", qos=1)  # control message
        assert inbox.event.wait(5), "dev-1 should still receive its own command"
        time.sleep(0.3)
        assert inbox.topics and all("/devices/dev-1/" in t for t in inbox.topics), inbox.topics
    finally:
        dev1.close()
        host.close()


def test_services_get_only_what_they_need(tls_broker, enrolled, pki):
    registry = connect(tls_broker, pki.service(REGISTRY), "reg")
    host = connect(tls_broker, pki.service(HOST), "host")
    try:
        registry.publish(topics.command(FLEET, "dev-1", "deploy"), b"{}", qos=1)   # rollouts
        host.publish(topics.rpc_request(FLEET, "dev-1"), b"{}", qos=1)
        for conn, topic in ((registry, topics.status(FLEET, "dev-1")),             # cannot fake device reports
                            (host, topics.telemetry(FLEET, "dev-1")),
                            (registry, topics.rpc_request(FLEET, "dev-1"))):
            with pytest.raises(TransportError) as exc:
                conn.publish(topic, b"{}", qos=1)
            assert exc.value.details["reason_code"] == NOT_AUTHORIZED
    finally:
        registry.close()
        host.close()


def _no_cert(tmp_path, pki):
    import shutil

    d = tmp_path / "nocert"
    d.mkdir()
    shutil.copy(pki.ca_path, d / "ca.pem")
    return d


@pytest.mark.parametrize("who", ["no_certificate", "other_ca", "revoked", "revoked_while_running", "self_signed_cn"])
def test_untrusted_clients_cannot_connect(who, tls_broker, enrolled, pki, tmp_path):
    if who == "no_certificate":
        conn = MqttConnection("anon", "127.0.0.1", tls_broker.port)
        import ssl

        conn.client.tls_set_context(ssl.create_default_context(cafile=str(pki.ca_path)))
    else:
        if who == "other_ca":      # a valid-looking certificate for "dev-1" from another CA
            other = init_pki(tmp_path / "other-pki", fleet=FLEET)
            other.enroll("dev-1", tmp_path / "other-id")
            files = TlsFiles.from_dir(tmp_path / "other-id")
            files = TlsFiles(files.cert, files.key, pki.ca_path)  # trusts the right broker
        elif who == "self_signed_cn":  # the CA's own key is not a client identity either
            files = TlsFiles(pki.ca_path, pki.directory / "private" / "ca.key", pki.ca_path)
        else:
            if who == "revoked_while_running":
                connect(tls_broker, enrolled["dev-2"]).close()  # works before the revocation
            pki.revoke("dev-2")
            tls_broker.reload()
            time.sleep(0.3)
            files = enrolled["dev-2"]
        conn = MqttConnection("x", "127.0.0.1", tls_broker.port, tls=files)
    t0 = time.monotonic()
    with pytest.raises(TransportError) as exc:
        conn.connect(timeout=10)
    assert time.monotonic() - t0 < 8, "a refused handshake must fail fast, not time out"
    assert exc.value.code == "transport"
    # and the broker still serves legitimate devices
    connect(tls_broker, enrolled["dev-1"]).close()


def test_plain_mqtt_is_not_offered_by_the_secure_broker(tls_broker):
    conn = MqttConnection("plain", "127.0.0.1", tls_broker.port)
    with pytest.raises(TransportError):
        conn.connect(timeout=5)


def test_acl_is_exact_per_device_and_fleet():
    acl = render_acl("f1", ["a", "b"])
    assert "user a\ntopic write edgekit/v1/f1/devices/a/status" in acl
    assert "topic read edgekit/v1/f1/devices/a/cmd/#" in acl
    assert "pattern" not in acl and "devices/+/status" not in acl.split("user edgekit-registry")[0]
    assert "topic write edgekit/v1/f1/devices/a/cmd" not in acl  # devices never write commands


def test_incomplete_identity_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="missing"):
        TlsFiles.from_dir(tmp_path)
