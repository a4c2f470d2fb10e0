"""Health-check robustness: a model whose inference hangs is cancelled at the deadline and the
install fails with an event saying why; the memory budget is enforced; the checked session is
the one that serves.

Real signed bundles and onnxruntime. The hanging model is a real ONNX ``Loop`` with 10^12
iterations, released with the sample model's signature and golden vectors.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from agent.installer import InstallRequest, Installer
from agent.runtime import load_runner
from edgekit.core import parity
from edgekit.core.profiles import load_profile


def hanging_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]), helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(np.ones((1, 10), np.float32), "one")])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["unused"], keepdims=0),
         helper.make_node("Loop", ["trips", "cond", "v0"], ["logits"], body=body)],
        "hang", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(np.array(10**12, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.zeros((1, 10), np.float32), "v0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def hanging_bundle(tmp_path_factory, artifacts, keystore):
    from edgekit.release import release_artifact

    work = tmp_path_factory.mktemp("hang")
    shutil.copytree(artifacts / "fp32" / "raspberry-pi-4", work / "art")
    hanging_model(work / "art" / "model.onnx")
    return release_artifact(work / "art", keystore, work / "out", name="digits-cnn", version="9.0.0", release=900)


def installer(data_dir, keystore, events, **kw):
    return Installer(data_dir, load_profile("raspberry-pi-4"), keystore.root_path,
                     lambda s, ok, d, e, dep: events.append((s, ok, e.to_dict() if e else None)), health_runs=3, **kw)


def test_hanging_inference_is_cancelled_and_the_old_model_keeps_serving(tmp_path, keystore, make_bundle,
                                                                         hanging_bundle):
    events: list = []
    inst = installer(tmp_path, keystore, events, health_timeout_s=1.5)
    assert inst.install(InstallRequest("d1", bundle_path=str(make_bundle(version="1.0.0", release=899)))).state \
        == "committed"
    events.clear()
    t0 = time.monotonic()
    rec = inst.install(InstallRequest("d2", bundle_path=str(hanging_bundle)))
    assert time.monotonic() - t0 < 30  # the deadline, not the 10^12-iteration loop, ended it
    assert rec.state == "failed" and rec.error["code"] == "health_timeout"
    assert "inference hung" in rec.error["message"] and "run cancelled" in rec.error["message"]
    assert rec.error["details"] == {"timeout_s": 1.5, "cancelled": True, "abandoned": False}
    assert rec.details["failed_state"] == "health_check"
    final = events[-1]
    assert final[0] == "failed" and final[1] is False and final[2]["code"] == "health_timeout"
    assert final[2]["hint"]  # tells the operator what to do
    assert inst.slots.installed()["version"] == "1.0.0"


@pytest.fixture(scope="module")
def big_gemm(tmp_path_factory):
    """A real 16 MB model (2000x2000 float32 Gemm) and golden vectors made with onnxruntime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("gemm")
    n = 2000
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Gemm", ["input", "w"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "model.onnx"))
    x = np.random.default_rng(1).standard_normal((2, n)).astype(np.float32)
    ref = load_runner(d / "model.onnx", "onnxruntime", 1)
    y = np.concatenate([ref.run({"input": x[i:i + 1]})["output"] for i in range(2)])
    (d / "golden.npz").write_bytes(parity.save_golden({"input": x}, {"output": y}))
    return d


CHECK_IN_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from agent.installer import current_rss, health_check
from agent.runtime import load_runner
d, budget = Path(sys.argv[1]), int(sys.argv[2])
rss0 = current_rss()
runner = load_runner(d / "model.onnx", "onnxruntime", 1)
m = {"golden": {"atol": 1e-3, "rtol": 1e-3, "min_cosine": 0.99, "min_top1_agreement": 0.99},
     "budgets": {"max_peak_memory_bytes": budget}}
print(json.dumps(health_check(runner, d / "golden.npz", m, runs=3, rss_before=rss0)))
"""


@pytest.mark.parametrize("budget, fails", [(4 << 20, True), (1 << 30, False)], ids=["4MiB", "1GiB"])
def test_memory_budget_is_checked_against_rss_growth(big_gemm, budget, fails):
    """In a fresh process (RSS of this test process is polluted by earlier sessions' freed memory)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CHECK_IN_FRESH_PROCESS, str(big_gemm), str(budget)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["memory_growth_bytes"] >= 8 << 20  # 16 MB of weights became resident
    mem_failures = [f for f in report["failures"] if f.startswith("memory:")]
    assert bool(mem_failures) is fails, report["failures"]
    assert len(report["failures"]) == len(mem_failures)  # parity itself passes


def test_serving_reuses_the_health_checked_session(tmp_path, keystore, make_bundle):
    committed: list = []
    inst = Installer(tmp_path, load_profile("raspberry-pi-4"), keystore.root_path, lambda *a: None, health_runs=3,
                     on_commit=lambda slot_dir, m, runner: committed.append((slot_dir.name, runner)))
    rec = inst.install(InstallRequest("d1", bundle_path=str(make_bundle(version="1.0.0", release=950))))
    assert rec.state == "committed"
    (slot, runner), = committed
    assert slot == inst.slots.current() and runner is not None
    ins, outs = parity.load_golden(inst.slots.path(slot) / "golden.npz")
    got = runner.run({k: v[:1] for k, v in ins.items()})
    assert np.allclose(got["logits"], outs["logits"][:1], atol=1e-4)


@pytest.mark.parametrize("budget, stops_early", [(1e6, True), (None, True), (1e-6, False)])
def test_latency_runs_stop_early_only_far_from_the_budget(budget, stops_early, artifacts):
    """Real model and golden vectors: far from the budget the check stops after MIN_LATENCY_RUNS;
    near (here: over) it every run is timed and the budget still fails the check."""
    import json

    from agent.installer import MIN_LATENCY_RUNS, health_check

    art = artifacts / "fp32" / "raspberry-pi-4"
    manifest = {"golden": {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.999, "min_top1_agreement": 0.99},
                "budgets": {"latency_p95_ms": budget}}
    n = len(next(iter(parity.load_golden(art / "golden.npz")[0].values())))
    runner = load_runner(art / "model.onnx", "onnxruntime", 1)
    report = health_check(runner, art / "golden.npz", manifest, runs=40)
    assert report["latency_stopped_early"] is stops_early, json.dumps(report)
    if stops_early:
        assert report["latency_runs"] == max(n, MIN_LATENCY_RUNS) and report["failures"] == []
    else:
        assert report["latency_runs"] == 40 and any("exceeds the budget" in f for f in report["failures"])
