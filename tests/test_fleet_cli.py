"""``edgekit deploy / rollout / models / fleet`` as a user types them, against a live registry,
a real broker and a simulated fleet; plus the pure rollout-plan parsing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.core.errors import UsageError
from edgekit.fleetsim import FleetSim
from edgekit.registry import rules
from edgekit.registry.inventory import parse_selector
from edgekit.registry.service import Registry


@pytest.fixture
def live(tmp_path, broker, make_bundle, keystore, monkeypatch):
    reg = Registry(f"sqlite:///{tmp_path}/r.db", tmp_path / "a", "127.0.0.1", broker.port, tick_s=0.05).start()
    monkeypatch.setenv("EDGEKIT_REGISTRY_TOKEN", reg.create_token("operator", "tests"))
    sim = FleetSim("127.0.0.1", broker.port, 6, telemetry_s=0.2).start()
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, [str(a) for a in args] + ["--registry", reg.url], catch_exceptions=False)

    for v in ("1.0.0", "2.0.0"):
        res = CliRunner().invoke(cli, ["push", str(make_bundle("raspberry-pi-4", v)), "--device", "nobody",
                                       "--timeout", "0.1", "--broker", f"127.0.0.1:{broker.port}", "--keys", str(keystore.directory),
                                       "--registry", reg.url])
        assert res.exit_code == 6  # uploaded (and registered); the notice to a device that does not exist times out
    yield run, sim
    sim.stop()
    reg.stop()


def test_models_stage_then_deploy_wait_and_status(live):
    run, sim = live
    res = run("deploy", "digits-cnn@2.0.0", "--to", "all")
    assert res.exit_code == 2 and "is draft" in res.output and "models stage digits-cnn@2.0.0 released" in res.output
    assert run("models", "stage", "digits-cnn@2.0.0", "released").exit_code == 0
    ls = json.loads(run("models", "ls", "--json").output)
    assert ls[0]["released"] == "2.0.0"
    show = run("models", "show", "digits-cnn")
    assert show.exit_code == 0 and "raspberry-pi-4" in show.output and "source sha256" in show.output
    res = run("deploy", "digits-cnn@2.0.0", "--to", "profile=raspberry-pi-4", "--waves", "20%,100%",
              "--abort-if", "failure_rate>5%", "--abort-if", "parity_failures>0", "--abort-if", "p95_latency>1.5x",
              "--wait", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["state"] == "succeeded" and out["counts"] == {"succeeded": 6}
    status = run("rollout", "status", out["id"], "--devices")
    assert "succeeded=6" in status.output
    assert sum(ln.startswith("sim-") and " succeeded " in ln for ln in status.output.splitlines()) == 6
    listing = json.loads(run("rollout", "status", "--json").output)
    assert [r["id"] for r in listing] == [out["id"]]
    res = run("rollout", "pause", out["id"])
    assert res.exit_code == 2 and "cannot pause" in res.output
    res = run("rollout", "rollback", out["id"], "--json")
    assert res.exit_code == 0 and json.loads(res.output)["state"] == "rolling_back"


def test_fleet_ls_show_tag_group_and_selectors(live):
    run, sim = live
    import time

    deadline = time.monotonic() + 10
    while len(json.loads(run("fleet", "ls", "--json").output)) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert run("fleet", "tag", "sim-0000", "sim-0001", "--add", "kitchen").exit_code == 0
    assert "sim-0002" in run("fleet", "group", "canary", "sim-0002", "sim-0001").output
    ids = lambda sel: [d["id"] for d in json.loads(run("fleet", "ls", "--to", sel, "--json").output)]  # noqa: E731
    assert ids("tag=kitchen") == ["sim-0000", "sim-0001"]
    assert ids("tag=kitchen,group:canary") == ["sim-0001"]
    table = run("fleet", "ls").output
    assert "ONLINE" not in table and "online" in table and "kitchen" in table and "digits-cnn@1.0.0" in table
    show = run("fleet", "show", "sim-0001", "--json")
    d = json.loads(show.output)
    assert d["tags"] == ["kitchen"] and d["groups"] == ["canary"] and d["online"]
    watch = run("fleet", "watch", "--to", "group:canary", "--count", "1", "--json")
    assert [x["id"] for x in json.loads(watch.output)["devices"]] == ["sim-0001", "sim-0002"]
    bad = run("fleet", "ls", "--to", "colour=red")
    assert bad.exit_code == 2 and "bad selector term" in bad.output
    assert run("fleet", "tag", "ghost", "--add", "x").exit_code == 2
    assert run("fleet", "tag", "sim-0000").exit_code == 2  # nothing to do


@pytest.mark.parametrize("args, text", [
    (["deploy", "digits-cnn", "--to", "all"], "expected MODEL@VERSION"),
    (["deploy", "m@1", "--to", "all", "--waves", "10%,5%"], "bad --waves"),
    (["deploy", "m@1", "--to", "all", "--abort-if", "failures>1"], "bad --abort-if"),
    (["deploy", "m@1", "--to", "all", "--rate", "fast"], "bad --rate"),
])
def test_deploy_rejects_bad_plans_before_contacting_the_registry(args, text):
    res = CliRunner().invoke(cli, args + ["--registry", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and text in res.output


def test_cli_without_a_registry_says_how_to_start_one():
    res = CliRunner().invoke(cli, ["rollout", "status", "--registry", "http://127.0.0.1:9"])
    assert res.exit_code == 6 and "registry serve" in res.output


def test_rule_wave_and_rate_parsing():
    assert rules.parse_rule("failure_rate>5%") == {"metric": "failure_rate", "threshold": 5.0, "text": "failure_rate>5%"}
    assert rules.parse_rule("p95_latency > 1.2x")["threshold"] == 1.2
    for bad in ("p95_latency>1.2", "parity_failures>1%", "nope>1", "failure_rate<5%"):
        with pytest.raises(UsageError):
            rules.parse_rule(bad)
    assert rules.parse_waves("1%,10%,50%,100%") == [1, 10, 50, 100]
    assert rules.wave_sizes(1000, [1, 10, 50, 100]) == [10, 100, 500, 1000]
    assert rules.wave_sizes(3, [1, 10, 50, 100]) == [1, 2, 3, 3]  # tiny fleets still move one device per wave
    assert rules.parse_rate("600/min") == 600 and rules.parse_rate("10/s") == 600 and rules.parse_rate(None) is None
    rs = [rules.parse_rule("failure_rate>5%"), rules.parse_rule("parity_failures>0")]
    assert rules.evaluate(rs, {"failure_rate": None, "parity_failures": 0}) is None
    assert rules.evaluate(rs, {"failure_rate": 5.0, "parity_failures": 0}) is None
    assert rules.evaluate(rs, {"failure_rate": 6.0, "parity_failures": 0}).startswith("failure_rate>5% tripped")
    assert rules.evaluate(rs, {"failure_rate": 0.0, "parity_failures": 1}).startswith("parity_failures>0")
    assert parse_selector("profile=raspberry-pi-4,tag=kitchen,group:canary") == [
        ("field", "profile", "raspberry-pi-4"), ("tag", "tag", "kitchen"), ("group", "group", "canary")]
    assert parse_selector("all") == []


def test_every_registry_route_is_described_in_openapi():
    import re

    from edgekit.registry import api_routes
    from edgekit.registry.openapi import OPENAPI

    described = {(m.upper(), re.sub(r"\{[^}]+\}", "*", p)) for p, ops in OPENAPI["paths"].items() for m in ops}
    for method, pattern, _ in api_routes.ROUTES:
        assert (method, re.sub(r"\([^)]+\)", "*", pattern)) in described, (method, pattern)
