"""Registry + rollouts end to end on real parts: mosquitto, real signed bundles in the model
registry, the registry service with its rollout engine, a simulated fleet speaking the MQTT
contract. Every test runs against SQLite and a private PostgreSQL (the ``db_url`` fixture)."""

from __future__ import annotations

import re
import time

import pytest
import requests

from edgekit.fleetsim import FleetSim, Knobs
from edgekit.registry.service import Registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def bundles(make_bundle):
    """Signed digits-cnn bundles for raspberry-pi-4: 1.0.0 (release 1) and 2.0.0 (release 2)."""
    return {v: make_bundle("raspberry-pi-4", v, release=i) for i, v in enumerate(("1.0.0", "2.0.0"), 1)}


class Reg:
    """A registry service in this process plus helpers for its HTTP API."""

    def __init__(self, db_url, store, port, client_id="edgekit-registry") -> None:
        self.args = (db_url, store, "127.0.0.1", port)
        self.client_id = client_id
        self.svc = None
        self.start()

    def start(self) -> None:
        self.svc = Registry(*self.args, client_id=self.client_id, tick_s=0.05).start()
        self.url = self.svc.url
        if not getattr(self, "auth", None):  # the token lives in the DB: it survives restarts
            self.auth = {"Authorization": f"Bearer {self.svc.create_token('operator', 'tests')}"}

    def stop(self) -> None:
        if self.svc:
            self.svc.stop()
            self.svc = None

    def get(self, path, **params):
        r = requests.get(self.url + path, params=params, timeout=10, headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path, body=None, expect=(200, 201)):
        r = requests.post(self.url + path, json=body or {}, timeout=10, headers=self.auth)
        assert r.status_code in ((expect,) if isinstance(expect, int) else expect), r.text
        return r.json()

    def upload(self, path):
        with open(path, "rb") as fh:
            r = requests.post(self.url + "/api/v1/artifacts", params={"name": path.name}, data=fh.read(), timeout=30,
                              headers=self.auth)
        assert r.status_code == 201, r.text
        return r.json()

    def wait(self, rid, states, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.get(f"/api/v1/rollouts/{rid}")
            if r["state"] in states:
                return r
            time.sleep(0.05)
        raise AssertionError(f"rollout {rid} still {r['state']} after {timeout}s: {r['counts']}")

    def wait_devices(self, n, pred=lambda d: True, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            devs = self.get("/api/v1/fleet", selector="all")["devices"]
            if sum(bool(pred(d)) for d in devs) >= n:
                return devs
            time.sleep(0.05)
        raise AssertionError(f"fewer than {n} devices matched after {timeout}s")


@pytest.fixture
def reg(db_url, tmp_path, broker, bundles):
    r = Reg(db_url, tmp_path / "store", broker.port)
    for b in bundles.values():
        r.upload(b)
    r.post("/api/v1/models/digits-cnn/versions/1.0.0", {"stage": "released"})
    r.post("/api/v1/models/digits-cnn/versions/2.0.0", {"stage": "released"})
    yield r
    r.stop()


@pytest.fixture
def fleet(broker):
    sims = []

    def make(n=10, **kw):
        kw.setdefault("telemetry_s", 0.2)
        sim = FleetSim("127.0.0.1", broker.port, n, **kw).start()
        sims.append(sim)
        return sim

    yield make
    for s in sims:
        s.stop()


def deploy(reg, **kw):
    body = {"model": "digits-cnn", "version": "2.0.0", "selector": "all", "waves": "10%,50%,100%",
            "abort_if": ["failure_rate>20%", "parity_failures>0"], "timeout_s": 10, **kw}
    return reg.post("/api/v1/rollouts", body, expect=201)


def test_model_registry_records_versions_artifacts_lineage_and_stages(reg, bundles):
    models = reg.get("/api/v1/models")["models"]
    assert models == [{"model": "digits-cnn", "released": "2.0.0",
                       "versions": [{"version": "1.0.0", "stage": "released"}, {"version": "2.0.0", "stage": "released"}]}]
    shown = reg.get("/api/v1/models/digits-cnn")
    v2 = shown["versions"][1]
    art = v2["artifacts"][0]
    assert art["profile"] == "raspberry-pi-4" and art["release"] == 2 and len(art["sha256"]) == 64
    assert len(v2["lineage"]["source_sha256"]) == 64  # source model → artifact lineage
    assert art["conversion_report"]["parity"], "the conversion/parity summary travels with the artifact"
    # stages: released → deprecated is allowed, deprecated → draft is not; deprecated versions cannot roll out
    assert reg.post("/api/v1/models/digits-cnn/versions/2.0.0", {"stage": "deprecated"})["stage"] == "deprecated"
    err = reg.post("/api/v1/models/digits-cnn/versions/2.0.0", {"stage": "draft"}, expect=400)["error"]
    assert err["code"] == "usage" and "cannot move" in err["message"]
    assert reg.post("/api/v1/rollouts", {"model": "digits-cnn", "version": "2.0.0", "selector": "all"},
                    expect=400)["error"]["message"].startswith("digits-cnn@2.0.0 is deprecated")
    assert requests.get(reg.url + "/api/v1/models/nope").status_code == 404


def test_inventory_tags_groups_and_selectors(reg, fleet):
    fleet(4, prefix="kit")
    fleet(2, prefix="lab", profile="x86-64-gateway")
    reg.wait_devices(6)
    reg.post("/api/v1/tags", {"devices": ["kit-0000", "kit-0001"], "add": ["kitchen"]})
    reg.post("/api/v1/groups/canary", {"add": ["kit-0001", "lab-0000"]})
    ids = lambda sel: [d["id"] for d in reg.get("/api/v1/fleet", selector=sel)["devices"]]  # noqa: E731
    assert ids("tag=kitchen") == ["kit-0000", "kit-0001"]
    assert ids("group:canary") == ["kit-0001", "lab-0000"]
    assert ids("profile=raspberry-pi-4,tag=kitchen,group:canary") == ["kit-0001"]
    assert ids("profile=x86-64-gateway") == ["lab-0000", "lab-0001"]
    dev = reg.get("/api/v1/fleet", selector="id=kit-0001")["devices"][0]
    assert dev["online"] and dev["agent_version"] == "sim" and dev["version"] == "1.0.0"
    assert dev["tags"] == ["kitchen"] and dev["groups"] == ["canary"]
    assert requests.get(reg.url + "/api/v1/fleet", params={"selector": "colour=red"}).status_code == 400
    assert reg.post("/api/v1/tags", {"devices": ["ghost"], "add": ["x"]}, expect=404)["error"]["message"] \
        .startswith("unknown device")
    # no artifact of 2.0.0 for the gateway profile: refused before anything is sent
    err = reg.post("/api/v1/rollouts", {"model": "digits-cnn", "version": "2.0.0", "selector": "group:canary"},
                   expect=400)["error"]
    assert "x86-64-gateway" in err["message"]


def test_rollout_succeeds_wave_by_wave(reg, fleet):
    sim = fleet(20)
    reg.wait_devices(20)
    r = deploy(reg)
    assert r["wave_sizes"] == [2, 10, 20] and r["state"] == "running"
    done = reg.wait(r["id"], ("succeeded", "aborted"))
    assert done["state"] == "succeeded", done
    assert done["counts"] == {"succeeded": 20}
    assert set(sim.versions().values()) == {"digits-cnn@2.0.0"}
    # waves were respected: every notice of wave N+1 was sent after every device of wave N had finished
    targets = reg.get(f"/api/v1/rollouts/{r['id']}")["targets"]
    assert sorted(t["wave"] for t in targets) == [1] * 2 + [2] * 8 + [3] * 10
    assert sum(len(d.notices) for d in sim.devices.values()) == 20  # exactly one notice per device
    reg.wait_devices(20, lambda d: d["version"] == "2.0.0")


def test_rollout_aborts_on_install_failure_rate(reg, fleet):
    sim = fleet(20, knobs={"2.0.0": Knobs(failure_rate=1.0)})
    reg.wait_devices(20)
    r = deploy(reg)
    done = reg.wait(r["id"], ("succeeded", "aborted"))
    assert done["state"] == "aborted" and "failure_rate>20% tripped" in done["reason"]
    assert done["counts"] == {"failed": 2, "pending": 18}  # stopped after the first wave
    assert sum(len(d.notices) for d in sim.devices.values()) == 2
    errs = {t["error_code"] for t in reg.get(f"/api/v1/rollouts/{r['id']}")["targets"] if t["state"] == "failed"}
    assert errs == {"install"}


def test_rollout_aborts_on_a_parity_failure(reg, fleet):
    fleet(20, knobs={"2.0.0": Knobs(parity_failure_rate=1.0)})
    reg.wait_devices(20)
    r = deploy(reg, abort_if=["parity_failures>0"])
    done = reg.wait(r["id"], ("succeeded", "aborted"))
    assert done["state"] == "aborted" and done["reason"].startswith("parity_failures>0 tripped")
    assert done["counts"]["failed"] >= 1 and done["counts"]["pending"] == 18


def test_rollout_aborts_on_latency_regression_vs_previous_version(reg, fleet):
    fleet(10, knobs={"2.0.0": Knobs(latency_ms=12.0)}, default=Knobs(latency_ms=5.0))
    reg.wait_devices(10, lambda d: (d.get("inference") or {}).get("p95_ms"))  # baseline telemetry is in
    r = deploy(reg, waves="20%,100%", abort_if=["p95_latency>1.2x"])
    done = reg.wait(r["id"], ("succeeded", "aborted"))
    assert done["state"] == "aborted" and done["reason"].startswith("p95_latency>1.2x tripped"), done
    ratio = float(re.search(r"p95_latency = ([0-9.]+)x", done["reason"]).group(1))
    assert 2.2 < ratio < 2.6  # 12 ms vs 5 ms (±2 % simulated jitter)


def test_rollout_passes_when_latency_stays_within_budget(reg, fleet):
    fleet(10, knobs={"2.0.0": Knobs(latency_ms=5.5, drift_score=0.1)}, default=Knobs(latency_ms=5.0))
    reg.wait_devices(10, lambda d: (d.get("inference") or {}).get("p95_ms"))
    r = deploy(reg, waves="20%,100%", abort_if=["p95_latency>1.2x", "drift>0.3"])
    assert reg.wait(r["id"], ("succeeded", "aborted"))["state"] == "succeeded"


def test_rollout_aborts_on_reported_drift(reg, fleet):
    fleet(10, knobs={"2.0.0": Knobs(drift_score=0.6)})
    reg.wait_devices(10)
    r = deploy(reg, waves="20%,100%", abort_if=["drift>0.3"])
    done = reg.wait(r["id"], ("succeeded", "aborted"))
    assert done["state"] == "aborted" and done["reason"] == "drift>0.3 tripped: drift = 0.6", done
    # the rule trips on the first drift report: wave 1's other device may still be in flight ("sent")
    counts = done["counts"]
    assert counts["pending"] == 8 and counts.get("succeeded", 0) >= 1, counts
    assert counts.get("succeeded", 0) + counts.get("sent", 0) == 2 and set(counts) <= {"succeeded", "sent", "pending"}


def test_silent_devices_time_out_and_count_as_failed(reg, fleet):
    fleet(10, knobs={"2.0.0": Knobs(silent_rate=1.0)})
    reg.wait_devices(10)
    t0 = time.monotonic()
    r = deploy(reg, waves="20%,100%", abort_if=["failure_rate>50%"], timeout_s=1.0)
    done = reg.wait(r["id"], ("succeeded", "aborted"))
    assert time.monotonic() - t0 >= 1.0
    assert done["state"] == "aborted" and done["counts"] == {"timed_out": 2, "pending": 8}
    assert {t["error_code"] for t in reg.get(f"/api/v1/rollouts/{r['id']}")["targets"]} == {"timeout", None}


def test_registry_restart_mid_rollout_resumes(reg, fleet):
    sim = fleet(20, step_s=0.05)
    reg.wait_devices(20)
    r = deploy(reg, waves="10%,100%", rate_per_min=600)  # 10 notices/s: the restart lands mid-wave
    deadline = time.monotonic() + 20
    while reg.get(f"/api/v1/rollouts/{r['id']}")["counts"].get("succeeded", 0) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    reg.stop()
    time.sleep(0.5)  # devices keep reporting; the broker keeps them for the registry's persistent session
    reg.start()
    done = reg.wait(r["id"], ("succeeded", "aborted"), timeout=60)
    assert done["state"] == "succeeded" and done["counts"] == {"succeeded": 20}
    assert [len(d.notices) for d in sim.devices.values()] == [1] * 20  # nothing sent twice after the restart


def test_pause_resume_cancel_and_rollback(reg, fleet):
    sim = fleet(10, step_s=0.02)
    reg.wait_devices(10)
    r = deploy(reg, waves="100%", rate_per_min=120)  # 2/s
    time.sleep(0.3)
    paused = reg.post(f"/api/v1/rollouts/{r['id']}/pause")
    assert paused["state"] == "paused"
    time.sleep(1.0)
    sent = reg.get(f"/api/v1/rollouts/{r['id']}")["counts"]
    assert sent.get("pending", 0) >= 5, sent  # no new notice while paused
    assert reg.post(f"/api/v1/rollouts/{r['id']}/pause", expect=400)["error"]["message"].startswith("cannot pause")
    reg.post(f"/api/v1/rollouts/{r['id']}/resume")
    reg.wait(r["id"], ("running",))
    time.sleep(0.3)
    cancelled = reg.post(f"/api/v1/rollouts/{r['id']}/cancel")
    assert cancelled["state"] == "cancelled"
    time.sleep(0.5)
    updated = [i for i, v in sim.versions().items() if v == "digits-cnn@2.0.0"]
    assert 0 < len(updated) < 10
    rb = reg.post(f"/api/v1/rollouts/{r['id']}/rollback")
    assert rb["state"] == "rolling_back"
    done = reg.wait(r["id"], ("rolled_back",), timeout=30)
    assert done["rollback_counts"].get("done") == len(updated)
    assert set(sim.versions().values()) == {"digits-cnn@1.0.0"}
    rollback_notices = [d.notices[-1] for i, d in sim.devices.items() if i in updated]
    assert {(n["schema"], n["version"], n["from_version"]) for n in rollback_notices} == {
        ("edgekit.rollback/1", "1.0.0", "2.0.0")}  # a cmd/rollback, not a deploy notice of the old release


def test_bad_rollout_requests_are_refused_with_specific_errors(reg, fleet):
    fleet(2)
    reg.wait_devices(2)
    assert reg.post("/api/v1/rollouts", {"model": "digits-cnn", "version": "9.9.9", "selector": "all"},
                    expect=404)["error"]["message"].startswith("unknown model version")
    cases = [({"selector": "tag=none"}, "matches no device"),
             ({"waves": "50%,10%"}, "bad --waves"), ({"abort_if": ["errors>3"]}, "bad --abort-if"),
             ({"selector": "bogus"}, "bad selector term"), ({"timeout_s": "soon"}, "bad request body"),
             ({"rate_per_min": -5}, "rate_per_min must be a positive number"), ({"rate": "fast"}, "bad --rate")]
    for extra, text in cases:
        body = {"model": "digits-cnn", "version": "2.0.0", "selector": "all", **extra}
        err = reg.post("/api/v1/rollouts", body, expect=400)["error"]
        assert text in err["message"] and err["code"] == "usage" and err.get("hint"), (extra, err)
    assert reg.get("/api/v1/rollouts")["rollouts"] == []  # nothing half-created


def test_rollout_to_real_agents_installs_the_signed_release(registry, agent_factory, make_bundle):
    """The rollout engine with real edgekit-agent processes: they download the bundle from the
    registry's artifact store, verify the TUF signatures and golden vectors, and commit."""
    reg = Reg.__new__(Reg)
    reg.url, reg.svc, reg.auth = registry.url, registry, {"Authorization": f"Bearer {registry.token}"}
    reg.upload(make_bundle("raspberry-pi-4", "3.0.0", release=3))
    reg.post("/api/v1/models/digits-cnn/versions/3.0.0", {"stage": "released"})
    for dev in ("real-1", "real-2"):
        agent_factory(dev, "raspberry-pi-4")
    reg.wait_devices(2, lambda d: d["online"])
    r = reg.post("/api/v1/rollouts", {"model": "digits-cnn", "version": "3.0.0", "selector": "profile=raspberry-pi-4",
                                      "waves": "50%,100%", "abort_if": ["failure_rate>0%", "parity_failures>0"],
                                      "timeout_s": 60}, expect=201)
    done = reg.wait(r["id"], ("succeeded", "aborted"), timeout=90)
    assert done["state"] == "succeeded" and done["counts"] == {"succeeded": 2}, done
    devs = reg.wait_devices(2, lambda d: d["version"] == "3.0.0")
    assert {d["model"] for d in devs} == {"digits-cnn"}
    states = [e["state"] for e in reg.get("/api/v1/events", device="real-1")["events"]]
    assert states[-1] == "committed" and "health_check" in states
