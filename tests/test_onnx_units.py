"""Fast logic tests of the ONNX pipeline's helpers: peak-memory estimate, float tail, detection
and mask metrics, image preprocessing specs, step recording."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.checks import estimate_peak_memory
from converters.images import parse_preprocess
from converters.recipes import compact_names, float_tail
from converters.steps import StepLog
from converters.task_metrics import matched_box_iou, text_mask_iou, top_box_iou, yolo_detections
from edgekit.core.errors import UsageError


def chain(path, ops, n=1000, batch="N"):
    nodes, prev = [], "x"
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [prev], [f"t{i}"], name=f"n{i}"))
        prev = f"t{i}"
    w = numpy_helper.from_array(np.ones(256, np.float32), "w")  # 1 KiB of weights, unused by the math
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [batch, n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_peak_memory_counts_weights_and_two_live_activations(tmp_path):
    est = estimate_peak_memory(chain(tmp_path / "m.onnx", ["Relu", "Relu", "Relu"]))
    # a chain frees each input after its consumer: at most 2 tensors of 1000 floats alive
    assert est == {"weights_bytes": 1024, "activations_bytes": 8000, "peak_bytes": 9024, "unknown_tensors": 0}


def test_peak_memory_keeps_tensors_alive_until_last_use(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Add", ["a", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])])
    path = tmp_path / "skip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    # while computing c: a (skip connection), b, c alive
    assert estimate_peak_memory(path)["activations_bytes"] == 12000


def test_float_tail_is_everything_after_the_last_heavy_op(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="pre"), helper.make_node("MatMul", ["r", "w"], ["m"], name="mm"),
             helper.make_node("Sigmoid", ["m"], ["s"], name="sig"), helper.make_node("Concat", ["s", "m"], ["y"],
                                                                                      name="cat", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    path = tmp_path / "t.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert float_tail(path) == ["sig", "cat"]


def test_compact_names_keeps_io_names_and_runs(tmp_path):
    import onnxruntime as ort

    path = chain(tmp_path / "m.onnx", ["Relu", "Sigmoid"], n=4)
    compact_names(path)
    model = onnx.load(str(path))
    assert model.graph.input[0].name == "x" and model.graph.output[0].name == "t1"
    assert all(n.name == "" for n in model.graph.node) and model.graph.node[0].output[0] != "t0"
    out = ort.InferenceSession(str(path)).run(None, {"x": np.zeros((1, 4), np.float32)})[0]
    assert np.allclose(out, 0.5)


def yolo_output(boxes):
    """[(cx, cy, w, h, class, score)] → a [1, 4 + 3, A] YOLOv8 head output."""
    out = np.zeros((1, 7, len(boxes)), np.float32)
    for a, (cx, cy, w, h, c, s) in enumerate(boxes):
        out[0, :4, a] = cx, cy, w, h
        out[0, 4 + c, a] = s
    return out


def test_yolo_decode_nms_and_box_iou():
    ref = yolo_output([(50, 50, 20, 20, 0, 0.9), (51, 50, 20, 20, 0, 0.8), (200, 200, 40, 40, 1, 0.5),
                       (10, 10, 5, 5, 2, 0.1)])
    dets = yolo_detections(ref, conf=0.25, iou=0.45)
    assert sorted((c, round(s, 2)) for _, c, s in dets) == [(0, 0.9), (1, 0.5)]   # NMS dropped the 0.8 duplicate
    shifted = yolo_output([(52, 50, 20, 20, 0, 0.9), (200, 200, 40, 40, 1, 0.5)])
    assert 0.8 < matched_box_iou(dets, yolo_detections(shifted)) < 1.0
    assert matched_box_iou(dets, []) == 0.0 and matched_box_iou([], []) == 1.0
    assert top_box_iou(ref, ref) == pytest.approx(1.0)
    assert top_box_iou(ref, yolo_output([(50, 50, 20, 20, 1, 0.9)])) == 0.0   # same place, other class


def test_text_mask_iou():
    a = np.zeros((1, 1, 4, 4), np.float32)
    a[..., :2, :] = 0.9
    b = a.copy()
    b[..., 1, :] = 0.1
    assert text_mask_iou(a, a) == 1.0 and text_mask_iou(a, b) == 0.5
    assert text_mask_iou(np.zeros(4), np.zeros(4)) == 1.0


def test_preprocess_spec_parsing_and_apply():
    from PIL import Image

    pre = parse_preprocess("resize=4x2,scale=1/255,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,layout=NCHW")
    arr = pre.apply(Image.new("RGB", (8, 8), (255, 0, 255)))
    assert arr.shape == (3, 2, 4) and arr.dtype == np.float32
    assert np.allclose(arr[0], 1.0) and np.allclose(arr[1], -1.0)
    assert parse_preprocess("resize=2x2,layout=nhwc,color=L").apply(Image.new("RGB", (3, 3))).shape == (2, 2, 1)
    for bad, words in [("scale=1/255", "resize="), ("resize=big", "WIDTHxHEIGHT"), ("resize=2x2,layout=CHW", "NCHW"),
                       ("resize=2x2,mean=a/b", "numbers"), ("resize=2x2,foo", "KEY=VALUE")]:
        with pytest.raises(UsageError, match=words):
            parse_preprocess(bad)


def test_step_log_records_time_peak_rss_and_failure():
    log = StepLog()
    with log.step("grow") as entry:
        blob = np.ones(20_000_000, np.uint8)  # 20 MB, touched
        entry["note"] = int(blob.sum())
    with pytest.raises(RuntimeError):
        with log.step("boom"):
            raise RuntimeError("x")
    grow, boom = log.steps
    assert grow["status"] == "ok" and grow["note"] == 20_000_000 and grow["peak_rss_bytes"] > 20_000_000
    assert boom["status"] == "failed" and boom["seconds"] >= 0


def test_calibration_reader_feeds_ranges_and_stride_divides():
    from converters.data import Dataset
    from converters.recipes import _Reader, calibration_stride

    ticks = []
    r = _Reader(Dataset({"x": np.arange(6, dtype=np.float32)[:, None]}), tick=lambda d, t: ticks.append((d, t)))
    assert len(r) == 6
    r.set_range(2, 4)
    got = [float(b["x"][0, 0]) for b in iter(r.get_next, None)]
    assert got == [2.0, 3.0] and ticks == [(3, 6), (4, 6)]
    assert [calibration_stride(n) for n in (1, 2, 7, 8, 9)] == [1, 2, 1, 2, 1]


def _conv_graph(path, pre: list, post: list, pads=(0, 0, 0, 0), k=1):
    """x → pre elementwise ops → Conv(k×k, pads) → post elementwise ops → y, with constants."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, k, k)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "B")]
    nodes, prev = [], "x"
    for i, (op, const) in enumerate(pre + [("Conv", None)] + post):
        out = f"t{i}"
        if op == "Conv":
            nodes.append(helper.make_node("Conv", [prev, "W", "B"], [out], pads=list(pads)))
        else:
            inits.append(numpy_helper.from_array(np.asarray(const, np.float32), f"c{i}"))
            nodes.append(helper.make_node(op, [f"c{i}", prev] if op == "Mul" else [prev, f"c{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("pre,post,pads,k,removed", [
    ([], [("Mul", np.full((1, 4, 1, 1), 0.5)), ("Add", [0.25])], (0, 0, 0, 0), 3, 2),   # conv → affine
    ([("Mul", [2.0]), ("Add", np.full((1, 3, 1, 1), -1.0))], [], (0, 0, 0, 0), 1, 2),  # affine → 1x1 conv
    ([("Add", [1.0])], [], (1, 1, 1, 1), 3, 0),                                          # padded: not exact
    ([], [("Mul", np.ones(6) * 2)], (0, 0, 0, 0), 1, 0),                                 # [6] broadcasts on W
    ([], [("Div", [6.0]), ("Mul", [3.0])], (0, 0, 0, 0), 1, 2),                # /6 *3 → *0.5 → into the conv
])
def test_folds_are_exact_and_only_where_exact(tmp_path, pre, post, pads, k, removed):
    import onnxruntime as ort

    from converters.fold import fold_all

    path = _conv_graph(tmp_path / "m.onnx", pre, post, pads, k)
    model = onnx.load(str(path))
    n = sum(fold_all(model).values())
    onnx.save(model, str(tmp_path / "f.onnx"))
    x = {"x": np.random.default_rng(0).normal(size=(1, 3, 6, 6)).astype(np.float32)}
    ref = ort.InferenceSession(str(path)).run(None, x)[0]
    got = ort.InferenceSession(str(tmp_path / "f.onnx")).run(None, x)[0]
    assert n == removed and len(model.graph.node) == len(pre) + len(post) + 1 - removed
    assert np.allclose(ref, got, atol=1e-5)
    assert {t.name for t in model.graph.initializer} <= {i for nd in model.graph.node for i in nd.input}
