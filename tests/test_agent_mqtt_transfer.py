"""MQTT chunked transfer on real parts: mosquitto, the registry's chunk server, agent subprocesses.

A notice with ``transport: "mqtt"`` makes the device fetch its bundle over the broker (its
bundle_url points nowhere here, so HTTP cannot be what worked). A broker restart mid-transfer
resumes from the ``.part`` length; a corrupted stored bundle (so corrupted chunks) ends in an
integrity error while the old model keeps serving; an unknown artifact is refused at once.
"""

from __future__ import annotations

import hashlib
import threading
import uuid

import pytest

from agent.fetch import download
from agent.fetch_mqtt import WINDOW, MqttChunkSource
from edgekit.core import chunks, messages, topics
from edgekit.core.errors import IntegrityError, MessageError, NoticeSignatureError, TransportError
from edgekit.core.mqtt import MqttConnection
from edgekit.deploy import DeviceWatcher, make_notice, push, read_manifest, upload

from test_security_e2e import secure_registry  # noqa: F401  (the mTLS registry fixture)

pytestmark = pytest.mark.integration
FLEET = "demo"
NOWHERE = "http://127.0.0.1:9/unreachable.bundle"  # discard port: an HTTP fetch would fail


@pytest.fixture
def op(broker, registry, keystore):
    conn = MqttConnection(f"test-op-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port)
    conn.connect()
    watcher = DeviceWatcher(conn, FLEET, ["dev-1"])

    def deploy(bundle, timeout=60, tamper=lambda stored: None):
        stored = upload(bundle, registry.url)
        tamper(stored)
        notice = make_notice(read_manifest(bundle), {**stored, "url": NOWHERE}, device="dev-1", fleet=FLEET,
                             signer=keystore.notice_signer(), transport="mqtt")
        push(conn, FLEET, "dev-1", notice)
        return stored, watcher.wait_terminal({"dev-1": notice["deployment_id"]}, timeout)["dev-1"]

    yield deploy
    conn.close()


def _status(tmp_path):
    import json
    import subprocess
    import sys

    cfg = tmp_path / "devices" / "dev-1" / "agent.toml"
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def test_install_over_mqtt_then_corrupted_chunk_keeps_old_model(op, agent_factory, make_bundle, registry, tmp_path):
    agent_factory("dev-1")
    stored, ev = op(make_bundle(version="1.0.0"))
    assert ev["state"] == "committed", ev
    assert registry.chunks.served >= 1 and registry.chunks.bytes_served == stored["length"]
    # the release check asked this registry's chunk server for timestamp.json: it hosts none (404), and in
    # [install] freshness = "auto" a device that never saw hosted metadata goes on (agent/trust_mqtt.py)
    assert ev["details"]["freshness"] == "unavailable" and ev["details"]["repository"].startswith("mqtt://")

    # v2: the registry's copy gets one flipped byte in the middle -> the chunk carrying it is corrupt
    def flip_a_byte(stored):
        path = tmp_path / "artifacts" / f"{stored['sha256']}.bundle"
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))

    _, ev = op(make_bundle(version="2.0.0"), tamper=flip_a_byte)
    assert ev["state"] == "failed" and ev["error"]["code"] == "integrity", ev
    status = _status(tmp_path)
    assert status["installed"]["version"] == "1.0.0"
    # nothing half-written survives: no .part and no downloaded bundle left behind
    assert not list((tmp_path / "devices" / "dev-1" / "data" / "downloads").glob("*"))


def test_notice_transport_is_signed(keystore, make_bundle):
    from edgekit.core.notices import verify_notice
    from edgekit.core.trust import load_trusted_root

    b = make_bundle(version="1.0.0")
    stored = {"url": NOWHERE, "sha256": "a" * 64, "length": 10}
    notice = make_notice(read_manifest(b), stored, device="dev-1", fleet=FLEET, signer=keystore.notice_signer(),
                         transport="mqtt")
    root = load_trusted_root(keystore.root_path.read_bytes(), None)
    assert verify_notice(dict(notice), root, device="dev-1", fleet=FLEET, replay=None)["transport"] == "mqtt"
    with pytest.raises(NoticeSignatureError):
        verify_notice({**notice, "transport": "http"}, root, device="dev-1", fleet=FLEET, replay=None)
    with pytest.raises(MessageError):
        messages.loads(messages.dumps({**notice, "transport": "ftp"}), messages.NOTICE)


@pytest.fixture
def device_conn(broker):
    conn = MqttConnection("edgekit-agent-dev-9", "127.0.0.1", broker.port)
    conn.connect()
    yield conn
    conn.close()


def test_broker_restart_mid_transfer_resumes_from_part(broker, registry, device_conn, tmp_path):
    """In-process device side (to restart the broker at a chosen byte), real registry + mosquitto."""
    blob = bytes(range(256)) * 4096 * 2  # 2 MiB
    stored = upload_bytes(registry, tmp_path, blob)
    restarted = []

    def progress(have):
        if not restarted and have >= len(blob) // 2:
            restarted.append(have)
            broker.stop()
            broker.start()

    src = MqttChunkSource(device_conn, FLEET, "dev-9", stored["sha256"], chunk_bytes=64 * 1024, timeout=3)
    out = download(src, tmp_path / "dl" / "b.bundle", length=len(blob), sha256=stored["sha256"], progress=progress,
                   backoff_s=0.2, reserve_bytes=0)
    assert out.read_bytes() == blob and restarted
    # resumed, not restarted (that would re-send >= 1 MiB): each byte about once, plus at most the
    # window of chunks in flight when the broker went down and one retried
    assert registry.chunks.bytes_served <= len(blob) + (WINDOW + 1) * 64 * 1024


def test_unknown_artifact_and_size_mismatch_are_refused(registry, device_conn, tmp_path):
    src = MqttChunkSource(device_conn, FLEET, "dev-9", "b" * 64, timeout=3)
    with pytest.raises(TransportError, match="no artifact") as info:
        download(src, tmp_path / "x.bundle", length=1000, sha256="b" * 64, reserve_bytes=0, backoff_s=0.01)
    assert info.value.details.get("retryable") is False
    blob = b"edgekit" * 1000
    stored = upload_bytes(registry, tmp_path, blob)
    src = MqttChunkSource(device_conn, FLEET, "dev-9", stored["sha256"], timeout=3)
    with pytest.raises(IntegrityError, match="signed notice says"):
        download(src, tmp_path / "y.bundle", length=len(blob) - 1, sha256=stored["sha256"], reserve_bytes=0)
    assert not (tmp_path / "y.bundle.part").exists()


def test_chunk_frame_round_trip_and_malformed():
    frame = chunks.encode({"sha256": "c" * 64, "offset": 8, "total": 20, "length": 3}, b"abc")
    header, data = chunks.decode(frame)
    assert header["offset"] == 8 and bytes(data) == b"abc"
    for bad in (b"", b"XXXX\x00\x00\x00\x00", frame[:10], chunks.encode({"offset": 0, "total": 3, "length": 4}, b"abc")):
        with pytest.raises(MessageError):
            chunks.decode(bad)
    with pytest.raises(TransportError, match="gone"):
        chunks.decode(chunks.error_frame({"sha256": "c" * 64}, 0, TransportError("gone")))


def test_acl_allows_chunk_topics_only_in_own_subtree():
    from edgekit.broker import render_acl

    acl = render_acl(FLEET, ["dev-1", "dev-2"]).split("\n\n")
    dev1 = next(block for block in acl if block.startswith("user dev-1"))
    assert f"topic write {topics.chunk_request(FLEET, 'dev-1')}" in dev1
    assert f"topic read {topics.chunk_response(FLEET, 'dev-1')}" in dev1
    assert "dev-2" not in dev1
    assert topics.parse(topics.chunk_response(FLEET, "dev-1")).rest == ("chunk", "res")


def upload_bytes(registry, tmp_path, blob: bytes) -> dict:
    p = tmp_path / f"{hashlib.sha256(blob).hexdigest()[:8]}.bin"
    p.write_bytes(blob)
    return upload(p, registry.url)


def test_slow_chunk_server_hits_the_deadline(broker, device_conn, tmp_path):
    """A chunk server that answers, but slowly (real broker, a responder sleeping per chunk)."""
    import time

    from edgekit.core.errors import SlowRetrievalError
    from edgekit.core.mqtt import reply

    blob = b"slow" * 5000
    sha = hashlib.sha256(blob).hexdigest()
    slow = MqttConnection("slow-chunk-server", "127.0.0.1", broker.port)
    slow.connect()

    def answer(topic, payload, props):
        req = messages.loads(payload, messages.CHUNK_REQUEST)
        time.sleep(0.2)
        data = blob[req["offset"]:req["offset"] + req["length"]]
        t = topics.parse(topic)
        reply(slow, props, chunks.encode({"sha256": sha, "offset": req["offset"], "total": len(blob),
                                          "length": len(data)}, data), topic=topics.chunk_response(t.fleet, t.device))

    def on_request(*args):  # answer off the network thread, like the registry's pool
        threading.Thread(target=answer, args=args, daemon=True).start()

    slow.subscribe([(topics.chunk_filter(), 1)], on_request)
    try:
        src = MqttChunkSource(device_conn, FLEET, "dev-9", sha, chunk_bytes=1024, timeout=3)
        t0 = time.monotonic()
        with pytest.raises(SlowRetrievalError):  # deadline 0.3 s + 20000 B / 100 kB/s = 0.5 s; ~4 s at this pace
            download(src, tmp_path / "s.bundle", length=len(blob), sha256=sha, min_rate_bps=100_000, grace_s=0.3,
                     reserve_bytes=0)
        assert time.monotonic() - t0 < 2.5
        assert not (tmp_path / "s.bundle.part").exists()
    finally:
        slow.close()


def test_chunk_transfer_through_the_mtls_acl_stays_in_the_devices_subtree(tmp_path, pki, monkeypatch):
    """mTLS broker with the generated ACL: dev-1 fetches from the registry; dev-2 sees none of it and
    cannot ask in dev-1's name."""
    from edgekit.broker import ManagedBroker
    from edgekit.core.mqtt import TlsFiles
    from edgekit.pki import REGISTRY
    from edgekit.registry.service import Registry

    ids = {d: (pki.enroll(d, tmp_path / "id" / d), TlsFiles.from_dir(tmp_path / "id" / d))[1] for d in ("dev-1", "dev-2")}
    with ManagedBroker(tmp_path / "broker", pki=pki) as b:
        reg = Registry(f"sqlite:///{tmp_path}/r.db", tmp_path / "artifacts", "127.0.0.1", b.port,
                       tls=pki.service(REGISTRY)).start()
        monkeypatch.setenv("EDGEKIT_REGISTRY_TOKEN", reg.create_token("operator", "tests"))
        dev1 = MqttConnection("dev-1", "127.0.0.1", b.port, tls=ids["dev-1"])
        dev2 = MqttConnection("dev-2", "127.0.0.1", b.port, tls=ids["dev-2"])
        try:
            dev1.connect()
            dev2.connect()
            seen = []
            dev2.subscribe([("#", 1)], lambda t, p, _: seen.append(t))
            blob = bytes(range(256)) * 1024
            stored = upload_bytes(reg, tmp_path, blob)
            src = MqttChunkSource(dev1, FLEET, "dev-1", stored["sha256"], chunk_bytes=64 * 1024, timeout=5)
            out = download(src, tmp_path / "dl" / "b.bundle", length=len(blob), sha256=stored["sha256"],
                           reserve_bytes=0)
            assert out.read_bytes() == blob and reg.chunks.served == 4
            req = messages.dumps(messages.build(messages.CHUNK_REQUEST, sha256=stored["sha256"], offset=0, length=10))
            with pytest.raises(TransportError) as info:
                dev2.publish(topics.chunk_request(FLEET, "dev-1"), req, qos=1)
            assert info.value.details["reason_code"] == 0x87
            assert not [t for t in seen if "/dev-1/" in t], seen
        finally:
            dev1.close()
            dev2.close()
            reg.stop()


def test_cli_push_transport_mqtt_over_mtls(secure_broker, secure_registry, secure_agent_factory, make_bundle,
                                           keystore):
    """`edgekit push --transport mqtt` to a real agent behind the mTLS broker and its ACL."""
    import json

    from click.testing import CliRunner

    from edgekit.cli.main import cli
    from edgekit.pki import HOST

    secure_agent_factory("dev-1")
    bundle = make_bundle(version="1.0.0")
    res = CliRunner().invoke(cli, ["push", str(bundle), "-d", "dev-1", "--transport", "mqtt", "--fleet", FLEET,
                                   "--broker", f"127.0.0.1:{secure_broker.port}", "--registry", secure_registry.url,
                                   "--keys", str(keystore.directory),
                                   "--identity", str(secure_broker.pki.directory / "services" / HOST), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dev-1"]["state"] == "committed"
    assert secure_registry.chunks.bytes_served == bundle.stat().st_size  # the bytes came over the broker


def test_a_server_with_a_smaller_chunk_cap_is_followed(registry, device_conn, tmp_path, monkeypatch):
    """Short answers (a server capping chunks below what the device asks) re-plan the window."""
    blob = bytes(range(256)) * 400
    stored = upload_bytes(registry, tmp_path, blob)
    src = MqttChunkSource(device_conn, FLEET, "dev-9", stored["sha256"], chunk_bytes=64 * 1024, timeout=3)
    assert src.chunk_bytes == 64 * 1024
    monkeypatch.setattr(chunks, "MAX_CHUNK", 10_000)  # the registry (in process) now hands out 10 kB at most
    out = download(src, tmp_path / "c.bundle", length=len(blob), sha256=stored["sha256"], reserve_bytes=0)
    assert out.read_bytes() == blob and registry.chunks.served >= len(blob) // 10_000
    assert registry.chunks.bytes_served >= len(blob)  # answers past a short one were dropped and asked again


def test_agent_config_reads_the_install_and_inference_knobs(tmp_path, keystore):
    from agent.config import load_config
    from edgekit.demo import provision_device

    cfg = provision_device(tmp_path / "d", "dev-1", "raspberry-pi-4", 1883, keystore.root_path)
    cfg.write_text(cfg.read_text().replace("[inference]\n", "[inference]\nspin = true\n")
                   + "\n[install]\nmin_rate_bps = 1000\ndownload_grace_s = 5\nmqtt_chunk_bytes = 65536\n")
    c = load_config(cfg)
    assert (c.min_rate_bps, c.download_grace_s, c.mqtt_chunk_bytes, c.spin) == (1000.0, 5.0, 65536, True)
    cfg.write_text(cfg.read_text().replace("min_rate_bps = 1000", "min_rate_bps = -1"))
    from edgekit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="min_rate_bps"):
        load_config(cfg)


def test_free_disk_is_checked_before_any_chunk_request(registry, device_conn, tmp_path):
    from edgekit.core.errors import StorageError

    blob = b"disk" * 1000
    stored = upload_bytes(registry, tmp_path, blob)
    src = MqttChunkSource(device_conn, FLEET, "dev-9", stored["sha256"], timeout=3)
    with pytest.raises(StorageError, match="not enough free space"):
        download(src, tmp_path / "d.bundle", length=len(blob), sha256=stored["sha256"], reserve_bytes=1 << 60)
    assert registry.chunks.served == 0 and not (tmp_path / "d.bundle.part").exists()


def test_kill_9_halfway_through_an_mqtt_transfer_resumes_after_restart(tmp_path, broker, registry, keystore,
                                                                      make_bundle, monkeypatch):
    """A real agent dies (SIGKILL) with half the chunks in its .part; restarted, it asks only for the rest."""
    import json
    import sys

    from agent.installer import CRASH_ENV
    from edgekit.demo import Proc
    from test_agent_crash import Events, agent_cli, device, status

    v1, v2 = make_bundle(version="1.0.0", release=740), make_bundle(version="2.0.0", release=741)
    home, cfg = device(tmp_path, broker, keystore)
    cfg.write_text(cfg.read_text() + "\n[install]\nmqtt_chunk_bytes = 2048\n")
    assert agent_cli(cfg, "install", str(v1)).returncode == 0
    events = Events(broker.port, "dev-crash")
    asked: list[int] = []  # offsets the device asks for, seen on the (plain, test) broker
    events.conn.subscribe([(topics.chunk_request(FLEET, "dev-crash"), 1)],
                          lambda t, p, _: asked.append(json.loads(p)["offset"]))
    monkeypatch.setenv(CRASH_ENV, "downloading~")
    doomed = Proc("dev-crash", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
    monkeypatch.delenv(CRASH_ENV)
    try:
        doomed.ready()
        stored = upload(v2, registry.url)
        notice = make_notice(read_manifest(v2), {**stored, "url": NOWHERE}, device="dev-crash", fleet=FLEET,
                             signer=keystore.notice_signer(), transport="mqtt")
        push(events.conn, FLEET, "dev-crash", notice)
        assert doomed.proc.wait(timeout=60) == -9
        part = home / "data" / "downloads" / f"{notice['deployment_id']}.bundle.part"
        have = part.stat().st_size  # what reached the disk (a buffered tail may be lost with the process)
        assert 0 < have < stored["length"] and max(asked) >= stored["length"] // 2 - 2048
        assert status(cfg)["installed"]["version"] == "1.0.0"
        before = len(asked)
        agent = Proc("dev-crash", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
        try:
            agent.ready()
            final = events.wait_state({"committed", "failed", "rolled_back"})
            assert final["state"] == "committed" and final["deployment_id"] == notice["deployment_id"], final
        finally:
            agent.stop()
    finally:
        doomed.stop()
        events.conn.close()
    # resumed: the restarted agent's first request starts at the .part length, not at 0
    assert asked[before] == have and min(asked[before:]) == have, (have, asked[before:before + 3])
    assert status(cfg)["installed"]["version"] == "2.0.0"
