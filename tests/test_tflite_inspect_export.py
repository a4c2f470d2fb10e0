"""`edgekit inspect` on our and third-party (mediapipe 0.10.21) .tflite files and on ONNX; runtime
compatibility flags; `edgekit export --format c-array` for TensorFlow Lite Micro, compiled with gcc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agent.runtime import TfliteRunner
from converters.tflite.micro import TFLM_RESOLVER
from converters.tflite_pipeline import convert_tflite
from edgekit.cli.main import cli
from edgekit.core.errors import ModelError
from edgekit.core.profiles import load_profile, load_profile_file, profiles_dir
from edgekit.demo import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
MEDIAPIPE = (Path(os.environ.get("EDGEKIT_WHEEL_CACHE", ROOT / ".cache" / "wheels"))
             / "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl")
CUSTOM_OP_MODELS = {"face_landmark_with_attention.tflite"}   # MediaPipe's own custom ops


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def mediapipe(tmp_path_factory):
    out = tmp_path_factory.mktemp("mediapipe")
    with zipfile.ZipFile(MEDIAPIPE) as whl:     # a missing wheel fails the test: run scripts/setup.sh
        for info in whl.infolist():
            if info.filename.endswith(".tflite"):
                (out / Path(info.filename).name).write_bytes(whl.read(info))
    files = sorted(out.glob("*.tflite"))
    assert len(files) == 14
    return files


@pytest.fixture(scope="module")
def converted(tmp_path_factory, datasets):
    cal, val = datasets
    out = tmp_path_factory.mktemp("tflite-models")
    # forced precisions: `auto` may keep fp32 when int8 measures slower on a loaded machine, and the
    # assertions below are about the integer model's ops and versions
    for pid, precision in (("pixel-8", "int8-static"), ("arduino-nano-33-ble-sense", "int8-full")):
        convert_tflite(SAMPLES / "digits_cnn.onnx", load_profile(pid), out, precision=precision, calibration=cal,
                       validation=val)
    return out


def test_every_mediapipe_model_inspects_and_the_builtin_ones_run_on_the_agent_runtime(mediapipe):
    ran, refused = [], []
    for path in mediapipe:
        res = run("inspect", path, "--json")
        assert res.exit_code == 0, (path.name, res.output)
        rep = json.loads(res.stdout)
        assert rep["format"] == "tflite" and rep["size_bytes"] == path.stat().st_size and rep["ops"]
        assert rep["memory"]["arena_bytes"] >= rep["memory"]["live_bytes_lower_bound"] > 0
        assert all(o["version"] >= 1 for o in rep["ops"])
        try:
            runner = TfliteRunner(path, 1)
        except ModelError as exc:
            assert "custom op" in exc.message
            refused.append(path.name)
            continue
        inputs = {d["name"]: np.random.default_rng(0).random(d["shape"]).astype(d["dtype"]) for d in runner._in}
        outputs = runner.run(inputs)
        assert set(outputs) == set(runner.output_names)
        assert all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind == "f")
        ran.append(path.name)
    assert set(refused) == CUSTOM_OP_MODELS and len(ran) == 13


def test_inspect_reports_ops_versions_quantization_and_memory(converted):
    res = run("inspect", converted / "arduino-nano-33-ble-sense" / "model.tflite", "--json",
              "--profile", "arduino-nano-33-ble-sense")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert {"op": "CONV_2D", "version": 3, "count": 2} in rep["ops"]
    assert rep["inputs"][0]["dtype"] == "int8" and "scale" in rep["inputs"][0]["quantization"]
    weights = [t for t in rep["tensors"] if t["constant"] and t["dtype"] == "int8" and len(t["shape"]) == 4]
    assert weights and all(t["quantization"]["axis"] == 0 for t in weights)     # per-channel conv weights
    assert rep["memory"]["word_bits"] == 32 and rep["issues"] == []


def test_inspect_flags_op_versions_an_old_runtime_cannot_run(converted, mediapipe):
    res = run("inspect", converted / "pixel-8" / "model.tflite", "--runtime", "1.13", "--json")
    assert res.exit_code == 4
    err = json.loads(res.stderr)["error"]
    assert err["code"] == "unsupported_op" and "CONV_2D v3 needs TF Lite 1.14.0" in err["message"]
    palm = next(p for p in mediapipe if p.name == "palm_detection_lite.tflite")
    res = run("inspect", palm, "--runtime", "tflite-runtime==2.1")
    assert res.exit_code == 4 and "RESIZE_BILINEAR v3 needs TF Lite 2.2.0" in res.output + res.stderr
    assert run("inspect", palm, "--runtime", "2.14").exit_code == 0


def test_inspect_flags_what_a_microcontroller_cannot_run(mediapipe):
    selfie = next(p for p in mediapipe if p.name == "selfie_segmentation.tflite")
    res = run("inspect", selfie, "--profile", "arduino-nano-33-ble-sense", "--json")
    assert res.exit_code == 4
    whats = {i["what"]: i for i in json.loads(res.stdout)["issues"]}
    assert {"op_not_supported", "dtype", "ram_budget"} <= set(whats)
    assert "RAM budget is 131072" in whats["ram_budget"]["reason"]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "damaged TFLite file"),
    (lambda b: b[:4] + b"ONNX" + b[8:], "not a TFLite flatbuffer"),
    (lambda b: b"", "not a TFLite flatbuffer"),
])
def test_corrupt_tflite_is_a_specific_error(converted, tmp_path, damage, message):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(damage((converted / "pixel-8" / "model.tflite").read_bytes()))
    res = run("inspect", bad, "--json")
    assert res.exit_code == 4
    err = json.loads(res.stderr)["error"]
    assert err["code"] == "model" and message in err["message"] and "bad.tflite" in err["message"] and err["hint"]


def test_inspect_onnx_lists_ops_the_tflite_writer_lacks(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Einsum", ["x", "x"], ["y"], name="mix", equation="ij,ij->ij")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "e.onnx"))
    res = run("inspect", tmp_path / "e.onnx", "--profile", "pixel-8", "--json")
    assert res.exit_code == 4
    (issue,) = json.loads(res.stdout)["issues"]
    assert issue["where"] == "Einsum node 'mix'"
    ok = run("inspect", SAMPLES / "digits_cnn.onnx", "--profile", "pixel-8", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["opset"] >= 7


def test_export_c_array_compiles_and_holds_the_exact_aligned_model(converted, tmp_path):
    model = converted / "arduino-nano-33-ble-sense" / "model.tflite"
    res = run("export", model, "--format", "c-array", "-p", "arduino-nano-33-ble-sense", "--out", tmp_path / "c",
              "--name", "digits", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    header = Path(out["header"]).read_text()
    for op in ("CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE"):
        assert f"resolver.{TFLM_RESOLVER[op]}()" in header
    assert "MicroMutableOpResolver<DIGITS_OP_COUNT>" in header and "#define DIGITS_OP_COUNT 4" in header
    assert f"#define DIGITS_TENSOR_ARENA_SIZE {out['recommended_arena_bytes']}" in header
    assert out["arena"]["arena_bytes"] <= out["recommended_arena_bytes"] <= out["ram_budget_bytes"]
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to prove the generated C is valid (apt-get install gcc)")
    main = tmp_path / "c" / "main.c"
    main.write_text("""#include <stdint.h>
#include <stdio.h>
#include "digits_model_data.h"
int main(void) {
  if (((uintptr_t)digits_tflite) % 16 != 0) return 2;
  fwrite(digits_tflite, 1, digits_tflite_len, stdout);
  return 0;
}
""")
    exe = tmp_path / "c" / "dump"
    subprocess.run([gcc, "-std=c11", "-Wall", "-Werror", "-pedantic", str(main), out["source"], "-o", str(exe)],
                   check=True, capture_output=True)
    dumped = subprocess.run([str(exe)], check=True, capture_output=True).stdout
    assert dumped == model.read_bytes()


def test_export_refuses_a_model_over_the_ram_budget_and_writes_nothing(converted, tmp_path):
    text = (profiles_dir() / "arduino-nano-33-ble-sense.toml").read_text()
    text = text.replace("model_ram_budget_bytes = 131072", "model_ram_budget_bytes = 1024")
    text = text.replace("max_peak_memory_bytes = 131072", "max_peak_memory_bytes = 1024")
    (tmp_path / "arduino-nano-33-ble-sense.toml").write_text(text)
    load_profile_file(tmp_path / "arduino-nano-33-ble-sense.toml")        # still a valid profile
    res = run("export", converted / "arduino-nano-33-ble-sense" / "model.tflite", "-p",
              tmp_path / "arduino-nano-33-ble-sense.toml", "--out", tmp_path / "c", "--json")
    assert res.exit_code == 4
    err = json.loads(res.stderr)["error"]
    assert err["code"] == "target_fit" and "tensor arena" in err["message"] and "RAM budget is 1024" in err["message"]
    assert not (tmp_path / "c").exists()


def test_export_refuses_unsupported_ops_and_non_micro_profiles(converted, mediapipe, tmp_path):
    selfie = next(p for p in mediapipe if p.name == "selfie_segmentation.tflite")
    res = run("export", selfie, "-p", "esp32-s3", "--out", tmp_path / "c", "--json")
    assert res.exit_code == 4 and json.loads(res.stderr)["error"]["code"] == "unsupported_op"
    assert "Convolution2DTransposeBias" in json.loads(res.stderr)["error"]["message"]
    res = run("export", converted / "pixel-8" / "model.tflite", "-p", "pixel-8", "--out", tmp_path / "c")
    assert res.exit_code == 2 and "not TensorFlow Lite Micro" in res.stderr
    assert not (tmp_path / "c").exists()


def test_inspect_onnx_names_dynamic_dimensions_a_static_target_cannot_take(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dyn.onnx"))
    res = run("inspect", tmp_path / "dyn.onnx", "--profile", "arduino-nano-33-ble-sense", "--json")
    assert res.exit_code == 4
    err = json.loads(res.stderr)["error"]
    assert err["code"] == "target_fit" and "input 'image'" in err["message"] and "['H', 'W']" in err["message"]
    assert "--validation" in err["message"]
    # an onnxruntime profile with dynamic shapes allowed takes it
    assert run("inspect", tmp_path / "dyn.onnx", "--profile", "x86-64-gateway").exit_code == 0
