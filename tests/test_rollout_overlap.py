"""One active rollout per device, on real parts (mosquitto, signed bundles in the registry, the
registry's rollout engine, a simulated fleet; SQLite and PostgreSQL): a rollout that selects
devices of a running or paused rollout is refused with an error naming both, ``supersede`` hands
the devices over, and a rollback of the older rollout leaves the devices it lost alone."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from test_registry_rollouts import bundles, deploy, fleet, reg  # noqa: F401  (fixtures shared with those tests)

pytestmark = pytest.mark.integration
CANARY = ["sim-0000", "sim-0001", "sim-0002"]


def started(reg, fleet_, n=10, **kw):
    sim = fleet_(n, **kw)
    reg.wait_devices(n)
    reg.post("/api/v1/tags", {"devices": CANARY, "add": ["canary"]})
    return sim


def test_overlap_is_refused_then_superseded_and_rollback_skips_handed_over_devices(reg, fleet):
    sim = started(reg, fleet)
    a = deploy(reg, waves="100%", rate_per_min=60)  # 1 notice a second: most targets still pending
    reg.post(f"/api/v1/rollouts/{a['id']}/pause")
    err = reg.post("/api/v1/rollouts", {"model": "digits-cnn", "version": "2.0.0", "selector": "tag=canary"},
                   expect=409)["error"]
    assert err["code"] == "rollout_conflict" and err["hint"] and "--supersede" in err["hint"]
    assert f"rollout {a['id']} (paused): {', '.join(CANARY)}" in err["message"]
    assert err["details"]["conflicts"] == {a["id"]: CANARY}
    assert len(reg.get("/api/v1/rollouts")["rollouts"]) == 1  # nothing half-created

    b = reg.post("/api/v1/rollouts", {"model": "digits-cnn", "version": "2.0.0", "selector": "tag=canary",
                                      "supersede": True, "timeout_s": 10}, expect=201)
    assert b["reason"] == f"superseded 3 device(s) of {a['id']}"
    older = reg.get(f"/api/v1/rollouts/{a['id']}")
    assert older["state"] == "paused" and "3 device(s) superseded by rollout " + b["id"] in older["reason"]
    handed = {t["device"]: t for t in older["targets"] if t["superseded_by"]}
    assert sorted(handed) == CANARY
    assert all(t["state"] in ("superseded", "succeeded") for t in handed.values())
    assert reg.wait(b["id"], ("succeeded", "aborted"))["counts"] == {"succeeded": 3}

    reg.post(f"/api/v1/rollouts/{a['id']}/resume")
    done = reg.wait(a["id"], ("succeeded", "aborted"), timeout=60)
    assert done["state"] == "succeeded" and done["counts"]["succeeded"] >= 7, done
    assert done["counts"].get("superseded", 0) + done["counts"]["succeeded"] == 10
    # rolling the older rollout back leaves the devices the newer one owns on its release
    reg.post(f"/api/v1/rollouts/{a['id']}/rollback")
    rolled = reg.wait(a["id"], ("rolled_back",), timeout=30)
    others = [d for d in sim.devices if d not in CANARY]
    assert rolled["rollback_counts"] == {"done": 7}, rolled
    versions = sim.versions()
    assert {versions[d] for d in CANARY} == {"digits-cnn@2.0.0"}
    assert {versions[d] for d in others} == {"digits-cnn@1.0.0"}


def test_superseding_every_device_cancels_the_older_rollout_and_cli_explains(reg, fleet, monkeypatch):
    started(reg, fleet, 6)
    a = deploy(reg, selector="tag=canary", waves="100%", rate_per_min=6)
    monkeypatch.setenv("EDGEKIT_REGISTRY_TOKEN", reg.auth["Authorization"].split()[1])
    runner = CliRunner()
    args = ["deploy", "digits-cnn@2.0.0", "--to", "all", "--registry", reg.url, "--timeout", "10"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert f"3 selected device(s) are already in an active rollout — rollout {a['id']} (running)" in res.output
    assert "hint:" in res.output and "--supersede" in res.output
    res = runner.invoke(cli, args + ["--supersede", "--json"])
    assert res.exit_code == 0, res.output
    older = reg.get(f"/api/v1/rollouts/{a['id']}")
    assert older["state"] == "cancelled" and "superseded by rollout" in older["reason"]
    assert {t["superseded_by"] for t in older["targets"]} == {reg.get("/api/v1/rollouts")["rollouts"][0]["id"]}


def test_two_overlapping_rollouts_created_at_once_only_one_wins(reg, fleet):
    started(reg, fleet, 4)
    answers: list = []

    def create():
        import requests

        r = requests.post(reg.url + "/api/v1/rollouts", timeout=30, headers=reg.auth, json={
            "model": "digits-cnn", "version": "2.0.0", "selector": "all", "rate_per_min": 6})
        answers.append(r.status_code)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answers) == [201, 409, 409]
    assert len(reg.get("/api/v1/rollouts")["rollouts"]) == 1


def test_devices_whose_rollback_is_pending_belong_to_the_rolling_back_rollout(reg, fleet):
    sim = started(reg, fleet, 3)
    a = deploy(reg, waves="100%", rate_per_min=600)
    assert reg.wait(a["id"], ("succeeded", "aborted"))["state"] == "succeeded"
    reg.svc.rollouts.stop()  # hold the engine so the rollback stays pending while we look
    reg.post(f"/api/v1/rollouts/{a['id']}/rollback")
    err = reg.post("/api/v1/rollouts", {"model": "digits-cnn", "version": "2.0.0", "selector": "tag=canary"},
                   expect=409)["error"]
    assert f"rollout {a['id']} (rolling_back): {', '.join(CANARY)}" in err["message"]
    b = reg.post("/api/v1/rollouts", {"model": "digits-cnn", "version": "2.0.0", "selector": "id=sim-0000",
                                      "supersede": True}, expect=201)
    targets = {t["device"]: t for t in reg.get(f"/api/v1/rollouts/{a['id']}")["targets"]}
    assert targets["sim-0000"]["rollback"] == "superseded" and targets["sim-0000"]["superseded_by"] == b["id"]
    assert targets["sim-0001"]["rollback"] == "pending"
    reg.stop()
    reg.start()  # a fresh engine: the rollback proceeds for the devices A still owns
    done = reg.wait(a["id"], ("rolled_back",), timeout=30)
    assert done["rollback_counts"] == {"done": 2, "superseded": 1}, done
    assert sim.versions()["sim-0000"] == "digits-cnn@2.0.0" and sim.versions()["sim-0001"] == "digits-cnn@1.0.0"
