"""`edgekit convert` for TFLite profiles: precision choice through the parity gate against
onnxruntime, the artifact's own I/O layout/dtype in report and golden vectors, refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, save

from converters.tflite_pipeline import convert_tflite
from edgekit.cli.main import cli
from edgekit.core import parity
from edgekit.core.errors import ParityError, UsageError
from edgekit.core.profiles import load_profile, load_profile_file, profiles_dir
from edgekit.demo import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def tflite_out(tmp_path_factory, datasets):
    cal, val = datasets
    out = tmp_path_factory.mktemp("tflite-convert")
    reports = {p: convert_tflite(MODEL, load_profile(p), out, precision="auto", calibration=cal, validation=val)
               for p in ("pixel-8", "arduino-nano-33-ble-sense")}
    return out, reports


def test_report_has_the_onnx_pipeline_keys(tflite_out, artifacts):
    out, reports = tflite_out
    onnx_report = json.loads((artifacts / "fp32" / "raspberry-pi-4" / "report.json").read_text())
    for pid, rep in reports.items():
        assert set(onnx_report) <= set(rep), set(onnx_report) - set(rep)
        assert rep["format"] == "tflite" and rep["artifact"] == "model.tflite"
        assert rep["engine"] == load_profile(pid).engine
        on_disk = json.loads((out / pid / "report.json").read_text())
        assert on_disk["artifact_sha256"] == rep["artifact_sha256"]
        assert (out / pid / "model.tflite").read_bytes()[4:8] == b"TFL3"


def test_auto_picks_integer_kernels_for_the_phone_with_nhwc_float_io(tflite_out):
    out, reports = tflite_out
    rep = reports["pixel-8"]
    first = rep["candidates"][0]
    assert first["precision"] == "int8-static"          # the profile's first choice is tried first
    # it is kept unless it measured slower than fp32 (a ~0.003 ms model on a loaded machine can):
    # then the report must say exactly that, and the next precision is chosen
    if rep["precision"] != "int8-static":
        assert not first["passed"] and all("slower than fp32" in r for r in first["reasons"]), first["reasons"]
    assert rep["io_layout"] == "nhwc"
    assert rep["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 8, 8, 1], "layout": "NHWC"}]
    chosen = rep["candidates"][-1]
    assert chosen["passed"] and chosen["accuracy_drop"] <= 0.01
    assert chosen["speedup_vs_tflite_fp32"] > 0 and chosen["reference_latency_ms"] > 0
    ins, outs = parity.load_golden(out / "pixel-8" / "golden.npz")
    assert ins["input"].shape == (8, 8, 8, 1) and ins["input"].dtype == np.float32      # NHWC golden vectors
    val = np.load(SAMPLES / "validation.npz")["input"][:8]
    np.testing.assert_array_equal(ins["input"], val.transpose(0, 2, 3, 1))


def test_mcu_gets_int8_io_and_golden_vectors_in_int8(tflite_out):
    out, reports = tflite_out
    rep = reports["arduino-nano-33-ble-sense"]
    assert rep["precision"] == "int8-full" and rep["engine"] == "tflite-micro"
    (inp,), (outp,) = rep["inputs"], rep["outputs"]
    assert inp["dtype"] == "int8" and inp["shape"] == [1, 8, 8, 1] and 0 < inp["quantization"]["scale"] < 1
    assert outp["dtype"] == "int8"
    ins, outs = parity.load_golden(out / "arduino-nano-33-ble-sense" / "golden.npz")
    assert ins["input"].dtype == np.int8 and outs["logits"].dtype == np.int8 and len(ins["input"]) == 2
    ops = {o["op"] for o in rep["candidates"][-1]["ops"]}
    assert ops <= set(load_profile("arduino-nano-33-ble-sense").raw["runtime"]["op_allowlist"])
    memory = rep["candidates"][-1]["memory"]
    assert memory["word_bits"] == 32 and 0 < memory["arena_bytes"] <= 131072
    # the golden int8 outputs dequantize to the float model's answers
    q = outp["quantization"]
    logits = (outs["logits"].astype(np.float32) - q["zero_point"]) * q["scale"]
    labels = np.load(SAMPLES / "validation.npz")["label"][:2]
    assert (np.argmax(logits, axis=1) == labels).all()


def test_fp32_meets_the_1e4_parity_bar(datasets, tmp_path):
    cal, val = datasets
    rep = convert_tflite(MODEL, load_profile("pixel-watch-2"), tmp_path, precision="fp32",
                         calibration=cal, validation=val)
    (m,) = rep["candidates"][-1]["outputs"].values()
    assert rep["precision"] == "fp32" and m["relative_max_diff"] <= 1e-4


def test_int8_dynamic_stores_int8_weights_and_computes_in_float(datasets, tmp_path):
    cal, val = datasets
    rep = convert_tflite(MODEL, load_profile("pixel-8"), tmp_path, precision="int8-dynamic", calibration=cal,
                         validation=val)
    entry = rep["candidates"][-1]
    assert rep["precision"] == "int8-dynamic" and entry["passed"]
    assert {"op": "DEQUANTIZE", "version": 5, "count": 2} in entry["ops"]      # per-channel conv weights
    assert {"op": "DEQUANTIZE", "version": 2, "count": 1} in entry["ops"]      # per-tensor FC weights
    assert rep["inputs"][0]["dtype"] == "float32" and rep["artifact_bytes"] < 0.5 * rep["source_bytes"]
    (m,) = entry["outputs"].values()
    assert m["cosine"] > 0.9999


def _profile_copy(tmp_path, base: str, **budgets):
    text = (profiles_dir() / f"{base}.toml").read_text()
    for key, value in budgets.items():
        text = "\n".join(f"{key} = {value}" if line.startswith(f"{key} ") else line for line in text.splitlines())
    path = tmp_path / f"{base}.toml"
    path.write_text(text)
    return load_profile_file(path)


def test_a_model_over_budget_is_refused_and_nothing_is_written(datasets, tmp_path):
    cal, val = datasets
    profile = _profile_copy(tmp_path, "pixel-8", max_model_bytes=1000)
    with pytest.raises(ParityError, match="size .* bytes > budget 1000") as info:
        convert_tflite(MODEL, profile, tmp_path / "out", precision="auto", calibration=cal, validation=val)
    assert [c["precision"] for c in info.value.details["report"]] == ["int8-static", "int8-dynamic", "fp16", "fp32"]
    assert not (tmp_path / "out" / "pixel-8").exists()


def test_precision_the_profile_does_not_allow_is_a_usage_error(datasets, tmp_path):
    cal, val = datasets
    with pytest.raises(UsageError, match="does not allow precision 'fp32'"):
        convert_tflite(MODEL, load_profile("arduino-nano-33-ble-sense"), tmp_path, precision="fp32",
                       calibration=cal, validation=val)
    with pytest.raises(UsageError, match="runs onnxruntime"):
        convert_tflite(MODEL, load_profile("raspberry-pi-4"), tmp_path, precision="fp32",
                       calibration=cal, validation=val)


def test_cli_refuses_an_unsupported_op_with_a_per_node_report(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Einsum", ["r", "w"], ["y"], name="mix", equation="bi,ij->bj")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))])
    model = tmp_path / "einsum.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32))
    res = CliRunner().invoke(cli, ["convert", str(model), "-p", "pixel-8", "--calibration", str(tmp_path / "d.npz"),
                                   "--validation", str(tmp_path / "d.npz"), "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 4
    err = json.loads(res.stderr if hasattr(res, "stderr") else res.output)["error"]
    assert err["code"] == "unsupported_op"
    assert err["details"]["unsupported"] == [{"node": "mix", "op": "Einsum",
                                             "reason": "no TFLite translation for Einsum"}]
    assert not (tmp_path / "out").exists()


def test_cli_convert_for_a_tflite_profile(tmp_path):
    shutil.copy(MODEL, tmp_path / "m.onnx")
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m.onnx"), "-p", "coral-dev-board",
                                   "--calibration", str(SAMPLES / "calibration.npz"),
                                   "--validation", str(SAMPLES / "validation.npz"), "--out", str(tmp_path / "o"),
                                   "--json"])
    assert res.exit_code == 0, res.output
    (rep,) = json.loads(res.stdout)
    assert rep["precision"] == "int8-full" and rep["inputs"][0]["dtype"] == "int8"
    assert (tmp_path / "o" / "coral-dev-board" / "model.tflite").exists()


def test_convert_refuses_what_the_mcu_cannot_hold(datasets, tmp_path):
    cal, val = datasets
    profile = _profile_copy(tmp_path, "arduino-nano-33-ble-sense", model_ram_budget_bytes=1024,
                            max_peak_memory_bytes=1024)
    with pytest.raises(ParityError, match="tensor arena: needs about .* the RAM budget is 1024 bytes"):
        convert_tflite(MODEL, profile, tmp_path / "out", precision="auto", calibration=cal, validation=val)
    assert not (tmp_path / "out" / "arduino-nano-33-ble-sense").exists()


def test_cli_refuses_a_calibration_method_the_tflite_writer_does_not_have_before_any_work(tmp_path):
    """A named method other than MinMax is refused for TFLite profiles (it used to be ignored), before
    the ONNX profile of the same run is converted."""
    shutil.copy(MODEL, tmp_path / "m.onnx")
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m.onnx"), "-p", "x86-64-gateway", "-p", "pixel-8",
                                   "--calibration-method", "percentile",
                                   "--calibration", str(SAMPLES / "calibration.npz"),
                                   "--validation", str(SAMPLES / "validation.npz"), "--out", str(tmp_path / "o"),
                                   "--json"])
    assert res.exit_code == 2
    err = json.loads(res.stderr if hasattr(res, "stderr") else res.output)["error"]
    assert "percentile is not available for pixel-8" in err["message"] and "auto" in err["hint"]
    assert not (tmp_path / "o").exists()     # the x86-64-gateway conversion did not start either
