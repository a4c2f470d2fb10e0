"""A TFLite artifact end to end on real parts: convert (no TensorFlow) -> release (signed) -> real
mosquitto + registry -> an agent with a TFLite profile installs it after its golden-vector health
check and serves inference in the artifact's NHWC layout, batches included."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.core.errors import EdgekitError
from edgekit.demo import SAMPLES

from test_deploy_e2e import FLEET, Operator  # noqa: F401  (same operator tooling as the ONNX e2e)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tflite_bundle(tmp_path_factory, datasets, keystore):
    from converters.tflite_pipeline import convert_tflite
    from edgekit.core.profiles import load_profile
    from edgekit.release import release_artifact

    cal, val = datasets
    out = tmp_path_factory.mktemp("tflite-e2e")
    report = convert_tflite(SAMPLES / "digits_cnn.onnx", load_profile("pixel-watch-2"), out, precision="auto",
                            calibration=cal, validation=val)
    bundle = release_artifact(out / "pixel-watch-2", keystore, out / "bundles", name="digits-tflite",
                              version="1.0.0")
    return bundle, report


def test_tflite_bundle_installs_and_serves_on_a_watch(broker, registry, agent_factory, tflite_bundle, keystore):
    from edgekit.deploy import infer_remote

    bundle, report = tflite_bundle
    agent_factory("dev-1", "pixel-watch-2")
    op = Operator(broker, registry, ["dev-1"], keystore)
    try:
        ev = op.deploy(bundle)
        assert ev["state"] == "committed", ev
        health = ev["details"]["health"]
        assert health["failures"] == [] and health["golden"] == 8
        assert health["metrics"]["logits"]["cosine"] > 0.999
        with np.load(SAMPLES / "validation.npz") as data:
            x, labels = data["input"][:5].transpose(0, 2, 3, 1).copy(), data["label"][:5]
        outputs, resp = infer_remote(op.conn, FLEET, "dev-1", {"input": x}, timeout=10)
        assert resp["version"] == "1.0.0" and outputs["logits"].shape == (5, 10)   # batch served row by row
        assert (np.argmax(outputs["logits"], axis=1) == labels).mean() >= 0.8
        with pytest.raises(EdgekitError, match=r"has shape \[1, 1, 8, 8\]; the model takes \[1, 8, 8, 1\]"):
            infer_remote(op.conn, FLEET, "dev-1", {"input": x[:1].transpose(0, 3, 1, 2).copy()}, timeout=10)
    finally:
        op.conn.close()


def test_tflite_bundle_ships_a_drift_reference_and_the_agent_sketches_it(tflite_bundle, keystore, tmp_path):
    """The agent's own infer path (in process) on the TFLite engine: calm inputs vs a stuck sensor."""
    import json
    import tarfile

    from agent.config import load_config
    from agent.installer import InstallRequest
    from agent.service import Agent
    from edgekit.demo import provision_device

    bundle, _ = tflite_bundle
    with tarfile.open(bundle) as tar:
        targets = json.loads(tar.extractfile("metadata/targets.json").read())["signed"]["targets"]
        ref = json.loads(tar.extractfile("drift.json").read())
    assert "drift.json" in targets and list(ref["inputs"]) == ["input"] and ref["outputs"]["logits"]["classes"] == 10
    cfg = provision_device(tmp_path / "dev", "watch-1", "pixel-watch-2", 1883, keystore.root_path)
    cfg.write_text(cfg.read_text().replace("[telemetry]\n", "[telemetry]\ndrift_every = 1\n"))
    agent = Agent(load_config(cfg))
    assert agent.installer.install(InstallRequest("tfl-1", bundle_path=str(bundle))).state == "committed"
    assert agent.manifest["engine"] != "onnxruntime" and agent.drift is not None
    with np.load(SAMPLES / "validation.npz") as data:
        x = data["input"][:60].transpose(0, 2, 3, 1).copy()
    for i in range(len(x)):
        agent.infer({"input": x[i:i + 1]})
    calm = agent.drift.snapshot()
    for i in range(len(x)):
        agent.infer({"input": np.full_like(x[i:i + 1], x.max() * 2)})
    stuck = agent.drift.snapshot()
    assert calm["samples"] == 60 and calm["inputs"]["input"]["psi"] < 0.25, calm
    assert stuck["inputs"]["input"]["psi"] > 1.0 and stuck["inputs"]["input"]["std"] == 0.0, stuck
    assert "logits" in stuck["outputs"]
