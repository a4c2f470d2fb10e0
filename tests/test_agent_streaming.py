"""Streaming mode on real parts: a sensor publishes samples to ``.../sensors/cam0`` on mosquitto, a
flashed ``edgekit-agent run --stream cam0`` subprocess infers on each and publishes
``edgekit.prediction/1`` messages; answers checked against the golden vectors, malformed samples
answered with a specific error, other streams ignored."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from edgekit.core import messages, parity, tensors, topics
from edgekit.core.mqtt import MqttConnection
from edgekit.demo import Proc, provision_device

FLEET = "demo"


def test_sensor_stream_in_predictions_out(tmp_path, broker, keystore, make_bundle):
    bundle = make_bundle(version="4.0.0", release=400)
    home = tmp_path / "dev"
    cfg = provision_device(home, "dev-stream", "raspberry-pi-4", broker.port, keystore.root_path, telemetry_s=30)
    assert subprocess.run([sys.executable, "-m", "agent.cli", "install", str(bundle), "--config", str(cfg)],
                          capture_output=True, timeout=120).returncode == 0
    with tarfile.open(bundle) as tar:
        gpath = Path(tempfile.mkdtemp()) / "golden.npz"
        gpath.write_bytes(tar.extractfile("golden.npz").read())
    ins, outs = parity.load_golden(gpath)

    got: list[dict] = []
    conn = MqttConnection(f"sensor-{uuid.uuid4().hex[:6]}", "127.0.0.1", broker.port)
    conn.connect()
    conn.subscribe([(topics.prediction(FLEET, "dev-stream", "cam0"), 1),
                    (topics.prediction(FLEET, "dev-stream", "cam1"), 1)],
                   lambda t, p, _: got.append({"topic": t, **messages.loads(p, messages.PREDICTION)}))
    agent = Proc("dev-stream", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--stream", "cam0"],
                 home / "agent.log")
    try:
        assert agent.ready()["streams"] == ["cam0"]
        n = len(next(iter(ins.values())))
        for i in range(n):
            msg = messages.build(messages.SENSOR, seq=i, inputs={k: tensors.encode(v[i:i + 1]) for k, v in ins.items()})
            conn.publish(topics.sensor(FLEET, "dev-stream", "cam0"), messages.dumps(msg))
        conn.publish(topics.sensor(FLEET, "dev-stream", "cam0"), b'{"schema": "edgekit.sensor/1", "ts": 1}')
        conn.publish(topics.sensor(FLEET, "dev-stream", "cam1"), messages.dumps(msg))  # not subscribed
        deadline = time.monotonic() + 20
        while len(got) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a stray cam1 answer would arrive by now
    finally:
        agent.stop()
        conn.close()
    good = sorted((g for g in got if g["ok"]), key=lambda g: g["seq"])
    assert [g["seq"] for g in good] == list(range(n))
    for g in good:
        assert g["topic"].endswith("/predictions/cam0") and g["model"] == "digits-cnn" and g["version"] == "4.0.0"
        y = tensors.decode(g["outputs"]["logits"])
        assert np.allclose(y, outs["logits"][g["seq"]:g["seq"] + 1], atol=1e-4) and g["latency_ms"] > 0
    bad = [g for g in got if not g["ok"]]
    assert len(bad) == 1 and bad[0]["error"]["code"] == "malformed_message" and "inputs" in bad[0]["error"]["message"]
    assert not [g for g in got if g["topic"].endswith("/cam1")]


def test_bad_stream_name_is_refused(tmp_path, keystore):
    cfg = provision_device(tmp_path / "dev", "dev-x", "raspberry-pi-4", 1883, keystore.root_path)
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--stream", "cam/0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid stream name 'cam/0'" in out.stderr
    cfg.write_text(cfg.read_text() + '\n[streaming]\nstreams = ["ok", "#"]\n')
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 3 and "streaming.streams" in out.stderr
