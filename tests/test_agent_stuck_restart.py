"""A TFLite health check that cannot be cancelled: the install is rolled back at the deadline, the
event says why, and the agent re-executes itself so the stuck inference thread goes away (ADR 0012).

Real parts: the sample model converted to TFLite (no TensorFlow), signed bundles, mosquitto, the
registry, an ``edgekit-agent run`` subprocess. The "hanging" model is a real TFLite flatbuffer
written with the project's own writer: the 8x8 input is tiled to 2048x2048 and multiplied by
itself 2000 times (about 17 GFLOP per BATCH_MATMUL: many minutes per ``invoke()`` on one core),
with the digits model's input and output signature, so it loads instantly and then never returns.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from edgekit.demo import SAMPLES, Proc, provision_device

from test_deploy_e2e import FLEET, Operator

pytestmark = pytest.mark.integration

MATMULS = 2000


def endless_tflite(path, matmuls: int = MATMULS) -> None:
    """input [1,8,8,1] float32 -> [2048,2048] (CONCATENATION doublings) -> BATCH_MATMUL x matmuls -> logits [1,10]."""
    from converters.tflite.schema_writer import Model, serialize

    m = Model()
    t = m.add_tensor("input", (1, 8, 8, 1))
    m.inputs = [t]
    flat = m.add_tensor("flat", (1, 64))
    m.add_op("RESHAPE", [t, m.add_const("flat_shape", np.array([1, 64], np.int32))], [flat])
    t, rows, cols = flat, 1, 64
    while cols < 2048:
        cols *= 2
        nt = m.add_tensor(f"cols{cols}", (1, cols))
        m.add_op("CONCATENATION", [t, t], [nt], axis=1)
        t = nt
    while rows < 2048:
        rows *= 2
        nt = m.add_tensor(f"rows{rows}", (rows, 2048))
        m.add_op("CONCATENATION", [t, t], [nt], axis=0)
        t = nt
    for i in range(matmuls):
        nt = m.add_tensor(f"mm{i}", (2048, 2048))
        m.add_op("BATCH_MATMUL", [t, t], [nt])
        t = nt
    out = m.add_tensor("logits", (1, 10))
    m.add_op("STRIDED_SLICE", [t, m.add_const("begin", np.array([0, 0], np.int32)),
                               m.add_const("end", np.array([1, 10], np.int32)),
                               m.add_const("strides", np.array([1, 1], np.int32))], [out])
    m.outputs = [out]
    path.write_bytes(serialize(m))


@pytest.fixture(scope="module")
def tflite_bundles(tmp_path_factory, datasets, keystore):
    from converters.tflite_pipeline import convert_tflite
    from edgekit.core.profiles import load_profile
    from edgekit.release import release_artifact

    cal, val = datasets
    out = tmp_path_factory.mktemp("tflite-stuck")
    convert_tflite(SAMPLES / "digits_cnn.onnx", load_profile("pixel-watch-2"), out, precision="fp32",
                   calibration=cal, validation=val)
    good = release_artifact(out / "pixel-watch-2", keystore, out / "good", name="digits-tflite", version="1.0.0")
    shutil.copytree(out / "pixel-watch-2", out / "endless")
    endless_tflite(out / "endless" / "model.tflite")
    bad = release_artifact(out / "endless", keystore, out / "bad", name="digits-tflite", version="2.0.0")
    return good, bad


def _busy_cpu_s(pid: int, window_s: float = 1.0) -> float:
    proc = psutil.Process(pid)
    t0 = sum(proc.cpu_times()[:2])
    time.sleep(window_s)
    return sum(proc.cpu_times()[:2]) - t0


def test_stuck_tflite_health_check_rolls_back_and_the_agent_restarts_clean(tmp_path, broker, registry, keystore,
                                                                          tflite_bundles):
    from edgekit.deploy import infer_remote

    good, bad = tflite_bundles
    home = tmp_path / "devices" / "dev-1"
    cfg = provision_device(home, "dev-1", "pixel-watch-2", broker.port, keystore.root_path, fleet=FLEET,
                           telemetry_s=30, threads=1)
    cfg.write_text(cfg.read_text() + "\n[install]\nhealth_timeout_s = 3\n")
    flashed = subprocess.run([sys.executable, "-m", "agent.cli", "install", str(good), "--config", str(cfg)],
                             capture_output=True, text=True, timeout=120)
    assert flashed.returncode == 0, flashed.stderr
    agent = Proc("dev-1", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
    op = Operator(broker, registry, ["dev-1"], keystore)
    try:
        first = agent.ready()
        assert first["version"] == "1.0.0"
        pid = agent.proc.pid
        threads_before = psutil.Process(pid).num_threads()

        ev = op.deploy(bad, timeout=60)
        assert ev["state"] == "failed" and ev["error"]["code"] == "health_timeout", ev
        assert "inference hung" in ev["error"]["message"] and "worker abandoned" in ev["error"]["message"]
        assert ev["error"]["details"] == {"timeout_s": 3, "cancelled": False, "abandoned": True}
        assert ev["error"]["hint"]

        restarting = None  # the next event says why the agent restarts itself
        while restarting is None:
            _, nxt = op.watcher.q.get(timeout=20)
            restarting = nxt if nxt["state"] == "restarting" else None
        assert "could not be stopped" in restarting["details"]["reason"]
        assert restarting["deployment_id"] == ev["deployment_id"]

        second = agent.ready(timeout=60)  # the same process, re-executed: a new session, the old model
        assert agent.proc.pid == pid and agent.proc.poll() is None
        assert second["session"] == first["session"] + 1 and second["version"] == "1.0.0"

        with np.load(SAMPLES / "validation.npz") as data:
            x, labels = data["input"][:4].transpose(0, 2, 3, 1).copy(), data["label"][:4]
        outputs, resp = infer_remote(op.conn, FLEET, "dev-1", {"input": x}, timeout=10)
        assert resp["version"] == "1.0.0" and outputs["logits"].shape == (4, 10)
        assert (np.argmax(outputs["logits"], axis=1) == labels).mean() >= 0.75

        # the stuck invoke() is gone: no extra thread, and the process is idle again (a 2048^3
        # BATCH_MATMUL loop would keep one core busy for the whole window)
        assert psutil.Process(pid).num_threads() <= threads_before + 1
        assert _busy_cpu_s(pid) < 0.5
    finally:
        op.conn.close()
        agent.stop()


def test_an_embedded_agent_reports_a_stuck_thread_but_never_replaces_its_host(tmp_path, keystore):
    """Agent objects used in-process (tools, tests) must not exec: they emit 'restarting' only.
    (The stuck thread here is a plain blocked thread: the real one is proven above.)"""
    import threading

    from agent.config import AgentConfig
    from agent.service import Agent

    agent = Agent(AgentConfig(device_id="emb-1", profile="pixel-watch-2", data_dir=tmp_path / "data",
                              trusted_root=keystore.root_path))
    events: list = []
    agent._emit = lambda s, ok, d, e, dep=None: events.append((s, ok, d, dep))  # noqa: E731
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, name="health-check", daemon=True)
    try:
        agent._restart_if_stuck("d0")
        assert events == []                                  # nothing stuck: nothing to do
        stuck.start()
        agent.installer.stuck_worker = stuck
        agent._restart_if_stuck("d1")                        # returns: restart_on_stuck is off
        assert [(s, ok, dep) for s, ok, _, dep in events] == [("restarting", True, "d1")]
        assert events[0][2]["thread"] == "health-check"
    finally:
        release.set()
        agent.stop()
