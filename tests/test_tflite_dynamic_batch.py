"""A resizable batch inside TFLite artifacts (shape_signature -1), proven by a batch-of-3 check:
the sample model and PP-OCR cls get one, nudenet's YOLOv8 head cannot (kept at batch 1, with the
reason), static-shape profiles refuse the request, and the agent's runner serves a batch in one
invocation."""

from __future__ import annotations


import numpy as np
import pytest

from agent.runtime import TfliteRunner
from converters.wheel_models import extract
from converters.tflite import convert_onnx_to_tflite
from converters.tflite.reader import read_tflite
from converters.tflite_pipeline import convert_tflite
from edgekit.core.errors import UsageError
from edgekit.core.profiles import load_profile
from edgekit.demo import SAMPLES
from converters.synthetic import blobs, text_lines

MODEL = SAMPLES / "digits_cnn.onnx"


def test_the_phone_artifact_takes_any_batch_in_one_invocation(datasets, tmp_path):
    cal, val = datasets
    rep = convert_tflite(MODEL, load_profile("pixel-8"), tmp_path, precision="int8-static",
                         calibration=cal, validation=val, dynamic_batch=True)
    assert rep["batch"] == {"dynamic": True} and rep["candidates"][-1]["passed"]
    path = tmp_path / "pixel-8" / "model.tflite"
    (inp,) = read_tflite(path)["inputs"]
    assert inp["shape"] == [1, 8, 8, 1] and inp["shape_signature"] == [-1, 8, 8, 1]
    x = val.inputs["input"][:5].transpose(0, 2, 3, 1).copy()
    runner = TfliteRunner(path, 1)
    batched = runner.run({"input": x})["logits"]
    assert runner._in[0]["shape"][0] == 5              # resized once, not served row by row
    rows = np.concatenate([TfliteRunner(path, 1).run({"input": x[i:i + 1]})["logits"] for i in range(5)])
    np.testing.assert_array_equal(batched, rows)


def test_a_static_shape_profile_refuses_a_dynamic_batch(datasets, tmp_path):
    cal, val = datasets
    with pytest.raises(UsageError, match="static shapes"):
        convert_tflite(MODEL, load_profile("arduino-nano-33-ble-sense"), tmp_path, precision="int8-full",
                       calibration=cal, validation=val, dynamic_batch=True)
    assert not (tmp_path / "arduino-nano-33-ble-sense").exists()


def test_real_models_get_a_dynamic_batch_only_where_the_check_passes(tmp_path):
    extract("ppocr-cls", tmp_path, "cls.onnx")
    extract("nudenet-320n", tmp_path, "320n.onnx")
    cls = convert_onnx_to_tflite(tmp_path / "cls.onnx", tmp_path / "cls.tflite", precision="int8-full",
                                 calibration={"x": text_lines(4, 48, 192, 1)}, input_shapes={"x": [1, 3, 48, 192]},
                                 io_layout="nhwc", dynamic_batch=True)
    assert cls["batch"] == {"dynamic": True}
    yolo = convert_onnx_to_tflite(tmp_path / "320n.onnx", tmp_path / "320n.tflite", io_layout="nhwc",
                                  input_shapes={"images": [1, 3, 320, 320]}, dynamic_batch=True)
    assert yolo["batch"]["dynamic"] is False and "batch 3" in yolo["batch"]["reason"]
    (inp,) = read_tflite(tmp_path / "320n.tflite")["inputs"]
    assert inp["shape_signature"] == [1, 320, 320, 3]        # the batch-1 artifact, unchanged
    out = TfliteRunner(tmp_path / "320n.tflite", 1).run({"images": blobs(2, 0).transpose(0, 2, 3, 1).copy()})
    assert out["output0"].shape == (2, 22, 2100)             # served row by row
