"""Full-integer int8 nudenet (YOLOv8n) through the task-aware parity gate (ADR 0007) on stock profiles:
``--task detection-yolo`` lets the top-box IoU decide, and this test re-measures that IoU itself
(own interpreter run with the artifact's own quantization parameters, own box decode) instead of
trusting the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter

from converters.wheel_models import extract
from converters.data import Dataset
from converters.tflite_pipeline import convert_tflite
from edgekit.core.profiles import load_profile
from converters.synthetic import people_scene

ROOT = Path(__file__).resolve().parent.parent


def _faces(n: int, seed: int) -> np.ndarray:
    """Drawn-face scenes nudenet detects as FACE_* (the data of the ONNX real-model tests), NCHW in [0, 1]."""
    return np.stack([people_scene(seed + i).transpose(2, 0, 1) for i in range(n)]).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def nudenet(tmp_path_factory):
    work = tmp_path_factory.mktemp("nudenet-task")
    path = extract("nudenet-320n", work, "320n.onnx")
    x = _faces(24, 0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])
    return {"model": path, "work": work, "cal": Dataset({"images": _faces(16, 100)}), "x": x, "ref": ref}


def _run_artifact(path: Path, x: np.ndarray, io_layout: str) -> np.ndarray:
    """Run the .tflite sample by sample, quantizing/dequantizing with the tensors' own parameters."""
    interp = Interpreter(model_content=path.read_bytes(), num_threads=1)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    rows = []
    for i in range(len(x)):
        sample = x[i:i + 1].transpose(0, 2, 3, 1) if io_layout == "nhwc" else x[i:i + 1]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            sample = np.clip(np.round(sample / scale + zero), info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], np.ascontiguousarray(sample))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        rows.append(y)
    return np.concatenate(rows)


def _top_box_ious(ref: np.ndarray, got: np.ndarray, conf: float = 0.25) -> list[float]:
    """Per image where fp32 finds a box >= conf: IoU of the two top-scoring boxes (0 if the class differs).
    YOLOv8 output [N, 4 + classes, anchors], boxes as centre x, centre y, width, height."""
    ious = []
    for r, c in zip(ref, got):
        ra, ca = np.unravel_index(np.argmax(r[4:]), r[4:].shape), np.unravel_index(np.argmax(c[4:]), c[4:].shape)
        if r[4:][ra] < conf:
            continue
        if ra[0] != ca[0]:
            ious.append(0.0)
            continue
        (x1, y1, w1, h1), (x2, y2, w2, h2) = r[:4, ra[1]], c[:4, ca[1]]
        ix = max(0.0, min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2))
        iy = max(0.0, min(y1 + h1 / 2, y2 + h2 / 2) - max(y1 - h1 / 2, y2 - h2 / 2))
        inter = ix * iy
        ious.append(float(inter / (w1 * h1 + w2 * h2 - inter)))
    return ious


def test_nudenet_full_integer_int8_passes_the_detection_gate(nudenet):
    profile_id, precision = "pixel-8", "int8-static"
    out = nudenet["work"] / precision
    rep = convert_tflite(nudenet["model"], load_profile(profile_id), out, precision=precision,
                         calibration=nudenet["cal"], validation=Dataset({"images": nudenet["x"]}),
                         task="detection-yolo")
    entry = rep["candidates"][-1]
    assert rep["precision"] == precision and entry["passed"] and rep["task"]["task"] == "detection-yolo"
    crit = entry["criteria"]["output0"]
    assert crit["decided_by"] == "task metric" and crit["passed"]
    assert entry["task"]["samples"] >= 4 and entry["task"]["score"] >= 0.9
    # element-wise it would have been refused: the report keeps that, marked as not deciding
    assert entry["outputs"]["output0"]["relative_max_diff"] > 0.1 and crit["elementwise_not_deciding"]

    artifact = out / profile_id / "model.tflite"
    assert json.loads((out / profile_id / "report.json").read_text())["precision"] == precision
    got = _run_artifact(artifact, nudenet["x"], rep["io_layout"])
    ious = _top_box_ious(nudenet["ref"], got)
    assert len(ious) == entry["task"]["samples"]
    assert np.mean(ious) >= 0.9 and min(ious) >= 0.7, ious
    assert abs(np.mean(ious) - entry["task"]["score"]) < 0.02     # the gate measured the same thing


def test_nudenet_int8_without_task_is_still_refused_elementwise(nudenet):
    """The same int8 candidate without a declared task: the element-wise budget decides, and refuses."""
    from edgekit.core.errors import ParityError

    with pytest.raises(ParityError) as exc:
        convert_tflite(nudenet["model"], load_profile("pixel-8"), nudenet["work"] / "raw", precision="int8-static",
                       calibration=nudenet["cal"], validation=Dataset({"images": nudenet["x"]}), task="raw")
    entry = exc.value.details["report"][-1]
    assert entry["criteria"]["output0"]["decided_by"].startswith("element-wise") and not entry["passed"]
    assert not (nudenet["work"] / "raw" / "pixel-8" / "model.tflite").exists()


def _mask_ious(ref: np.ndarray, got: np.ndarray, threshold: float = 0.3) -> list[float]:
    """Per image IoU of the text masks (probability > threshold); an image with no text in either is 1."""
    ious = []
    for r, g in zip(ref, got):
        a, b = r > threshold, g > threshold
        union = np.logical_or(a, b).sum()
        ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
    return ious


def test_ppocr_det_int8_mixed_keeps_a_float_stem_and_passes_text_mask(tmp_path):
    """PP-OCRv4 det on stroke rows (text_lines, soft maps near the threshold): int8-static loses the
    text mask (IoU ~0.52); int8-mixed keeps the stem float (cut chosen on calibration data only) and
    the rest int8, and passes --task text-mask. (On rendered text plain int8-static passes:
    tests/test_tflite_int8_targets.py, ADR 0014.)"""
    from converters.tflite.reader import read_tflite
    from edgekit.core.errors import ParityError
    from converters.synthetic import text_lines

    src = extract("ppocr-v4-det", tmp_path, "det.onnx")
    cal, x = Dataset({"x": text_lines(16, 320, 320, 1, True)}), text_lines(8, 320, 320, 2, True)
    profile = load_profile("pixel-8")
    with pytest.raises(ParityError) as exc:
        convert_tflite(src, profile, tmp_path / "static", precision="int8-static", calibration=cal,
                       validation=Dataset({"x": x}), task="text-mask")
    static_iou = exc.value.details["report"][-1]["task"]["score"]
    assert static_iou < 0.8, static_iou

    rep = convert_tflite(src, profile, tmp_path / "mixed", precision="int8-mixed", calibration=cal,
                         validation=Dataset({"x": x}), task="text-mask")
    entry = rep["candidates"][-1]
    mixed = entry["mixed"]
    assert rep["precision"] == "int8-mixed" and entry["passed"]
    assert 0 < mixed["cut"] < 0.35 * mixed["of_ops"] and mixed["score"] >= mixed["min_cosine"]
    assert [c for c, _ in mixed["trials"]][-1] == mixed["cut"]          # the smallest cut reaching the score
    assert all(s < mixed["min_cosine"] for _, s in mixed["trials"][:-1])
    (crit,) = entry["criteria"].values()
    assert crit["decided_by"] == "task metric" and entry["task"]["score"] > static_iou + 0.2

    artifact = tmp_path / "mixed" / "pixel-8" / "model.tflite"
    (g,) = read_tflite(artifact)["graphs"]
    dtypes = {g["tensors"][op["inputs"][1]]["dtype"] for op in g["operators"] if op["op"] == "CONV_2D"}
    assert dtypes == {"float32", "int8"}                                 # float stem, int8 rest
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    got = _run_artifact(artifact, x, rep["io_layout"])
    got = got.transpose(0, 3, 1, 2) if rep["io_layout"] == "nhwc" else got
    ious = _mask_ious(ref, got)
    assert np.mean(ious) >= 0.9 and abs(np.mean(ious) - entry["task"]["score"]) < 0.01, ious


def test_float_prefix_falls_back_to_the_best_cut_when_none_reaches_the_score():
    """digits sample: an unreachable min_cosine tries every cut (within the float fraction) and keeps the
    best-scoring, smallest one; a reachable one stops at the first cut (all int8)."""
    from converters.tflite import onnx_import, onnx_prep, quantize
    from converters.tflite.convert import calibration_samples
    from converters.tflite.mixed import float_prefix
    from converters.tflite.schema_writer import serialize

    digits = ROOT / "edgekit" / "samples" / "digits"
    x = np.load(digits / "calibration.npz")["input"][:8]
    graph = onnx_prep.load(digits / "digits_cnn.onnx", None)
    model, _ = onnx_import.translate(graph, "nchw")
    samples = calibration_samples({"input": x}, graph, "nchw", 8)
    means: dict = {}
    ranges = quantize.calibrate(serialize(model), model, samples, means)
    keep, info = float_prefix(model, ranges, means, samples, min_cosine=1.01, max_float_fraction=1.0)
    cuts = [c for c, _ in info["trials"]]
    assert cuts[0] == 0 and len(cuts) > 2 and info["score"] == max(s for _, s in info["trials"])
    assert keep == list(range(info["cut"])) and info["cut"] == min(c for c, s in info["trials"] if s == info["score"])
    keep, info = float_prefix(model, ranges, means, samples, min_cosine=0.9)
    assert keep == [] and info["trials"] == [[0, info["score"]]] and info["score"] >= 0.9
