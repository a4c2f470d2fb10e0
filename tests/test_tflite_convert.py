"""ONNX -> TFLite conversion of whole models: the digits sample (fp32 / fp16 / int8-full, NCHW and
NHWC I/O), the flatbuffer's structure, error reporting, and nudenet's YOLOv8n when its wheel is
in the local cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import onnx  # noqa: E402  (host extra: a missing package must fail, not skip)

from onnx import TensorProto, helper  # noqa: E402

from converters.wheel_models import extract
from converters.tflite import convert_onnx_to_tflite  # noqa: E402
from converters.tflite.verify import compare_with_onnx, run_onnx, run_tflite  # noqa: E402
from edgekit.core.errors import UnsupportedOpError, UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "edgekit" / "samples" / "digits"



@pytest.fixture(scope="module")
def digits():
    val = np.load(DIGITS / "validation.npz")
    cal = np.load(DIGITS / "calibration.npz")
    x = val["input"]
    return {"model": DIGITS / "digits_cnn.onnx", "x": x, "label": val["label"], "cal": {"input": cal["input"]},
            "ref": run_onnx(DIGITS / "digits_cnn.onnx", {"input": x})["logits"]}


@pytest.mark.parametrize("io_layout", ["nchw", "nhwc"])
def test_digits_fp32_matches_onnxruntime(digits, tmp_path, io_layout):
    out = tmp_path / "digits.tflite"
    report = convert_onnx_to_tflite(digits["model"], out, io_layout=io_layout)
    ref = digits["ref"]
    for resolver in ("auto", "ref"):
        got = run_tflite(out, {"input": digits["x"]}, io_layout, resolver)["logits"]
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), resolver
    assert report["precision"] == "fp32" and report["io_layout"] == io_layout
    shape = [1, 1, 8, 8] if io_layout == "nchw" else [1, 8, 8, 1]
    assert report["inputs"] == [{"name": "input", "shape": shape, "dtype": "float32"}]
    assert report["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    ops = {o["op"]: o["version"] for o in report["ops"]}
    assert ops["CONV_2D"] == 1 and ops["FULLY_CONNECTED"] == 1 and "TRANSPOSE" not in ops  # flatten folded
    assert report["size_bytes"] == out.stat().st_size
    assert report["coverage"]["unsupported_nodes"] == 0


def test_digits_int8_full_keeps_accuracy(digits, tmp_path):
    out = tmp_path / "digits_int8.tflite"
    report = convert_onnx_to_tflite(digits["model"], out, precision="int8-full", calibration=digits["cal"])
    ref, labels = digits["ref"], digits["label"]
    ref_acc = float((ref.argmax(1) == labels).mean())
    for resolver in ("auto", "ref"):
        got = run_tflite(out, {"input": digits["x"]}, resolver=resolver)["logits"]
        assert got.dtype == np.float32
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.98, resolver
        assert ref_acc - (got.argmax(1) == labels).mean() <= 0.01, resolver
    ops = {o["op"]: o["version"] for o in report["ops"]}
    assert ops["CONV_2D"] == 3 and ops["FULLY_CONNECTED"] == 4 and ops["QUANTIZE"] == 1
    assert report["calibration_samples"] == 200
    fp32 = convert_onnx_to_tflite(digits["model"], tmp_path / "f.tflite")
    assert fp32["size_bytes"] / report["size_bytes"] > 2.0


def test_digits_fp16_weights(digits, tmp_path):
    out = tmp_path / "digits_fp16.tflite"
    report = convert_onnx_to_tflite(digits["model"], out, precision="fp16")
    result = compare_with_onnx(digits["model"], out, {"input": digits["x"]})["logits"]
    assert result["metrics"].relative_max_diff <= 2e-3
    assert result["metrics"].top1_agreement == 1.0 and result["metrics"].cosine > 0.9999
    assert {"op": "DEQUANTIZE", "version": 3} in [{k: o[k] for k in ("op", "version")} for o in report["ops"]]


def test_flatbuffer_structure(digits, tmp_path):
    import tflite

    out = tmp_path / "digits_int8.tflite"
    convert_onnx_to_tflite(digits["model"], out, precision="int8-full", calibration=digits["cal"])
    buf = out.read_bytes()
    assert buf[4:8] == b"TFL3"
    model = tflite.Model.GetRootAsModel(buf, 0)
    assert model.Version() == 3
    assert model.Buffers(0).DataLength() == 0
    for k in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(k)
        assert code.DeprecatedBuiltinCode() == min(code.BuiltinCode(), 127)
    sg = model.Subgraphs(0)
    kinds = {}
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            assert q.ScaleLength() == q.ZeroPointLength()
            kinds[t.Name().decode()] = (t.Type(), q.ScaleLength(), q.QuantizedDimension(),
                                        [q.ZeroPoint(j) for j in range(q.ZeroPointLength())])
    conv_w = [v for k, v in kinds.items() if k.endswith("weights/int8") and v[1] > 1]
    assert conv_w and all(v[0] == tflite.TensorType.INT8 and not any(v[3]) for v in conv_w)
    biases = [v for k, v in kinds.items() if k.endswith("bias/int32")]
    assert biases and all(v[0] == tflite.TensorType.INT32 and not any(v[3]) for v in biases)
    assert model.SignatureDefsLength() == 1


def test_supported_ops_cover_the_brief():
    from converters.tflite import supported_onnx_ops

    wanted = {"Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Add", "Sub", "Mul", "Div", "Clip", "Sigmoid", "Tanh",
              "HardSwish", "LeakyRelu", "Softmax", "AveragePool", "GlobalAveragePool", "BatchNormalization",
              "Concat", "Reshape", "Transpose", "Pad", "Resize", "Split", "Slice", "MatMul", "ConvTranspose"}
    assert wanted <= set(supported_onnx_ops())


def _graph_with(nodes, inputs, path, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_unsupported_ops_are_all_reported(tmp_path):
    nodes = [
        helper.make_node("Relu", ["a"], ["r"], name="relu_ok"),
        helper.make_node("Einsum", ["r", "b"], ["e"], name="my_einsum", equation="ij,jk->ik"),
        helper.make_node("Relu", ["e"], ["after"], name="downstream"),
        helper.make_node("Einsum", ["e"], ["after2"], name="second_einsum", equation="ij->ji"),
        helper.make_node("Resize", ["x", "", "sc"], ["rz"], name="cubic_resize", mode="cubic"),
        helper.make_node("Add", ["rz", "rz"], ["out"], name="add_ok"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 3]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("after", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("after2", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UnsupportedOpError) as info:
        convert_onnx_to_tflite(path, tmp_path / "bad.tflite")
    err = info.value
    assert "my_einsum" in err.message and "Einsum" in err.message
    assert "cubic_resize" in err.message and "Resize" in err.message and "cubic" in err.message
    # every unsupported node is listed, also behind another; nodes that only fail because an input
    # could not be produced are "blocked", not unsupported
    assert [u["node"] for u in err.details["unsupported"]] == ["my_einsum", "second_einsum", "cubic_resize"]
    assert err.details["blocked"] == ["downstream", "add_ok"]
    assert err.details["coverage"]["Einsum"] == {"nodes": 2, "unsupported": 2, "translator": False}
    assert err.details["coverage"]["Relu"]["unsupported"] == 0
    assert err.to_dict()["code"] == "unsupported_op"
    assert not (tmp_path / "bad.tflite").exists()


def test_nonmaxsuppression_is_unsupported(tmp_path):
    path = _graph_with([helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"], name="nms")],
                       [("boxes", [1, 10, 4]), ("scores", [1, 1, 10])], tmp_path / "nms.onnx")
    with pytest.raises(UnsupportedOpError, match="node 'nms' \\(NonMaxSuppression\\)"):
        convert_onnx_to_tflite(path, tmp_path / "nms.tflite")


def test_usage_errors(tmp_path):
    path = _graph_with([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 3, "H", 8])], tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="symbolic dimension"):
        convert_onnx_to_tflite(path, tmp_path / "m.tflite")
    report = convert_onnx_to_tflite(path, tmp_path / "m.tflite", input_shapes={"x": [1, 3, 5, 8]})
    assert report["inputs"][0]["shape"] == [1, 3, 5, 8]
    with pytest.raises(UsageError, match="calibration"):
        convert_onnx_to_tflite(path, tmp_path / "m.tflite", precision="int8-full", input_shapes={"x": [1, 3, 5, 8]})
    with pytest.raises(UsageError, match="precision"):
        convert_onnx_to_tflite(path, tmp_path / "m.tflite", precision="int4")
    with pytest.raises(UsageError, match="not found"):
        convert_onnx_to_tflite(tmp_path / "missing.onnx", tmp_path / "m.tflite")


# ---- nudenet 3.4.2 (YOLOv8n, 320x320): needs the wheel in the local cache --------------------------

def _blobs(n: int, seed: int) -> np.ndarray:
    from converters.synthetic import blobs

    return blobs(n, seed)


@pytest.fixture(scope="module")
def nudenet(tmp_path_factory):
    path = extract("nudenet-320n", tmp_path_factory.mktemp("nudenet"), "320n.onnx")  # missing wheel: UsageError
    x = _blobs(10, 0)
    return {"model": path, "cal": {"images": x[:8]}, "x": x[8:],
            "ref": run_onnx(path, {"images": x[8:]})["output0"]}


def test_nudenet_fp32_matches_onnxruntime(nudenet, tmp_path):
    out = tmp_path / "320n.tflite"
    report = convert_onnx_to_tflite(nudenet["model"], out, input_shapes={"images": [1, 3, 320, 320]})
    assert report["outputs"] == [{"name": "output0", "shape": [1, 22, 2100], "dtype": "float32"}]
    assert report["timings"]["total_s"] < 10
    ref = nudenet["ref"]
    for resolver in ("auto", "ref"):
        got = run_tflite(out, {"images": nudenet["x"][:1] if resolver == "ref" else nudenet["x"]}, resolver=resolver)
        assert np.abs(got["output0"] - ref[:len(got["output0"])]).max() <= 1e-4 * np.abs(ref).max(), resolver


def test_nudenet_int8_full_runs_close(nudenet, tmp_path):
    out = tmp_path / "320n_int8.tflite"
    report = convert_onnx_to_tflite(nudenet["model"], out, precision="int8-full", calibration=nudenet["cal"],
                                    input_shapes={"images": [1, 3, 320, 320]})
    assert report["size_bytes"] < 0.3 * 12_150_158
    got = run_tflite(out, {"images": nudenet["x"]})["output0"]
    ref = nudenet["ref"]
    boxes, scores = np.abs(got - ref)[:, :4], np.abs(got - ref)[:, 4:]
    assert boxes.mean() < 5.0          # pixels, on a 320x320 input
    assert scores.max() < 0.25         # the score tail stays float: no 320/255 score steps


def _hard_swish_graph(path, extra_reader: bool):
    k = lambda name, v: onnx.numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], name="add3"),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
             helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "six"], ["y"], name="div6")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])]
    if extra_reader:      # the clipped value is also a graph output: no fusion allowed
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 6, 6]))
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              outputs, [k("three", 3.0), k("zero", 0.0), k("six", 6.0)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("extra_reader", [False, True])
def test_decomposed_hard_swish_becomes_one_op(tmp_path, extra_reader):
    model = _hard_swish_graph(tmp_path / "hs.onnx", extra_reader)
    report = convert_onnx_to_tflite(model, tmp_path / "hs.tflite")
    ops = {o["op"] for o in report["ops"]}
    assert ("HARD_SWISH" in ops) is (not extra_reader)
    x = np.random.default_rng(0).uniform(-6, 6, (3, 4, 6, 6)).astype(np.float32)
    for name, r in compare_with_onnx(model, tmp_path / "hs.tflite", {"x": x}).items():
        assert r["metrics"].max_abs_diff < 1e-5, name
