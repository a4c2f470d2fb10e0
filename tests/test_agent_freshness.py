"""Device side of the hosted TUF repository (agent/freshness.py, ADR 0010), on a real registry over real
HTTP with real keys: released bundles pass; withdrawn / never released, expired (re-signer stopped),
rolled-back metadata are refused before anything is downloaded, with a specific error code."""

from __future__ import annotations

import shutil
import time

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from agent.freshness import ReleaseCheck
from agent.installer import InstallRequest, Installer
from edgekit.core.errors import (NotReleasedError, TrustMetadataExpiredError, TrustMetadataRollbackError,
                                 TrustRepositoryError)
from edgekit.core.profiles import load_profile
from edgekit.registry_client import api
from test_trust_repo import publish, timestamp

pytestmark = pytest.mark.integration


def check(tmp_path, keystore, pub, mode="auto", data="dev", sha256=None):
    rc = ReleaseCheck(tmp_path / data, keystore.root_path, tmp_path / data / "trust", time.time, mode)
    m = pub["manifest"]
    return rc.check(pub["url"], model=m["model"]["name"], version=m["model"]["version"], profile=m["profile"],
                    sha256=sha256 or pub["sha256"], length=pub["length"])


def installer(tmp_path, keystore, events, freshness="auto"):
    return Installer(tmp_path / "data", load_profile("raspberry-pi-4"), keystore.root_path,
                     lambda s, ok, d, e, dep: events.append((s, ok, d, e)), health_runs=3, freshness=freshness)


def request(pub) -> InstallRequest:
    m = pub["manifest"]["model"]
    return InstallRequest(deployment_id=f"d-{m['version']}-{time.monotonic_ns()}", url=pub["url"],
                          sha256=pub["sha256"], length=pub["length"], model=m["name"], version=m["version"])


def test_released_bundle_installs_and_the_event_carries_the_versions(trust_registry_factory, make_bundle, keystore,
                                                                     tmp_path):
    reg = trust_registry_factory()
    pub = publish(reg, make_bundle(version="1.0.0"))
    events: list = []
    rec = installer(tmp_path, keystore, events).install(request(pub))
    assert rec.state == "committed", rec.error
    assert [e[0] for e in events][:2] == ["checking_release", "downloading"]
    details = events[1][2]  # the downloading event shows what the check found
    assert details["freshness"] == "verified" and details["target"] == pub["path"]
    assert details["timestamp_version"] >= 1 and details["released_version"] >= 1


def test_withdrawn_and_never_released_bundles_are_refused_before_download(trust_registry_factory, make_bundle,
                                                                          keystore, tmp_path):
    reg = trust_registry_factory()
    old = publish(reg, make_bundle(version="1.0.0"))
    draft = publish(reg, make_bundle(version="2.0.0"), stage="draft")
    m = old["manifest"]["model"]
    api(reg.url, "POST", f"/api/v1/models/{m['name']}/versions/{m['version']}", body={"stage": "deprecated"})
    for pub in (old, draft):
        events: list = []
        rec = installer(tmp_path, keystore, events).install(request(pub))
        assert rec.state == "failed" and rec.error["code"] == "not_released", rec.error
        assert rec.details["failed_state"] == "checking_release"
        assert "withdrawn or never released" in rec.error["message"]
        assert events[-1][0] == "failed" and events[-1][3].code == "not_released"
        assert not (tmp_path / "data" / "downloads").exists()  # nothing was fetched
    # the same bundle path, other bytes: a notice naming an unlisted hash for a released path
    fresh = publish(reg, make_bundle(version="3.0.0"))
    with pytest.raises(NotReleasedError, match="another bundle"):
        check(tmp_path, keystore, fresh, sha256="0" * 64)


def test_expired_timestamp_is_refused_when_the_resigner_stopped(trust_registry_factory, make_bundle, keystore,
                                                                tmp_path):
    reg = trust_registry_factory(timestamp=2)
    pub = publish(reg, make_bundle(version="1.0.0"))
    assert check(tmp_path, keystore, pub)["freshness"] == "verified"
    reg.trust.stop()  # a frozen registry: the last timestamp is served on and on
    expires = timestamp(reg).signed.expires.timestamp()
    time.sleep(max(expires - time.time(), 0) + 0.1)
    with pytest.raises(TrustMetadataExpiredError) as err:
        check(tmp_path, keystore, pub)
    assert err.value.code == "trust_metadata_expired"
    events: list = []
    rec = installer(tmp_path, keystore, events).install(request(pub))
    assert rec.error["code"] == "trust_metadata_expired" and "registry trust status" in rec.error["hint"]


def test_a_device_time_floor_ahead_of_the_clock_also_expires_metadata(trust_registry_factory, make_bundle,
                                                                      keystore, tmp_path):
    reg = trust_registry_factory()
    pub = publish(reg, make_bundle(version="1.0.0"))
    rc = ReleaseCheck(tmp_path / "dev", keystore.root_path, tmp_path / "dev" / "trust",
                      lambda: time.time() + 2 * 86400)  # the persisted floor says: two days later
    m = pub["manifest"]
    with pytest.raises(TrustMetadataExpiredError, match="timestamp"):
        rc.check(pub["url"], model=m["model"]["name"], version=m["model"]["version"], profile=m["profile"],
                 sha256=pub["sha256"], length=pub["length"])


def test_rolled_back_timestamp_is_refused(trust_registry_factory, make_bundle, keystore, tmp_path):
    from edgekit.registry.trust_repo import TrustMetadataRow

    reg = trust_registry_factory()
    pub = publish(reg, make_bundle(version="1.0.0"))
    api(reg.url, "POST", "/api/v1/trust/resign", body={})
    newest = timestamp(reg).signed.version
    assert check(tmp_path, keystore, pub)["timestamp_version"] == newest
    reg.trust.stop()
    with Session(reg.engine) as s, s.begin():  # a registry restored from an older backup
        s.execute(delete(TrustMetadataRow).where(TrustMetadataRow.role == "timestamp",
                                                 TrustMetadataRow.version == newest))
    assert timestamp(reg).signed.version < newest
    with pytest.raises(TrustMetadataRollbackError) as err:
        check(tmp_path, keystore, pub)
    assert err.value.code == "trust_metadata_rollback"
    # a device that never saw the newer version accepts the older one (TUF: freeze bounded by expiry)
    assert check(tmp_path, keystore, pub, data="other")["freshness"] == "verified"


def test_auto_mode_skips_a_registry_without_trust_until_the_device_saw_one(registry, trust_registry_factory,
                                                                           make_bundle, keystore, tmp_path):
    plain = publish(registry, make_bundle(version="1.0.0"), stage="draft")  # the `registry` fixture hosts nothing
    assert check(tmp_path, keystore, plain, data="new")["freshness"] == "unavailable"
    with pytest.raises(TrustRepositoryError, match="HTTP 404") as err:
        check(tmp_path, keystore, plain, mode="require", data="strict")
    assert err.value.code == "trust_repository"
    assert check(tmp_path, keystore, plain, mode="off", data="off") == {"freshness": "off"}

    hosted = trust_registry_factory()
    assert check(tmp_path, keystore, publish(hosted, make_bundle(version="1.0.0")), data="new")["freshness"] == \
        "verified"
    with pytest.raises(TrustRepositoryError, match="HTTP 404"):  # once seen, a registry without it is refused
        check(tmp_path, keystore, plain, data="new")


def test_metadata_signed_by_another_fleet_is_refused(trust_registry_factory, make_bundle, keystore, other_keystore,
                                                     tmp_path):
    reg = trust_registry_factory(keys=other_keystore)
    pub = publish(reg, make_bundle(version="1.0.0", store=other_keystore))
    with pytest.raises(TrustRepositoryError) as err:
        check(tmp_path, keystore, pub)  # this device's root is `keystore`'s
    assert err.value.code == "trust_repository"


def test_rotated_snapshot_key_root_reaches_the_agents_history(trust_registry_factory, make_bundle, tmp_path):
    from edgekit.keys import init_keystore, load_keystore, rotate

    keys = init_keystore(tmp_path / "keys")
    factory_root = tmp_path / "factory-root.json"
    shutil.copyfile(keys.root_path, factory_root)
    reg = trust_registry_factory(keys=keys)
    pub = publish(reg, make_bundle(version="1.0.0", store=keys))
    rc = ReleaseCheck(tmp_path / "dev", factory_root, tmp_path / "dev" / "trust", time.time)
    m = pub["manifest"]
    args = dict(model=m["model"]["name"], version=m["model"]["version"], profile=m["profile"], sha256=pub["sha256"],
                length=pub["length"])
    assert rc.check(pub["url"], **args)["freshness"] == "verified"
    assert not (tmp_path / "dev" / "trust" / "2.root.json").exists()

    rotate(load_keystore(keys.directory), "snapshot")  # root v2 replaces the online snapshot key
    trust_registry_factory.stop(reg)
    old_url, reg = reg.url, trust_registry_factory(keys=load_keystore(keys.directory))  # re-signs the delegation
    out = rc.check(pub["url"].replace(old_url, reg.url), **args)  # (same database, new port)
    assert out["freshness"] == "verified" and out["snapshot_version"] >= 2
    assert (tmp_path / "dev" / "trust" / "2.root.json").exists()  # the agent's one root history follows


def test_bench_installs_and_mqtt_transfers_without_a_broker_session_skip_the_check(tmp_path, keystore):
    events: list = []
    inst = installer(tmp_path, keystore, events)
    rec = inst.install(InstallRequest(deployment_id="b1", bundle_path=str(tmp_path / "missing.bundle")))
    assert events[0][0] == "verifying" and rec.error["code"] == "bundle"
    events.clear()
    rec = inst.install(InstallRequest(deployment_id="m1", url="mqtt:", sha256="0" * 64, length=10, model="m",
                                      version="1", transport="mqtt"))
    assert events[0][0] == "downloading"  # an installer without a metadata fetcher (the agent always has one)


@pytest.mark.parametrize("transport", ["http", "mqtt"])
def test_agent_refuses_a_withdrawn_release_and_keeps_serving(transport, trust_registry_factory, agent_factory,
                                                             make_bundle, keystore, broker):
    """Over HTTP the agent reads the hosted metadata from the registry's /tuf/; a broker-only transfer
    (notice transport "mqtt") reads the same files from the registry's chunk server (agent/trust_mqtt.py)."""
    import uuid

    from edgekit.core.mqtt import MqttConnection
    from edgekit.deploy import DeviceWatcher, make_notice, push

    reg = trust_registry_factory()
    agent_factory("dev-1", "raspberry-pi-4")  # default config: [install] freshness = "auto"
    conn = MqttConnection(f"test-op-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port)
    conn.connect()
    watcher = DeviceWatcher(conn, "demo", ["dev-1"])
    seen: list[dict] = []

    def deploy(pub):
        notice = make_notice(pub["manifest"], pub, device="dev-1", fleet="demo", signer=keystore.notice_signer(),
                             transport=transport)
        push(conn, "demo", "dev-1", notice)
        return watcher.wait_terminal({"dev-1": notice["deployment_id"]}, 60, lambda d, e: seen.append(e))["dev-1"]

    try:
        ok = deploy(publish(reg, make_bundle(version="1.0.0")))
        assert ok["state"] == "committed", ok
        assert any(e["state"] == "downloading" and e["details"]["freshness"] == "verified" for e in seen), seen
        # timestamp, snapshot, targets and released came over the broker for the MQTT transfer, not for HTTP
        assert (reg.chunks.metadata_served >= 4) if transport == "mqtt" else reg.chunks.metadata_served == 0
        v2 = publish(reg, make_bundle(version="2.0.0"))
        m = v2["manifest"]["model"]
        api(reg.url, "POST", f"/api/v1/models/{m['name']}/versions/{m['version']}", body={"stage": "deprecated"})
        refused = deploy(v2)
        assert refused["state"] == "failed" and refused["error"]["code"] == "not_released", refused
        assert refused["details"]["failed_state"] == "checking_release"
        assert "edgekit models stage" in refused["error"]["hint"]
        deadline = time.time() + 10  # the device reports it still serves 1.0.0
        while time.time() < deadline and (api(reg.url, "GET", "/api/v1/devices/dev-1") or {}).get("version") != "1.0.0":
            time.sleep(0.2)
        assert api(reg.url, "GET", "/api/v1/devices/dev-1")["version"] == "1.0.0"
    finally:
        conn.close()


def test_hosted_metadata_over_the_broker_matches_http_and_fails_like_it(trust_registry_factory, broker, tmp_path):
    """agent/trust_mqtt.py against the registry's real chunk server through mosquitto: the same bytes as
    GET /tuf/..., in several chunks; an unknown file is HTTP 404 for ngclient; a request naming both a
    bundle and a file is refused; no chunk server at all ends at the deadline as slow retrieval."""
    import requests
    from tuf.api import exceptions as tuf_exc

    from agent import trust_mqtt
    from edgekit.core import chunks, messages, topics
    from edgekit.core.errors import MessageError
    from edgekit.core.mqtt import MqttConnection

    reg = trust_registry_factory()
    conn = MqttConnection("edgekit-agent-dev-7", "127.0.0.1", broker.port)
    conn.connect()
    try:
        fetcher = trust_mqtt.metadata_fetcher(conn, "demo", "dev-7", time.monotonic() + 10, chunk_bytes=100)
        over_mqtt = b"".join(fetcher.fetch(trust_mqtt.REPOSITORY + "timestamp.json"))
        assert over_mqtt == requests.get(f"{reg.url}/tuf/timestamp.json", timeout=10).content
        assert reg.chunks.metadata_served == -(-len(over_mqtt) // 100) > 1
        with pytest.raises(tuf_exc.DownloadHTTPError) as info:
            fetcher.fetch(trust_mqtt.REPOSITORY + "99.root.json")
        assert info.value.status_code == 404 and trust_mqtt.hosts_metadata(fetcher)
        both = messages.dumps({"schema": messages.CHUNK_REQUEST, "sha256": "a" * 64, "name": "timestamp.json",
                               "offset": 0, "length": 10})
        with pytest.raises(MessageError, match="exactly one"):
            chunks.decode(conn.request(topics.chunk_request("demo", "dev-7"), both,
                                       topics.chunk_response("demo", "dev-7"), timeout=10))
        reg.chunks.stop()  # nobody answers any more
        slow = trust_mqtt.metadata_fetcher(conn, "demo", "dev-7", time.monotonic() + 0.5)
        t0 = time.monotonic()
        with pytest.raises(tuf_exc.SlowRetrievalError):
            slow.fetch(trust_mqtt.REPOSITORY + "timestamp.json")
        assert time.monotonic() - t0 < 3
    finally:
        conn.close()
