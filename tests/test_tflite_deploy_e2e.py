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
