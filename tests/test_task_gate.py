"""The task-aware parity gate (converters.tasks + converters.gate, ADR 0007): which task is chosen
and why, which criterion decides each output, and that nothing is loosened silently.

Fast logic tests on synthetic YOLO heads / probability maps, plus the TFLite pipeline on the real
sample model (the real detectors go through the CLI in tests/test_onnx_real_models.py)."""

from __future__ import annotations

import numpy as np
import pytest

from converters.data import Dataset
from converters.gate import Candidate, evaluate, gate_reasons
from converters.tasks import resolve
from converters.tflite_pipeline import convert_tflite
from edgekit.core.errors import ProfileError, UsageError
from edgekit.core.profiles import load_profile, load_profile_file, profiles_dir
from edgekit.demo import SAMPLES

GATEWAY = load_profile("x86-64-gateway")


def yolo_heads(n=6, classes=3, anchors=400, seed=0) -> np.ndarray:
    """[n, 4 + classes, anchors]: one confident box per image, background anchors with big coordinates."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 4 + classes, anchors), np.float32)
    out[:, :4] = rng.uniform(0, 320, (n, 4, anchors))
    out[:, 4:] = rng.uniform(0, 0.05, (n, classes, anchors))
    for i in range(n):
        a = rng.integers(anchors)
        out[i, :4, a] = (160, 160, 80, 100)
        out[i, 4 + i % classes, a] = 0.8
    return out


def entry_for(got: dict, ref: dict, tmp_path, profile=GATEWAY, task="auto", labels=None) -> dict:
    (tmp_path / "m.onnx").write_bytes(b"x" * 100)
    data = Dataset({"x": np.zeros((len(next(iter(ref.values()))), 1), np.float32)}, labels)
    cand = Candidate("int8-static", tmp_path / "m.onnx", None, 1.0, got)
    refc = Candidate("fp32-reference", tmp_path / "m.onnx", None, 2.0, ref)
    spec = resolve(task, ref, labels is not None)
    entry = evaluate(cand, refc, data, profile, spec)
    entry["reasons"] = gate_reasons(entry, profile, allow_slower=False)
    return entry


def test_auto_task_and_why():
    assert resolve("auto", {"y": np.zeros((4, 10))}, False).name == "classification"
    assert "has labels" in resolve("auto", {"y": np.zeros((4, 3, 8))}, True).reason
    raw = resolve("auto", {"output0": yolo_heads()}, False)
    assert raw.name == "raw" and raw.output is None and "not [N, C] class scores" in raw.reason
    # a declared task finds its output among several
    spec = resolve("text-mask", {"feat": np.ones((2, 8)), "prob": np.full((2, 1, 8, 8), 0.5)}, False)
    assert (spec.name, spec.output) == ("text-mask", "prob")


def test_a_declared_task_that_does_not_fit_the_outputs_is_a_usage_error():
    with pytest.raises(UsageError, match=r"--task detection-yolo needs an output shaped .*logits \[4, 10\]"):
        resolve("detection-yolo", {"logits": np.zeros((4, 10))}, False)
    with pytest.raises(UsageError, match="unknown task"):
        resolve("segmentation", {"logits": np.zeros((4, 10))}, False)


def test_moved_background_boxes_pass_on_the_task_metric_and_are_still_reported(tmp_path):
    ref = yolo_heads()
    got = ref.copy()
    got[:, :4, :] += np.where(ref[:, 4:].max(axis=1, keepdims=True) < 0.25, 160.0, 0.0)  # background only
    e = entry_for({"output0": got}, {"output0": ref}, tmp_path, task="detection-yolo")
    assert e["reasons"] == [] and e["task"]["score"] == 1.0 and e["task"]["decides"]
    crit = e["criteria"]["output0"]
    assert crit["decided_by"] == "task metric" and crit["passed"]
    assert any("of the output range (budget 0.1)" in r for r in crit["elementwise_not_deciding"])
    # the same candidate without a declared task: element-wise decides, and refuses it
    e = entry_for({"output0": got}, {"output0": ref}, tmp_path, task="raw")
    assert e["criteria"]["output0"]["decided_by"] == "element-wise"
    assert any("of the output range" in r for r in e["reasons"])


def test_shuffled_detections_are_refused_by_the_task_metric(tmp_path):
    ref = yolo_heads()
    got = ref[:, :, np.random.default_rng(1).permutation(ref.shape[2])]   # same values, wrong anchors
    got[:, :4] = ref[:, :4]                                                # boxes stay, scores move
    e = entry_for({"output0": got}, {"output0": ref}, tmp_path, task="detection-yolo")
    assert not e["task"]["passed"] and e["task"]["score"] < 0.5
    assert e["reasons"] and e["reasons"][0].startswith("output0: detection-yolo: top-box IoU")


def test_min_task_score_comes_from_the_profile(tmp_path):
    ref = yolo_heads()
    got = ref.copy()
    got[:, 2:4] *= 1.05          # every box 5% larger: IoU ~0.91
    strict_path = tmp_path / "strict-box.toml"
    strict_path.write_text((profiles_dir() / "x86-64-gateway.toml").read_text()
                           .replace('id = "x86-64-gateway"', 'id = "strict-box"')
                           .replace("min_task_score = 0.9 ", "min_task_score = 0.95 "))
    ok = entry_for({"output0": got}, {"output0": ref}, tmp_path, task="detection-yolo")
    strict = entry_for({"output0": got}, {"output0": ref}, tmp_path, profile=load_profile_file(strict_path),
                       task="detection-yolo")
    assert 0.9 <= ok["task"]["score"] < 0.95 and ok["reasons"] == []
    assert strict["task"]["threshold"] == 0.95 and "vs min 0.95" in strict["reasons"][0]


def test_text_mask_without_text_in_the_data_falls_back_to_element_wise(tmp_path):
    ref = np.zeros((3, 1, 16, 16), np.float32)
    got = ref + 0.2                                     # below the 0.3 threshold: masks "agree", values do not
    e = entry_for({"prob": got}, {"prob": ref}, tmp_path, task="text-mask")
    assert not e["task"]["decidable"] and not e["task"]["decides"]
    assert e["criteria"]["prob"]["decided_by"].startswith("element-wise (task metric undecidable")
    assert any(r.startswith("prob: cosine") or "output range" in r for r in e["reasons"]), e["reasons"]


def test_classification_never_loosens_the_element_wise_checks(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 10)).astype(np.float32)
    got = ref + rng.normal(scale=0.6, size=ref.shape).astype(np.float32) * (ref < ref.max(axis=1, keepdims=True))
    got = np.where(ref == ref.max(axis=1, keepdims=True), ref + 3, got)        # top-1 kept everywhere
    e = entry_for({"y": got}, {"y": ref}, tmp_path)
    assert e["task"]["task"] == "classification" and e["task"]["score"] == 1.0 and not e["task"]["decides"]
    assert e["task"]["threshold"] == GATEWAY.validation["min_top1_agreement"]
    assert e["criteria"]["y"]["decided_by"].startswith("element-wise + classification")
    assert e["reasons"], "cosine / max error must still refuse it"


def test_profile_schema_checks_min_task_score(tmp_path):
    assert all("min_task_score" in load_profile(p.stem).validation for p in profiles_dir().glob("*.toml"))
    bad = tmp_path / "bad-box.toml"
    bad.write_text((profiles_dir() / "x86-64-gateway.toml").read_text().replace('id = "x86-64-gateway"', 'id = "bad-box"')
                   .replace("min_task_score = 0.9 ", "min_task_score = 1.5 "))
    with pytest.raises(ProfileError) as exc:
        load_profile_file(bad)
    assert any(e.startswith("validation.min_task_score") for e in exc.value.details["errors"])


def test_tflite_pipeline_takes_the_task(datasets, tmp_path):
    cal, val = datasets
    rep = convert_tflite(SAMPLES / "digits_cnn.onnx", load_profile("pixel-watch-2"), tmp_path, precision="fp32",
                         calibration=cal, validation=val, task="classification")
    assert rep["task"]["task"] == "classification"
    c = rep["candidates"][-1]
    assert c["task"]["metric"].startswith("top-1 agreement") and c["task"]["score"] >= 0.99 and c["criteria"]
    assert c["task"]["accuracy_drop"] == 0.0 and c["task"]["decides"]    # declared + labels: ADR 0014
    with pytest.raises(UsageError, match="--task text-mask needs an output"):
        convert_tflite(SAMPLES / "digits_cnn.onnx", load_profile("pixel-watch-2"), tmp_path / "t", precision="fp32",
                       calibration=cal, validation=val, task="text-mask")
    assert not (tmp_path / "t").exists()
