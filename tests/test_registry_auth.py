"""Registry API authentication (ADR 0009) on a real registry over HTTP, real SQLite and mosquitto:
writes need an operator bearer token (401 without, 403 for a viewer), tokens are stored hashed and
can be revoked, the CLI sends EDGEKIT_REGISTRY_TOKEN and says what to do when it is refused, and
bundle downloads stay open for devices."""

from __future__ import annotations

import json
import time
import sqlite3

import pytest
import requests
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.core.errors import AuthError, ForbiddenError
from edgekit.deploy import upload
from edgekit.fleetsim import FleetSim

pytestmark = pytest.mark.integration


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def released(registry, make_bundle, broker):
    """digits-cnn 1.0.0 uploaded and released (with the operator token), one simulated device online."""
    b = make_bundle("raspberry-pi-4", "1.0.0", release=1)
    stored = upload(b, registry.url)
    requests.post(f"{registry.url}/api/v1/models/digits-cnn/versions/1.0.0", json={"stage": "released"},
                  headers=bearer(registry.token), timeout=10).raise_for_status()
    sim = FleetSim("127.0.0.1", broker.port, 1, telemetry_s=0.5).start()
    deadline = time.monotonic() + 15      # the registry stores in batches: wait until it knows the device
    while time.monotonic() < deadline and not requests.get(f"{registry.url}/api/v1/fleet", timeout=5).json()["devices"]:
        time.sleep(0.1)
    yield b, stored
    sim.stop()


ROLLOUT = {"model": "digits-cnn", "version": "1.0.0", "selector": "all", "timeout_s": 20}


def test_writes_without_a_token_get_401_with_a_hint_and_change_nothing(registry, released):
    for path, body in [("/api/v1/rollouts", ROLLOUT), ("/api/v1/tags", {"devices": ["sim-0000"], "add": ["x"]}),
                       ("/api/v1/groups/canary", {"add": ["sim-0000"]}),
                       ("/api/v1/models/digits-cnn/versions/1.0.0", {"stage": "deprecated"})]:
        r = requests.post(registry.url + path, json=body, timeout=10)
        assert r.status_code == 401, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == "unauthorized" and "EDGEKIT_REGISTRY_TOKEN" in err["hint"]
    for method in ("PUT", "DELETE"):
        assert requests.request(method, registry.url + "/api/v1/rollouts", timeout=10).status_code == 401
    r = requests.post(registry.url + "/api/v1/artifacts", data=b"x" * 1000, timeout=10)  # anonymous upload
    assert r.status_code == 401
    r = requests.post(registry.url + "/api/v1/rollouts", json=ROLLOUT, headers=bearer("ekt_00000000_" + "A" * 43))
    assert r.status_code == 401 and "does not know this token" in r.json()["error"]["message"]
    r = requests.post(registry.url + "/api/v1/rollouts", json=ROLLOUT, headers={"Authorization": "Basic dTpw"})
    assert r.status_code == 401
    # nothing was created, staged or tagged by the refused requests
    ok = bearer(registry.token)
    assert requests.get(registry.url + "/api/v1/rollouts", headers=ok).json()["rollouts"] == []
    model = requests.get(registry.url + "/api/v1/models/digits-cnn", headers=ok).json()
    assert {v["version"]: v["stage"] for v in model["versions"]} == {"1.0.0": "released"}
    assert requests.get(registry.url + "/api/v1/groups", headers=ok).json()["groups"] in ({}, [])


def test_viewer_reads_but_cannot_start_a_rollout_operator_can(registry, released):
    viewer = registry.create_token("viewer", "dashboard")
    assert requests.get(registry.url + "/api/v1/rollouts", headers=bearer(viewer)).status_code == 200
    r = requests.post(registry.url + "/api/v1/rollouts", json=ROLLOUT, headers=bearer(viewer), timeout=10)
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "forbidden" and "'viewer'" in err["message"] and "operator" in err["hint"]
    r = requests.post(registry.url + "/api/v1/rollouts", json=ROLLOUT, headers=bearer(registry.token), timeout=10)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "running"


def test_cli_sends_the_token_and_explains_401_and_403(registry, released, monkeypatch):
    monkeypatch.delenv("EDGEKIT_REGISTRY_TOKEN")
    res = invoke("deploy", "digits-cnn@1.0.0", "--to", "all", "--registry", registry.url)
    assert res.exit_code == AuthError.exit_code == 10, res.output
    assert "none was sent" in res.output and "edgekit registry token create" in res.output
    res = invoke("deploy", "digits-cnn@1.0.0", "--to", "all", "--registry", registry.url,
                 env={"EDGEKIT_REGISTRY_TOKEN": "ekt_12345678_" + "b" * 43})
    assert res.exit_code == 10 and "refused the token" in res.output and "hint:" in res.output
    viewer = registry.create_token("viewer", "ci")
    res = invoke("deploy", "digits-cnn@1.0.0", "--to", "all", "--registry", registry.url, "--json",
                 env={"EDGEKIT_REGISTRY_TOKEN": viewer})
    assert res.exit_code == ForbiddenError.exit_code
    assert json.loads(res.output[res.output.index("{"):])["error"]["code"] == "forbidden"
    res = invoke("rollout", "status", "--registry", registry.url, env={"EDGEKIT_REGISTRY_TOKEN": viewer})
    assert res.exit_code == 0  # reads are fine for a viewer
    res = invoke("deploy", "digits-cnn@1.0.0", "--to", "all", "--registry", registry.url, "--json",
                 env={"EDGEKIT_REGISTRY_TOKEN": registry.token})
    assert res.exit_code == 0, res.output


def test_upload_and_release_upload_need_an_operator_token(registry, make_bundle, monkeypatch, keystore, artifacts,
                                                           tmp_path):
    b = make_bundle("raspberry-pi-4", "4.0.0", release=4)
    monkeypatch.delenv("EDGEKIT_REGISTRY_TOKEN")
    with pytest.raises(AuthError, match="none was sent") as exc:
        upload(b, registry.url)
    assert "edgekit registry token create" in exc.value.hint
    with pytest.raises(ForbiddenError):
        upload(b, registry.url, token=registry.create_token("viewer", "x"))
    assert upload(b, registry.url, token=registry.token)["length"] == b.stat().st_size
    res = invoke("release", artifacts / "fp32" / "raspberry-pi-4", "--keys", keystore.directory, "--name",
                 "digits-cnn", "--version", "4.0.1", "--out", tmp_path / "rel", "--upload", "--registry",
                 registry.url)
    assert res.exit_code == 10 and "none was sent" in res.output, res.output
    assert not (tmp_path / "rel").exists()  # refused before anything was signed or written
    res = invoke("release", artifacts / "fp32" / "raspberry-pi-4", "--keys", keystore.directory, "--name",
                 "digits-cnn", "--version", "4.0.1", "--out", tmp_path / "rel2", "--upload", "--registry",
                 registry.url, env={"EDGEKIT_REGISTRY_TOKEN": registry.token})
    assert res.exit_code == 0, res.output
    versions = requests.get(registry.url + "/api/v1/models/digits-cnn").json()["versions"]
    assert {v["version"] for v in versions} == {"4.0.0", "4.0.1"}  # the refused release --upload added nothing


def test_downloads_health_and_openapi_stay_open(registry, make_bundle):
    stored = upload(make_bundle("raspberry-pi-4", "1.0.0", release=1), registry.url)
    r = requests.get(stored["url"], headers={"Range": "bytes=0-9"}, timeout=10)  # what a device does
    assert r.status_code == 206 and len(r.content) == 10
    assert requests.get(registry.url + "/api/v1/health").json()["ok"] is True
    assert "/api/v1/rollouts" in requests.get(registry.url + "/api/v1/openapi.json").json()["paths"]


def test_token_cli_create_ls_revoke_and_hashed_storage(registry, tmp_path):
    db = f"sqlite:///{tmp_path}/registry.db"
    res = invoke("registry", "token", "create", "--db", db, "--role", "operator", "--name", "alice", "--json")
    assert res.exit_code == 0, res.output
    tok = json.loads(res.output)
    assert tok["token"].startswith(f"ekt_{tok['id']}_")
    ok = requests.post(registry.url + "/api/v1/tags", json={"devices": [], "add": []}, headers=bearer(tok["token"]))
    assert ok.status_code == 200, ok.text
    listing = invoke("registry", "token", "ls", "--db", db)
    assert "alice" in listing.output and tok["token"].split("_", 2)[2] not in listing.output  # the secret may hold "_"
    with sqlite3.connect(tmp_path / "registry.db") as con:  # only the hash is stored
        dump = "\n".join(con.iterdump())
    assert tok["token"].split("_", 2)[2] not in dump and "alice" in dump
    res = invoke("registry", "token", "revoke", "--db", db, tok["id"])
    assert res.exit_code == 0 and "revoked token" in res.output
    r = requests.post(registry.url + "/api/v1/tags", json={"devices": [], "add": []}, headers=bearer(tok["token"]))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert invoke("registry", "token", "revoke", "--db", db, "ffffffff").exit_code == 2
    assert invoke("registry", "token", "create", "--db", db, "--role", "root").exit_code == 2


def test_private_reads_need_a_viewer_token(tmp_path, broker):
    from edgekit.registry.service import Registry

    reg = Registry(f"sqlite:///{tmp_path}/p.db", tmp_path / "a", "127.0.0.1", broker.port, rollouts=False,
                   private_reads=True).start()
    try:
        assert requests.get(reg.url + "/api/v1/fleet").status_code == 401
        assert requests.get(reg.url + "/api/v1/devices").status_code == 401
        viewer = reg.create_token("viewer", "grafana")
        assert requests.get(reg.url + "/api/v1/fleet", headers=bearer(viewer)).status_code == 200
        assert requests.get(reg.url + "/api/v1/health").status_code == 200
    finally:
        reg.stop()
