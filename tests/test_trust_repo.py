"""The registry hosts the TUF repository (ADR 0010): real registry, real keys, real HTTP, python-tuf's
ngclient as the client. Re-signing, restarts, withdrawal, 404 for unknown roots, authorization."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import requests
from click.testing import CliRunner
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater

from edgekit.core import trust
from edgekit.core.errors import ConfigError
from edgekit.deploy import read_manifest, upload
from edgekit.registry_client import api

pytestmark = pytest.mark.integration


def publish(reg, bundle, stage="released") -> dict:
    """Upload ``bundle`` and move its version to ``stage``; returns the upload answer + manifest."""
    stored = upload(bundle, reg.url)
    m = read_manifest(bundle)
    if stage != "draft":
        api(reg.url, "POST", f"/api/v1/models/{m['model']['name']}/versions/{m['model']['version']}",
            body={"stage": stage})
    return {**stored, "manifest": m,
            "path": trust.released_target_path(m["model"]["name"], m["model"]["version"], m["profile"])}


def client(reg, cache, keystore) -> Updater:
    up = Updater(str(cache), f"{reg.url}/tuf/", bootstrap=(keystore.directory / "roots" / "1.root.json").read_bytes())
    up.refresh()
    return up


def timestamp(reg) -> Metadata:
    return Metadata.from_bytes(requests.get(f"{reg.url}/tuf/timestamp.json", timeout=5).content)


def test_hosted_metadata_verifies_with_ngclient_and_lists_only_released(trust_registry_factory, make_bundle,
                                                                        keystore, tmp_path):
    reg = trust_registry_factory()
    v1 = publish(reg, make_bundle(version="1.0.0"))
    v2 = publish(reg, make_bundle(version="2.0.0"), stage="draft")
    up = client(reg, tmp_path / "c1", keystore)
    tf = up.get_targetinfo(v1["path"])
    assert tf is not None and tf.length == v1["length"] and tf.hashes == {"sha256": v1["sha256"]}
    assert tf.custom == {"model": "digits-cnn", "version": "1.0.0", "profile": "raspberry-pi-4",
                         "release": v1["manifest"]["model"]["release"]}
    assert up.get_targetinfo(v2["path"]) is None  # a draft is not released

    # ngclient probes N+1.root.json: unknown versions and names are 404 (not 401/500), reads need no token
    anon = requests.Session()
    assert anon.get(f"{reg.url}/tuf/1.root.json", timeout=5).status_code == 200
    for name in ("2.root.json", "99.snapshot.json", "snapshot.json", "1.nope.json", "..%2Fregistry.db"):
        r = anon.get(f"{reg.url}/tuf/{name}", timeout=5)
        assert r.status_code == 404, name
    # the delegation is signed by the release key, the released role by the (online) snapshot key
    targets = Metadata.from_bytes(anon.get(f"{reg.url}/tuf/1.targets.json", timeout=5).content)
    root = trust.load_root(keystore.root_bytes())
    assert set(targets.signatures) == set(root.signed.roles["targets"].keyids)
    assert set(targets.signed.delegations.roles[trust.RELEASED_ROLE].keyids) == set(root.signed.roles["snapshot"].keyids)


def test_deprecating_withdraws_the_release_when_the_api_answers(trust_registry_factory, make_bundle, keystore,
                                                               tmp_path):
    reg = trust_registry_factory()
    v1 = publish(reg, make_bundle(version="1.0.0"))
    before = timestamp(reg).signed.version
    assert client(reg, tmp_path / "a", keystore).get_targetinfo(v1["path"]) is not None
    m = v1["manifest"]["model"]
    api(reg.url, "POST", f"/api/v1/models/{m['name']}/versions/{m['version']}", body={"stage": "deprecated"})
    assert timestamp(reg).signed.version == before + 1  # re-signed synchronously, before the API answered
    assert client(reg, tmp_path / "a", keystore).get_targetinfo(v1["path"]) is None  # same cache: newer versions
    api(reg.url, "POST", f"/api/v1/models/{m['name']}/versions/{m['version']}", body={"stage": "released"})
    assert client(reg, tmp_path / "a", keystore).get_targetinfo(v1["path"]) is not None


def test_resigner_bumps_the_timestamp_before_it_expires(trust_registry_factory, keystore, tmp_path):
    reg = trust_registry_factory(timestamp=3)  # re-signed at half its life, checked every 0.75 s
    first = timestamp(reg).signed
    while timestamp(reg).signed.version == first.version and time.time() < first.expires.timestamp():
        time.sleep(0.1)
    now, second = time.time(), timestamp(reg).signed
    assert second.version > first.version, "the re-signer did not bump the timestamp before it expired"
    assert now < first.expires.timestamp()  # a device polling all along never saw an expired timestamp
    assert second.expires > first.expires
    # snapshot (7 days) was not due: the timestamp still names the same snapshot version
    assert second.snapshot_meta.version == first.snapshot_meta.version
    client(reg, tmp_path / "c", keystore)  # and what it signs verifies
    st = api(reg.url, "GET", "/api/v1/trust")
    assert st["ok"] and st["roles"]["timestamp"]["version"] >= second.version
    assert 0 < st["roles"]["timestamp"]["next_resign_in_s"] <= 2.0


def test_restart_keeps_versions_monotonic_and_clients_follow(trust_registry_factory, db_url, make_bundle, keystore,
                                                            tmp_path):
    reg = trust_registry_factory(db=db_url)  # SQLite and PostgreSQL
    v1 = publish(reg, make_bundle(version="1.0.0"))
    client(reg, tmp_path / "dev", keystore)
    before = api(reg.url, "GET", "/api/v1/trust")["roles"]
    trust_registry_factory.stop(reg)

    reg = trust_registry_factory(db=db_url)  # same database
    after = api(reg.url, "GET", "/api/v1/trust")["roles"]
    assert {r: after[r]["version"] for r in after} == {r: before[r]["version"] for r in before}  # nothing was due
    out = api(reg.url, "POST", "/api/v1/trust/resign", body={})
    assert out["signed"] == {r: before[r]["version"] + 1 for r in ("released", "snapshot", "timestamp")}
    up = client(reg, tmp_path / "dev", keystore)  # the device's cache holds the older versions: accepted
    assert up.get_targetinfo(v1["path"]).hashes["sha256"] == v1["sha256"]


def test_writes_need_the_operator_token_reads_stay_open_for_devices(trust_registry_factory, keystore):
    reg = trust_registry_factory(private_reads=True)
    url = f"{reg.url}/api/v1/trust/resign"
    assert requests.post(url, json={}, timeout=5).status_code == 401
    viewer = reg.create_token("viewer", "dash")
    assert requests.post(url, json={}, headers={"Authorization": f"Bearer {viewer}"}, timeout=5).status_code == 403
    r = requests.post(url, json={}, headers={"Authorization": f"Bearer {reg.token}"}, timeout=5)
    assert r.status_code == 200 and r.json()["signed"]["timestamp"] >= 2
    # devices have no API credential: /tuf/* stays open even with --private-reads; the status is a read
    assert requests.get(f"{reg.url}/tuf/timestamp.json", timeout=5).status_code == 200
    assert requests.get(f"{reg.url}/api/v1/trust", timeout=5).status_code == 401
    assert requests.get(f"{reg.url}/api/v1/trust", headers={"Authorization": f"Bearer {viewer}"},
                        timeout=5).json()["ok"] is True


def test_registry_without_the_release_key_needs_trust_init(tmp_path, broker, keystore):
    from edgekit.cli.main import cli
    from edgekit.registry.service import Registry

    online = tmp_path / "online-keys"  # what the registry host gets: no root, no release (targets) key
    shutil.copytree(keystore.directory, online)
    for pem in (online / "private").glob("*.pem"):
        if pem.name.startswith(("root-", "targets-")):
            pem.unlink()
    db = f"sqlite:///{tmp_path}/r.db"
    with pytest.raises(ConfigError, match="needs the operator") as err:
        Registry(db, tmp_path / "art", "127.0.0.1", broker.port, trust_keys=online)
    assert "trust init" in err.value.hint

    runner = CliRunner()
    res = runner.invoke(cli, ["registry", "trust", "status", "--db", db, "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["hosted"] is False
    res = runner.invoke(cli, ["registry", "trust", "init", "--db", db, "--keys", str(keystore.directory), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["delegates_to"] == "released"
    res = runner.invoke(cli, ["registry", "trust", "init", "--db", db, "--keys", str(online)])
    assert res.exit_code == 3 and "targets" in res.output  # the online store cannot sign the delegation

    reg = Registry(db, tmp_path / "art", "127.0.0.1", broker.port, trust_keys=online,
                   trust_lifetimes={"timestamp": 2}).start()
    try:
        res = runner.invoke(cli, ["registry", "trust", "status", "--db", db])
        assert res.exit_code == 0, res.output
        assert "timestamp" in res.output and "released" in res.output
        reg.trust.stop()  # a stopped re-signer: status says so and exits non-zero once the re-sign is overdue
        deadline = time.time() + 3  # at most half the 2 s lifetime (rounded up) after the last re-sign
        while (res := runner.invoke(cli, ["registry", "trust", "status", "--db", db, "--json"])).exit_code == 0 \
                and time.time() < deadline:
            time.sleep(0.1)
        problems = json.dumps(json.loads(res.stdout)["problems"])
        assert res.exit_code == 1 and ("overdue" in problems or "timestamp expired" in problems), problems
    finally:
        reg.stop()


def test_lifetimes_and_cli_durations_are_validated(tmp_path, keystore):
    from edgekit.cli.main import cli
    from edgekit.registry import db
    from edgekit.registry.trust_repo import TrustRepo

    with pytest.raises(ConfigError, match="positive"):
        TrustRepo(db.open_db(f"sqlite:///{tmp_path}/x.db"), keystore.directory, {"timestamp": 0})
    with pytest.raises(ConfigError, match="lifetime"):
        TrustRepo(db.open_db(f"sqlite:///{tmp_path}/x.db"), keystore.directory, {"root": 5})
    res = CliRunner().invoke(cli, ["registry", "serve", "--trust", "--keys", str(keystore.directory),
                                   "--trust-timestamp", "soon", "--db", f"sqlite:///{tmp_path}/y.db"])
    assert res.exit_code == 2 and "90s" in res.output
    res = CliRunner().invoke(cli, ["registry", "serve", "--trust", "--db", f"sqlite:///{tmp_path}/y.db"])
    assert res.exit_code == 2 and "--keys" in res.output


def test_a_tampered_stored_timestamp_does_not_verify(trust_registry_factory, keystore, tmp_path):
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from edgekit.registry.trust_repo import TrustMetadataRow

    reg = trust_registry_factory()
    reg.trust.stop()
    raw = json.loads(requests.get(f"{reg.url}/tuf/timestamp.json", timeout=5).content)
    raw["signed"]["expires"] = "2099-01-01T00:00:00Z"  # a longer life without the key
    with Session(reg.engine) as s, s.begin():
        s.execute(update(TrustMetadataRow).where(TrustMetadataRow.role == "timestamp").values(raw=json.dumps(raw)))
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        client(reg, tmp_path / "c", keystore)


def test_status_and_resign_cli_against_a_running_registry(trust_registry_factory, monkeypatch):
    from edgekit.cli.main import cli

    reg = trust_registry_factory()
    runner = CliRunner()
    res = runner.invoke(cli, ["registry", "trust", "status", "--registry", reg.url])
    assert res.exit_code == 0 and "snapshot" in res.stdout and "timestamp" in res.stdout, res.output
    res = runner.invoke(cli, ["registry", "trust", "resign", "--registry", reg.url, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] and out["signed"]["timestamp"] == out["roles"]["timestamp"]["version"] >= 2
    monkeypatch.delenv("EDGEKIT_REGISTRY_TOKEN")
    res = runner.invoke(cli, ["registry", "trust", "resign", "--registry", reg.url])
    assert res.exit_code == 10 and "token" in res.output  # a write: operator token required


def test_read_commands_refuse_a_missing_sqlite_database(tmp_path):
    """A mistyped --db must not create an empty registry database and report "not hosted"."""
    from edgekit.cli.main import cli

    missing = tmp_path / "typo.db"
    runner = CliRunner()
    for args in (["registry", "trust", "status", "--db", f"sqlite:///{missing}", "--json"],
                 ["registry", "token", "ls", "--db", f"sqlite:///{missing}", "--json"],
                 ["registry", "token", "revoke", "--db", f"sqlite:///{missing}", "0123abcd", "--json"]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 3, (args, res.output)
        assert "no registry database at" in res.output and str(missing) in res.output
        assert not missing.exists()
