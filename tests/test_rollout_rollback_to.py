"""Rollback to any earlier release (ADR 0011), on real parts: signed bundles in the registry, the
rollout engine, a simulated fleet (SQLite and PostgreSQL), and the CLI. An earlier release whose
counter devices would refuse is refused with the re-sign step as hint; ``--keys`` re-signs the
same content as a newer release and the registry rolls it out to the devices the rollout updated.
The end-to-end proof with real agents (two releases back) is in test_rollback_e2e.py."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.core import bundle, trust
from edgekit.core.errors import BundleError, TrustError
from edgekit.release import rerelease_bundle
from test_registry_rollouts import bundles, deploy, fleet, reg  # noqa: F401  (fixtures shared with those tests)

pytestmark = pytest.mark.integration


def releases(reg, version: str) -> dict[str, int]:
    v = next(v for v in reg.get("/api/v1/models/digits-cnn")["versions"] if v["version"] == version)
    return {a["profile"]: a["release"] for a in v["artifacts"]}


def test_rollback_to_an_earlier_release_resigns_it_and_rolls_it_out(reg, fleet, keystore, monkeypatch):
    sim = fleet(6)
    reg.wait_devices(6)
    a = deploy(reg, waves="100%")
    assert reg.wait(a["id"], ("succeeded", "aborted"))["state"] == "succeeded"
    monkeypatch.setenv("EDGEKIT_REGISTRY_TOKEN", reg.auth["Authorization"].split()[1])
    runner = CliRunner()
    base = ["rollout", "rollback", a["id"], "--to", "digits-cnn@1.0.0", "--registry", reg.url, "--timeout", "10"]

    res = runner.invoke(cli, base)  # release 1 < release 2 the devices run: they would refuse it
    assert res.exit_code == 5, res.output
    assert "devices would refuse digits-cnn@1.0.0 (anti-rollback counter): raspberry-pi-4: release 1 is not " \
           "above release 2" in res.output
    assert "--keys DIR" in res.output and f"`edgekit rollout rollback {a['id']}`: it is the devices' previous slot" \
        in res.output
    assert len(reg.get("/api/v1/rollouts")["rollouts"]) == 1  # nothing started

    res = runner.invoke(cli, base + ["--keys", str(keystore.directory), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    [resigned] = out["resigned"]
    assert resigned["profile"] == "raspberry-pi-4" and resigned["from_release"] == 1 and resigned["release"] > 2
    assert releases(reg, "1.0.0") == {"raspberry-pi-4": resigned["release"]}  # the registry serves the new one
    assert out["rollback_of"] == a["id"] and out["total"] == 6 and out["selector"] == f"devices of rollout {a['id']}"
    done = reg.wait(out["id"], ("succeeded", "aborted"))
    assert done["state"] == "succeeded" and done["counts"] == {"succeeded": 6}, done
    assert set(sim.versions().values()) == {"digits-cnn@1.0.0"}
    notices = [d.notices[-1] for d in sim.devices.values()]
    assert {(n["schema"], n["version"], n["sha256"]) for n in notices} == {
        ("edgekit.notice/1", "1.0.0", resigned["sha256"])}  # a deploy notice of the re-signed bundle
    old = reg.get(f"/api/v1/rollouts/{a['id']}")
    assert old["state"] == "succeeded" and f"rolled back to digits-cnn@1.0.0 by rollout {out['id']}" in old["reason"]
    assert {t["superseded_by"] for t in old["targets"]} == {out["id"]}

    # the counter is now high enough: a second rollback to it needs no re-signing
    res = runner.invoke(cli, ["rollout", "rollback", out["id"], "--to", "digits-cnn@2.0.0", "--registry", reg.url])
    assert res.exit_code == 5 and "release 2 is not above release" in res.output, res.output


def test_bad_rollback_requests_are_refused_with_specific_errors(reg, fleet, monkeypatch):
    fleet(2)
    reg.wait_devices(2)
    a = deploy(reg, waves="100%")
    reg.wait(a["id"], ("succeeded",))
    cases = [({"to": "other-model@1.0.0"}, 400, "rolled out digits-cnn, not other-model"),
             ({"to": "digits-cnn@2.0.0"}, 400, "is the release rollout"),
             ({"to": "digits-cnn@9.9.9"}, 404, "unknown model version digits-cnn@9.9.9"),
             ({"to": "digits-cnn"}, 400, "expected MODEL@VERSION"),
             ({"to": 7}, 400, "'to' must be a string")]
    for body, status, text in cases:
        err = reg.post(f"/api/v1/rollouts/{a['id']}/rollback", body, expect=status)["error"]
        assert text in err["message"] and err.get("hint"), (body, err)
    assert reg.post("/api/v1/rollouts/nope/rollback", {"to": "digits-cnn@1.0.0"}, expect=404)["error"]["message"] \
        .startswith("unknown rollout")
    monkeypatch.setenv("EDGEKIT_REGISTRY_TOKEN", reg.auth["Authorization"].split()[1])
    res = CliRunner().invoke(cli, ["rollout", "rollback", a["id"], "--keys", ".", "--registry", reg.url])
    assert res.exit_code == 2 and "--keys only applies with --to" in res.output
    assert len(reg.get("/api/v1/rollouts")["rollouts"]) == 1


def test_rerelease_verifies_the_bundle_against_the_key_store_first(bundles, keystore, other_keystore, tmp_path):
    with pytest.raises(TrustError, match="is not signed by this key store"):
        rerelease_bundle(bundles["1.0.0"], other_keystore, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    out = rerelease_bundle(bundles["1.0.0"], keystore, tmp_path / "y", above=41)
    m = bundle.peek_manifest(out)
    assert m["model"]["release"] >= 42 and m["model"]["version"] == "1.0.0"
    assert m["rereleased_from"]["release"] == 1
    root = trust.load_root(keystore.root_bytes())
    vb = bundle.open_bundle(out, root, tmp_path / "check")
    assert vb.manifest["model"]["release"] == m["model"]["release"]
    original = bundle.open_bundle(bundles["1.0.0"], root, tmp_path / "orig")
    assert vb.artifact_path.read_bytes() == original.artifact_path.read_bytes()  # same model, new counter
    with pytest.raises(BundleError, match="bundle not found"):
        rerelease_bundle(tmp_path / "missing.bundle", keystore, tmp_path / "z")
