"""Accuracy measures of the TFLite quantizer: saturation-aware ranges,
bias correction of rounded weights, the int16x8 precision, and the layer-by-layer debug helper.
Real models: the project's digits sample, PP-OCR cls (rapidocr wheel) and nudenet 320n (wheel)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters.wheel_models import extract
from converters.data import Dataset
from converters.tflite import convert_onnx_to_tflite, quantize
from converters.tflite.layerwise import compare_layers, first_drops
from converters.tflite.reader import read_tflite
from converters.tflite.schema_writer import Model
from converters.tflite.verify import compare_with_onnx
from converters.tflite_pipeline import convert_tflite
from edgekit.core.profiles import load_profile
from converters.synthetic import blobs, text_lines

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "edgekit" / "samples" / "digits"


def _const(name, arr):
    return onnx.numpy_helper.from_array(np.asarray(arr, np.float32), name)


def test_ranges_read_only_by_saturating_ops_are_clipped():
    m = Model()
    logits = m.add_tensor("logits", (1, 4))
    shared = m.add_tensor("shared", (1, 4))
    prob, prob2, relu6, out = (m.add_tensor(n, (1, 4)) for n in ("prob", "prob2", "relu6", "out"))
    m.add_op("LOGISTIC", [logits], [prob])
    m.add_op("LOGISTIC", [shared], [prob2])
    m.add_op("RELU6", [shared], [relu6])     # two kinds of readers: left alone
    m.add_op("RELU6", [prob], [out])
    m.inputs, m.outputs = [logits, shared], [prob2, relu6, out]
    got = quantize.saturated_ranges(m, {logits: (-110.0, 62.0), shared: (-50.0, 50.0), prob: (0.0, 1.0),
                                        out: (0.0, 1.0)})
    assert got[logits] == (-8.0, 8.0) and got[shared] == (-50.0, 50.0)
    assert got[prob] == (0.0, 1.0) and got[out] == (0.0, 1.0)      # inside RELU6's range / a graph output


def _offset_conv(path: Path) -> Path:
    """A 3x3 conv whose inputs sit around 10: rounding its weights shifts every output by ~dW * 10 * 9."""
    w = np.random.default_rng(2).normal(0, 0.05, (8, 4, 3, 3))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"])], "offset",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 10, 10])],
                              [_const("w", w), _const("b", np.zeros(8))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_bias_correction_removes_the_mean_shift_of_rounded_weights(tmp_path):
    model = _offset_conv(tmp_path / "offset.onnx")
    rng = np.random.default_rng(3)
    cal = (10 + rng.normal(0, 0.3, (16, 4, 12, 12))).astype(np.float32)
    x = (10 + rng.normal(0, 0.3, (4, 4, 12, 12))).astype(np.float32)
    errors = {}
    for name, calibration in (("plain", None), ("corrected", {"x": cal})):
        out = tmp_path / f"{name}.tflite"
        report = convert_onnx_to_tflite(model, out, precision="int8-weights", calibration=calibration)
        assert report["calibration_samples"] == (0 if calibration is None else len(cal))
        (r,) = compare_with_onnx(model, out, {"x": x}).values()
        errors[name] = r["metrics"].max_abs_diff
    assert errors["corrected"] < 0.5 * errors["plain"], errors


def test_int16x8_uses_int16_activations_and_beats_int8_on_digits(tmp_path):
    cal = np.load(DIGITS / "calibration.npz")["input"][:64]
    val = np.load(DIGITS / "validation.npz")["input"][:64]
    model = DIGITS / "digits_cnn.onnx"
    errors = {}
    for precision in ("int8-full", "int16x8"):
        out = tmp_path / f"{precision}.tflite"
        convert_onnx_to_tflite(model, out, precision=precision, calibration={"input": cal})
        (r,) = compare_with_onnx(model, out, {"input": val}).values()
        errors[precision] = r["metrics"].relative_max_diff
        assert r["metrics"].top1_agreement >= 0.99
        if precision == "int16x8":
            parsed = read_tflite(out)
            dtypes = {t["dtype"] for t in parsed["graphs"][0]["tensors"]}
            assert {"int16", "int8", "int64"} <= dtypes and parsed["inputs"][0]["dtype"] == "float32"
    assert errors["int16x8"] < 0.25 * errors["int8-full"], errors


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory):
    return extract("ppocr-cls", tmp_path_factory.mktemp("cls"), "cls.onnx")


def test_layerwise_comparison_locates_the_loss_on_ppocr_cls(cls_model):
    cal, x = {"x": text_lines(16, 48, 192, 1, True)}, {"x": text_lines(1, 48, 192, 2)}
    shapes = {"x": [1, 3, 48, 192]}
    int8 = compare_layers(cls_model, cal, x, precision="int8-full", input_shapes=shapes)
    int16 = compare_layers(cls_model, cal, x, precision="int16x8", input_shapes=shapes)
    assert len(int8) > 100 and int8[1]["op"] == "CONV_2D" and int8[-1]["op"] == "SOFTMAX"
    assert all(-1.0 <= r["cosine"] <= 1.0 + 1e-9 and r["rel_max_diff"] >= 0 for r in int8)
    assert int8[1]["cosine"] > 0.999                        # the first conv is fine in both
    assert first_drops(int16, below=0.99) == []             # 16-bit activations: no layer falls below 0.99
    assert first_drops(int8, below=0.999)                   # per-tensor int8 loses accuracy somewhere
    assert min(r["cosine"] for r in int16) > min(r["cosine"] for r in int8)


def test_nudenet_int16x8_passes_the_gate_where_int8_is_refused(tmp_path):
    path = extract("nudenet-320n", tmp_path, "320n.onnx")
    cal, val = Dataset({"images": blobs(8, 0)}), Dataset({"images": blobs(3, 1)})
    rep = convert_tflite(path, load_profile("pixel-8"), tmp_path / "out", precision="int16x8",
                         calibration=cal, validation=val)
    (m,) = rep["candidates"][-1]["outputs"].values()
    assert rep["precision"] == "int16x8" and m["relative_max_diff"] < 0.1 and m["cosine"] > 0.9999
    assert (tmp_path / "out" / "pixel-8" / "model.tflite").exists()


def test_inspect_layerwise_cli_reports_layers_and_refuses_a_tflite(cls_model, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli.main import cli

    np.savez(tmp_path / "cal.npz", x=text_lines(8, 48, 192, 1, True))
    res = CliRunner().invoke(cli, ["inspect", str(cls_model), "--layerwise", str(tmp_path / "cal.npz"),
                                   "--precision", "int16x8", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["precision"] == "int16x8" and len(out["layers"]) > 100
    assert out["layers"][-1]["op"] == "SOFTMAX" and out["layers"][-1]["cosine"] > 0.99
    tfl = tmp_path / "cls.tflite"
    convert_onnx_to_tflite(cls_model, tfl, input_shapes={"x": [1, 3, 48, 192]})
    res = CliRunner().invoke(cli, ["inspect", str(tfl), "--layerwise", str(tmp_path / "cal.npz"), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 2 and json.loads(res.output)["error"]["code"] == "usage"
    assert "ONNX source" in json.loads(res.output)["error"]["message"]
