"""Signed rollback end to end on real parts: mosquitto, the registry with its rollout engine (signing
with the key store's notices key), two real ``edgekit-agent`` processes that download, verify and
health-check bundles. A rollout puts 2.0.0 on the devices; ``edgekit rollout rollback`` makes them
switch back to their previous verified slot (1.0.0) through a signed ``cmd/rollback`` — a deploy
notice for 1.0.0 would be refused by their anti-rollback counter — and a replayed rollback command
is refused."""

from __future__ import annotations

import json
import queue
import time
import uuid

import numpy as np
import pytest
import requests
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.core import topics
from edgekit.core.mqtt import MqttConnection
from edgekit.deploy import DeviceWatcher, infer_remote, make_notice, make_rollback, push, read_manifest, upload

pytestmark = pytest.mark.integration
FLEET = "demo"
DEVICES = ("real-1", "real-2")


def api(registry, method, path, body=None):
    r = requests.request(method, registry.url + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {registry.token}"})
    assert r.status_code in (200, 201), r.text
    return r.json()


def wait_rollout(registry, rid, states, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api(registry, "GET", f"/api/v1/rollouts/{rid}")
        if r["state"] in states:
            return r
        time.sleep(0.1)
    raise AssertionError(f"rollout {rid} still {r['state']}: {r}")


def rollout(registry, version):
    r = api(registry, "POST", "/api/v1/rollouts", {"model": "digits-cnn", "version": version, "selector": "all",
                                                    "waves": "100%", "abort_if": ["failure_rate>0%"],
                                                    "timeout_s": 60})
    done = wait_rollout(registry, r["id"], ("succeeded", "aborted"))
    assert done["state"] == "succeeded" and done["counts"] == {"succeeded": 2}, done
    return r["id"]


def serving_version(conn, device):
    from edgekit.demo import SAMPLES

    with np.load(SAMPLES / "validation.npz") as data:
        x = data["input"][:1]
    return infer_remote(conn, FLEET, device, {"input": x}, timeout=15)[1]["version"]


def test_rollout_rollback_on_real_agents_and_replay_refused(registry, agent_factory, make_bundle, broker, keystore):
    v1, v2 = make_bundle("raspberry-pi-4", "1.0.0", release=1), make_bundle("raspberry-pi-4", "2.0.0", release=2)
    for b, v in ((v1, "1.0.0"), (v2, "2.0.0")):
        upload(b, registry.url)  # operator token from EDGEKIT_REGISTRY_TOKEN (the registry fixture)
        api(registry, "POST", f"/api/v1/models/digits-cnn/versions/{v}", {"stage": "released"})
    for dev in DEVICES:
        agent_factory(dev, "raspberry-pi-4")
    conn = MqttConnection(f"test-rb-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port)
    conn.connect()
    captured: queue.Queue = queue.Queue()
    conn.subscribe([(topics.command(FLEET, "real-1", "rollback"), 1)], lambda t, p, _: captured.put(p))
    watcher = DeviceWatcher(conn, FLEET, list(DEVICES))
    try:
        deadline = time.monotonic() + 20
        while len([d for d in api(registry, "GET", "/api/v1/fleet")["devices"] if d["online"]]) < 2:
            assert time.monotonic() < deadline, "agents did not come online"
            time.sleep(0.1)
        rollout(registry, "1.0.0")
        rid = rollout(registry, "2.0.0")
        assert {serving_version(conn, d) for d in DEVICES} == {"2.0.0"}

        # the problem this fixes: a deploy notice for the older release is refused by the device
        old = make_notice(read_manifest(v1), upload(v1, registry.url), device="real-2", fleet=FLEET,
                          signer=keystore.notice_signer())
        push(conn, FLEET, "real-2", old)
        ev = watcher.wait_terminal({"real-2": old["deployment_id"]}, 30)["real-2"]
        assert ev["state"] == "failed" and ev["error"]["code"] == "rollback", ev

        res = CliRunner().invoke(cli, ["rollout", "rollback", rid, "--registry", registry.url, "--json"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["state"] == "rolling_back"
        done = wait_rollout(registry, rid, ("rolled_back",))
        assert done["rollback_counts"] == {"done": 2}, done
        for dev in DEVICES:
            events = api(registry, "GET", f"/api/v1/events?device={dev}")["events"]
            states = [(e["state"], e["ok"]) for e in events if e["deployment_id"] == events[-1]["deployment_id"]]
            assert ("rolling_back", True) in states and states[-1] == ("rolled_back", True), states
            assert serving_version(conn, dev) == "1.0.0"
        wait_fleet_version(registry, "1.0.0")

        # a captured rollback command replayed to the device is refused, with its own code
        payload = captured.get(timeout=5)
        cmd = json.loads(payload)
        assert cmd["schema"] == "edgekit.rollback/1" and cmd["signatures"]
        first = watcher.wait_terminal({"real-1": cmd["deployment_id"]}, 15)["real-1"]  # its original answer
        assert first["state"] == "rolled_back" and first["ok"] is True
        conn.publish(topics.command(FLEET, "real-1", "rollback"), payload, qos=1)
        ev = watcher.wait_terminal({"real-1": cmd["deployment_id"]}, 15)["real-1"]
        assert ev["state"] == "rejected" and ev["error"]["code"] == "notice_replayed", ev

        # an unsigned rollback command and one asking for a slot the device does not have are refused
        bare = make_rollback("digits-cnn", "2.0.0")
        conn.publish(topics.command(FLEET, "real-1", "rollback"), json.dumps(bare).encode(), qos=1)
        ev = watcher.wait_terminal({"real-1": bare["deployment_id"]}, 15)["real-1"]
        assert ev["state"] == "rejected" and ev["error"]["code"] == "notice_unsigned", ev
        wrong = make_rollback("digits-cnn", "0.5.0", device="real-1", fleet=FLEET, signer=keystore.notice_signer())
        conn.publish(topics.command(FLEET, "real-1", "rollback"), json.dumps(wrong).encode(), qos=1)
        ev = watcher.wait_terminal({"real-1": wrong["deployment_id"]}, 30)["real-1"]
        assert ev["state"] == "failed" and ev["error"]["code"] == "rollback_unavailable", ev
        assert serving_version(conn, "real-1") == "1.0.0"
    finally:
        conn.close()


def test_rollback_two_releases_back_resigns_and_real_agents_install_it(registry, agent_factory, make_bundle, broker,
                                                                     keystore):
    """Beyond the previous slot (ADR 0011): after 1.0.0 → 2.0.0 → 3.0.0 a device's slots hold 3.0.0 and
    2.0.0. Going back to 1.0.0 is a new rollout of 1.0.0, signed again with a release counter above 3
    (``--keys``); the real agents download, verify, health-check and commit it."""
    for i, v in enumerate(("1.0.0", "2.0.0", "3.0.0"), 1):
        upload(make_bundle("raspberry-pi-4", v, release=i), registry.url)
        api(registry, "POST", f"/api/v1/models/digits-cnn/versions/{v}", {"stage": "released"})
    for dev in DEVICES:
        agent_factory(dev, "raspberry-pi-4")
    conn = MqttConnection(f"test-rb2-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port)
    conn.connect()
    try:
        deadline = time.monotonic() + 20
        while len([d for d in api(registry, "GET", "/api/v1/fleet")["devices"] if d["online"]]) < 2:
            assert time.monotonic() < deadline, "agents did not come online"
            time.sleep(0.1)
        for v in ("1.0.0", "2.0.0"):
            rollout(registry, v)
        rid = rollout(registry, "3.0.0")
        runner = CliRunner()
        args = ["rollout", "rollback", rid, "--to", "digits-cnn@1.0.0", "--registry", registry.url, "--timeout", "60"]
        res = runner.invoke(cli, args)
        assert res.exit_code == 5 and "release 1 is not above release 3" in res.output, res.output
        res = runner.invoke(cli, args + ["--keys", str(keystore.directory), "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert out["resigned"][0]["release"] > 3 and out["rollback_of"] == rid
        done = wait_rollout(registry, out["id"], ("succeeded", "aborted"))
        assert done["state"] == "succeeded" and done["counts"] == {"succeeded": 2}, done
        for dev in DEVICES:
            assert serving_version(conn, dev) == "1.0.0"
            events = api(registry, "GET", f"/api/v1/events?device={dev}")["events"]
            dep = events[-1]["deployment_id"]
            states = [e["state"] for e in events if e["deployment_id"] == dep]
            assert states[:2] == ["checking_release", "downloading"] and "health_check" in states and states[-1] == "committed", states
        wait_fleet_version(registry, "1.0.0")
    finally:
        conn.close()


def wait_fleet_version(registry, version, timeout=15.0):
    """The registry learns what a device serves from its next telemetry/status, not from the event."""
    deadline = time.monotonic() + timeout
    while True:
        devs = {d["id"]: d for d in api(registry, "GET", "/api/v1/fleet")["devices"]}
        seen = {devs[d]["version"] for d in DEVICES}
        if seen == {version}:
            return
        assert time.monotonic() < deadline, f"registry still shows {seen}"
        time.sleep(0.1)
