"""`edgekit convert` for ONNX profiles on the project's sample model: recipes, pre-processing,
profile checks, report contents, and every bad-input path (specific error, non-zero exit,
nothing left in OUT/<profile>, source untouched)."""

from __future__ import annotations

import hashlib
import json
import tempfile

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekit.cli.main import cli
from edgekit.core.profiles import profiles_dir
from edgekit.demo import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"
CAL, VAL = SAMPLES / "calibration.npz", SAMPLES / "validation.npz"


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the CLI with a private temp dir, so we can prove scratch space is cleaned."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    runner = CliRunner()

    def invoke(*args):
        res = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert list(scratch.iterdir()) == [], "scratch files left behind"
        return res
    return invoke


def make_profile(tmp_path, base="x86-64-gateway", new_id="test-board", **edits) -> str:
    """A copy of a bundled profile with TOML lines replaced: edits = {"key = old": "key = new"}."""
    text = (profiles_dir() / f"{base}.toml").read_text().replace(f'id = "{base}"', f'id = "{new_id}"')
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{new_id}.toml"
    path.write_text(text)
    return str(path)


def convert(run, tmp_path, *args, model=MODEL, cal=CAL, val=VAL):
    return run("convert", model, "--calibration", cal, "--validation", val, "--out", tmp_path / "out", *args)


def mlp_model(path, opset=17):
    """A MatMul-only classifier whose answer is clear: logits ~ relu(x)[:10] (x = noise + 3·one-hot)."""
    rng = np.random.default_rng(0)
    w1 = np.concatenate([np.eye(64), -np.eye(64)], axis=1) + rng.normal(0, 0.01, (64, 128))
    w2 = np.zeros((128, 10)) + rng.normal(0, 0.01, (128, 10))
    w2[np.arange(10), np.arange(10)] += 1.0
    w1 = numpy_helper.from_array(w1.astype(np.float32), "w1")
    w2 = numpy_helper.from_array(w2.astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def mlp_data(path, n=64):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.3, (n, 64)).astype(np.float32)
    x[np.arange(n), np.arange(n) % 10] += 3.0
    np.savez(path, input=x)
    return path


# --- recipes -------------------------------------------------------------------------------------

def test_int8_static_report_has_figures_steps_and_budgets(run, tmp_path):
    before = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--precision", "int8-static", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == before == r["source_sha256"]
    c = r["candidates"][0]
    assert r["precision"] == "int8-static" and c["passed"] and c["accuracy_drop"] <= 0.005
    assert c["size_ratio"] > 2 and c["ideal_size_ratio"] == 4.0
    assert c["budgets"]["peak_memory"]["complete"] and 0 < c["budgets"]["peak_memory"]["peak_bytes"] < 1_000_000
    steps = {s["step"]: s for s in r["steps"]}
    assert {"load", "simplify", "shape-inference", "build int8-static", "validate int8-static"} <= set(steps)
    assert all(s["peak_rss_bytes"] > 10_000_000 and s["seconds"] >= 0 for s in r["steps"])
    art = onnx.load(str(tmp_path / "out" / "x86-64-gateway" / "model.onnx"))
    ops = {n.op_type for n in art.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ConvInteger" not in ops
    saved = json.loads((tmp_path / "out" / "x86-64-gateway" / "report.json").read_text())
    assert saved["artifact_sha256"] == hashlib.sha256((tmp_path / "out" / "x86-64-gateway" / "model.onnx")
                                                      .read_bytes()).hexdigest()


def test_readable_table_shows_ratio_latency_parity_and_steps(run, tmp_path):
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--precision", "int8-static")
    assert res.exit_code == 0, res.output
    for word in ("X_SMALLER", "X_FASTER", "COSINE", "PEAK_MB", "chosen", "PEAK_RSS_MB", "build int8-static",
                 "edgekit release"):
        assert word in res.output


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods_produce_passing_int8(run, tmp_path, method):
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--precision", "int8-static", "--calibration-method",
                  method, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    assert r["calibration_method"] == method and r["candidates"][0]["accuracy_drop"] <= 0.01


def test_fp16_keeps_float_io_and_passes_parity(run, tmp_path):
    res = convert(run, tmp_path, "-p", "jetson-orin-nano", "--precision", "fp16", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    assert r["precision"] == "fp16" and r["candidates"][0]["ideal_size_ratio"] == 2.0
    art = onnx.load(str(tmp_path / "out" / "jetson-orin-nano" / "model.onnx"))
    assert art.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in art.graph.initializer)


def test_int8_dynamic_quantizes_matmul_only(run, tmp_path):
    model = mlp_model(tmp_path / "mlp.onnx")
    data = mlp_data(tmp_path / "mlp.npz")
    prof = make_profile(tmp_path, **{'precisions = ["int8-static", "fp32"]': 'precisions = ["int8-dynamic", "fp32"]'})
    res = convert(run, tmp_path, "-p", prof, "--precision", "int8-dynamic", "--json", model=model, cal=data, val=data)
    assert res.exit_code == 0, res.output
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "test-board" / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops or "DynamicQuantizeLinear" in ops
    assert "ConvInteger" not in ops


def test_int8_dynamic_is_refused_on_conv_graphs(run, tmp_path):
    prof = make_profile(tmp_path, **{'precisions = ["int8-static", "fp32"]': 'precisions = ["int8-dynamic", "fp32"]'})
    res = convert(run, tmp_path, "-p", prof, "--precision", "int8-dynamic")
    assert res.exit_code == 4 and "ConvInteger" in res.output
    assert not (tmp_path / "out" / "test-board").exists()
    res = convert(run, tmp_path, "-p", prof, "--json")   # auto: skipped with the reason, fp32 chosen
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    assert r["precision"] == "fp32"
    assert r["candidates"][0]["skipped"] and "ConvInteger" in r["candidates"][0]["reasons"][0]


def test_old_opset_is_upgraded_before_quantization(run, tmp_path):
    old = mlp_model(tmp_path / "mlp_op11.onnx", opset=11)
    data = mlp_data(tmp_path / "mlp.npz")
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--precision", "int8-static", "--json", model=old,
                  cal=data, val=data)
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    assert r["source_opset"] == 11 and r["opset"] >= 13
    assert any(s["step"] == "upgrade-opset" for s in r["steps"])


def test_static_shape_profile_fixes_input_shapes(run, tmp_path):
    prof = make_profile(tmp_path, **{"static_shapes = false": "static_shapes = true"})
    res = convert(run, tmp_path, "-p", prof, "--precision", "fp32", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["fixed_input_shapes"] == {"input": [1, 1, 8, 8]}
    dims = onnx.load(str(tmp_path / "out" / "test-board" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 8, 8]


def test_input_shape_option_fixes_shape_and_rejects_bad_specs(run, tmp_path):
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--precision", "fp32", "--input-shape", "input:1,1,8,8",
                  "--json")
    assert res.exit_code == 0 and json.loads(res.output)[0]["fixed_input_shapes"] == {"input": [1, 1, 8, 8]}
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--input-shape", "input:1,1,16,16")
    assert res.exit_code == 2 and "fixes it to [1, 1, 16, 16]" in res.output
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--input-shape", "input=1x8")
    assert res.exit_code == 2 and "NAME:D1,D2" in res.output
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--input-shape", "pixels:1,1,8,8")
    assert res.exit_code == 2 and "pixels" in res.output and "'input'" in res.output


def test_auto_drops_failing_candidate_and_says_why(run, tmp_path):
    prof = make_profile(tmp_path, **{"min_cosine = 0.99": "min_cosine = 0.9999999"})
    res = convert(run, tmp_path, "-p", prof, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    assert r["precision"] == "fp32"
    dropped = r["candidates"][0]
    assert dropped["precision"] == "int8-static" and not dropped["passed"]
    assert any("cosine" in reason for reason in dropped["reasons"])


# --- bad input -----------------------------------------------------------------------------------

def test_forced_precision_failing_parity_exits_with_numbers(run, tmp_path):
    prof = make_profile(tmp_path, **{"min_cosine = 0.99": "min_cosine = 0.9999999"})
    res = convert(run, tmp_path, "-p", prof, "--precision", "int8-static", "--json")
    assert res.exit_code == 4
    err = json.loads(res.stderr)["error"]
    assert err["code"] == "parity" and "cosine" in err["message"]
    assert err["details"]["report"][0]["outputs"]["logits"]["cosine"] < 0.9999999
    assert not (tmp_path / "out" / "test-board").exists()


def test_peak_memory_over_budget_fails_the_gate(run, tmp_path):
    prof = make_profile(tmp_path, **{"max_peak_memory_bytes = 1073741824": "max_peak_memory_bytes = 1000"})
    res = convert(run, tmp_path, "-p", prof, "--precision", "fp32")
    assert res.exit_code == 4 and "estimated peak memory" in res.output
    assert not (tmp_path / "out" / "test-board").exists()


def test_op_missing_from_runtime_names_node_and_op(run, tmp_path):
    prof = make_profile(tmp_path, **{"op_allowlist = []": 'op_allowlist = ["Conv", "Relu", "MaxPool", "Flatten"]'})
    res = convert(run, tmp_path, "-p", prof, "--precision", "fp32")
    assert res.exit_code == 4
    assert "uses op Gemm" in res.output and "node '" in res.output and "test-board" in res.output
    assert not (tmp_path / "out" / "test-board").exists()


def test_opset_too_old_says_how_to_upgrade(run, tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    old = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)]), str(old))
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((2, 4), np.float32))
    res = convert(run, tmp_path, "-p", "x86-64-gateway", model=old, cal=data, val=data)
    assert res.exit_code == 4 and "opset 6" in res.output and "version_converter" in res.output
    assert not (tmp_path / "out").exists()


def test_model_over_2gb_is_refused_before_loading(run, tmp_path):
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:      # sparse: no disk space used
        f.truncate(2 * 1024**3 + 1)
    res = convert(run, tmp_path, "-p", "x86-64-gateway", model=big)
    assert res.exit_code == 4 and "up to 2 GB" in res.output
    assert not (tmp_path / "out").exists()


def test_calibration_of_wrong_dtype_is_rejected(run, tmp_path):
    cal = tmp_path / "cal.npz"
    np.savez(cal, input=np.zeros((4, 1, 8, 8), np.float64))
    res = convert(run, tmp_path, "-p", "x86-64-gateway", cal=cal)
    assert res.exit_code == 2 and "float64" in res.output and "astype('float32')" in res.output
    assert not (tmp_path / "out" / "x86-64-gateway").exists()


def test_pytorch_input_without_torch_says_install_extra(run, tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"PK\x03\x04 not really a torch file")
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--input-shape", "input:1,1,8,8", model=pt)
    assert res.exit_code == 2 and "edgekit[torch]" in res.output


def test_unknown_precision_for_profile_is_a_usage_error(run, tmp_path):
    res = convert(run, tmp_path, "-p", "raspberry-pi-4", "--precision", "fp16")
    assert res.exit_code == 2 and "does not allow precision 'fp16'" in res.output


# --- image folders ---------------------------------------------------------------------------------

def test_image_folder_calibration_with_declared_preprocessing(run, tmp_path):
    from PIL import Image

    digits = np.load(VAL)["input"][:20]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, d in enumerate(digits):   # sample digits are 0..16 grey levels
        Image.fromarray((d[0] * 255 / 16).astype(np.uint8), "L").save(folder / f"{i:03d}.png")
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--precision", "int8-static", cal=folder)
    assert res.exit_code == 2 and "--preprocess" in res.output
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--precision", "int8-static", "--preprocess",
                  "resize=8x8,scale=16/255,color=L,layout=NCHW", "--max-samples", "12", "--json", cal=folder)
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    assert r["calibration_samples"] == 12 and r["candidates"][0]["accuracy_drop"] <= 0.01
    res = convert(run, tmp_path, "-p", "x86-64-gateway", "--preprocess", "resize=8x8,zoom=2", cal=folder)
    assert res.exit_code == 2 and "unknown key 'zoom'" in res.output


def test_failing_simplifier_is_skipped_with_reason(tmp_path, monkeypatch, datasets):
    import onnxslim

    from converters.onnx_pipeline import convert_onnx
    from edgekit.core.profiles import load_profile

    def broken(*a, **k):
        raise RuntimeError("simulated onnxslim crash")
    monkeypatch.setattr(onnxslim, "slim", broken)
    cal, val = datasets
    r = convert_onnx(MODEL, load_profile("x86-64-gateway"), tmp_path, precision="int8-static", calibration=cal,
                     validation=val)
    step = next(s for s in r["steps"] if s["step"] == "simplify")
    assert step["status"].startswith("skipped: onnxslim failed") and "simulated" in step["status"]
    assert r["precision"] == "int8-static" and (tmp_path / "x86-64-gateway" / "model.onnx").exists()
