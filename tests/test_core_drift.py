"""Drift maths (edgekit.core.drift) on real numbers, and the chain on real parts: convert writes
drift.json, release signs it into the bundle, a running agent sketches what it serves and reports
PSI in telemetry over mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
import uuid

import numpy as np
import pytest

from edgekit.core import drift, topics
from edgekit.core.errors import BundleError


def logits_for(x):
    return np.stack([x.reshape(len(x), -1).mean(axis=1) * k for k in (-1.0, 0.0, 1.0)], axis=1)


@pytest.fixture(scope="module")
def ref():
    x = np.random.default_rng(0).standard_normal((500, 4, 4)).astype(np.float32)
    return drift.reference({"x": x}, {"y": logits_for(x)})


def test_reference_has_deciles_and_class_proportions(ref):
    spec = ref["inputs"]["x"]
    assert len(spec["edges"]) == 9 and np.allclose(spec["ref"], 0.1, atol=0.01)
    assert abs(spec["mean"]) < 0.05 and abs(spec["std"] - 1) < 0.05
    assert ref["outputs"]["y"]["classes"] == 3 and abs(sum(ref["outputs"]["y"]["ref"]) - 1) < 1e-9
    json.dumps(ref)  # JSON-ready as shipped


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift(ref):
    rng = np.random.default_rng(1)
    same, shifted = drift.Sketch(ref), drift.Sketch(ref)
    for _ in range(200):
        x = rng.standard_normal((1, 4, 4)).astype(np.float32)
        same.update({"x": x}, {"y": logits_for(x)})
        x2 = x + 2.0
        shifted.update({"x": x2}, {"y": np.tile([[0.0, 0.0, 9.0]], (1, 1))})
    a, b = same.snapshot(), shifted.snapshot()
    assert a["samples"] == 200 and a["inputs"]["x"]["psi"] < 0.05 and a["outputs"]["y"]["psi"] < 0.1
    assert b["inputs"]["x"]["psi"] > 0.25 and b["outputs"]["y"]["psi"] > 0.25
    assert abs(b["inputs"]["x"]["mean"] - 2.0) < 0.2 and b["outputs"]["y"]["hist"] == [0, 0, 200]
    assert shifted.snapshot()["samples"] == 0  # reset after each snapshot


def test_sketch_caps_values_per_sample_and_ignores_foreign_tensors(ref):
    sk = drift.Sketch(ref, max_values=4)
    sk.update({"x": np.arange(16, dtype=np.float32).reshape(1, 4, 4), "other": np.zeros(3)}, {"z": np.zeros((1, 5))})
    snap = sk.snapshot()
    assert sum(snap["inputs"]["x"]["hist"]) == 4 and snap["inputs"]["x"]["min"] == 0.0
    assert snap["outputs"] == {}
    assert drift.psi([0.5, 0.5], [0, 0]) is None


@pytest.mark.parametrize("bad", [{}, {"schema": "edgekit.drift/9"},
                                 {"schema": drift.SCHEMA, "inputs": {"x": {"edges": [1.0], "ref": [1.0]}},
                                  "outputs": {}},
                                 {"schema": drift.SCHEMA, "inputs": {}, "outputs": {"y": {"classes": 3, "ref": [1]}}}])
def test_malformed_reference_is_refused(bad):
    with pytest.raises(BundleError):
        drift.Sketch(bad)


def test_bundle_ships_a_signed_reference_and_the_agent_reports_psi(tmp_path, broker, keystore, make_bundle):
    from agent.endpoint import LocalClient
    from edgekit.core.mqtt import MqttConnection
    from edgekit.demo import SAMPLES, Proc, provision_device

    bundle = make_bundle(version="5.0.0", release=500)
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        targets = json.loads(tar.extractfile("metadata/targets.json").read())["signed"]["targets"]
        ref = json.loads(tar.extractfile("drift.json").read())
    assert "drift.json" in names and "drift.json" in targets and ref["schema"] == drift.SCHEMA
    home = tmp_path / "dev"
    cfg = provision_device(home, "dev-drift", "raspberry-pi-4", broker.port, keystore.root_path, telemetry_s=0.5)
    cfg.write_text(cfg.read_text().replace("[telemetry]\n", "[telemetry]\ndrift_every = 1\n")
                   + "\n[endpoint]\nport = 0\n")
    assert subprocess.run([sys.executable, "-m", "agent.cli", "install", str(bundle), "--config", str(cfg)],
                          capture_output=True, timeout=120).returncode == 0
    seen: list[dict] = []
    conn = MqttConnection(f"drift-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port)
    conn.connect()
    conn.subscribe([(topics.telemetry("demo", "dev-drift"), 1)], lambda t, p, _: seen.append(json.loads(p)))
    agent = Proc("dev-drift", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
    try:
        client = LocalClient(port=agent.ready()["endpoint_port"])
        with np.load(SAMPLES / "validation.npz") as data:
            x = data["input"].astype(np.float32)

        def psi_after(batch):
            start = len(seen)
            for i in range(len(batch)):
                client.infer({"input": batch[i:i + 1]})
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                hit = [m for m in seen[start:] if m.get("drift", {}).get("samples", 0) >= 10]
                if hit:
                    return hit[0]["drift"]
                time.sleep(0.05)
            raise AssertionError("no telemetry with a drift sketch")
        def wait_idle():  # a snapshot with no inference: the next one holds only the next phase
            start = len(seen)
            deadline = time.monotonic() + 15
            while not any(m.get("drift", {}).get("samples", 1) == 0 for m in seen[start:]):
                assert time.monotonic() < deadline, "no idle telemetry"
                time.sleep(0.05)
        wait_idle()
        calm = psi_after(x[:60])
        wait_idle()
        drifted = psi_after(x[:60] * 0.0 + x.max() * 2)  # a stuck, saturated sensor
        client.close()
    finally:
        agent.stop()
        conn.close()
    assert calm["inputs"]["input"]["psi"] < 0.25, calm
    assert drifted["inputs"]["input"]["psi"] > 1.0 and drifted["inputs"]["input"]["std"] == 0.0, drifted
    assert "logits" in drifted["outputs"]
