"""Models stored with ONNX external data (model.onnx + a weights file), through `edgekit convert`:
a small one converts like any other (weights read from the side file, the artifact is one
self-contained file, source and scratch untouched), and the 2 GB protobuf limit counts the external
weights too. The limit is simulated by lowering ``preprocess.MAX_MODEL_BYTES``, so no 2 GB file is written."""

from __future__ import annotations

import hashlib
import json

import onnx
import onnxruntime as ort

from converters import preprocess
from test_onnx_convert import CAL, MODEL, VAL, run  # noqa: F401  (run: the scratch-checking CLI fixture)


def external_copy(folder, location="weights.bin"):
    """The sample model re-saved with every initializer in one external file next to it."""
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(onnx.load(str(MODEL)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    assert (folder / location).stat().st_size > path.stat().st_size   # the weights really live outside
    return path


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_external_data_model_converts_to_a_self_contained_artifact(run, tmp_path):  # noqa: F811
    src = external_copy(tmp_path / "src")
    before = digests(src.parent)
    res = run("convert", src, "-p", "x86-64-gateway", "--precision", "int8-static", "--calibration", CAL,
              "--validation", VAL, "--out", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    assert r["precision"] == "int8-static" and r["candidates"][0]["passed"]
    assert r["source_bytes"] == src.stat().st_size + (src.parent / "weights.bin").stat().st_size
    assert r["size_ratio"] == round(r["source_bytes"] / r["artifact_bytes"], 3) > 2
    assert digests(src.parent) == before                                 # source and its weights untouched
    out = tmp_path / "out" / "x86-64-gateway"
    assert sorted(p.name for p in out.iterdir()) == ["drift.json", "golden.npz", "model.onnx", "report.json"]
    art = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in art.graph.initializer)
    # same answers as the source read through its external file
    import numpy as np

    x = np.load(VAL)["input"][:16]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_external_data_over_the_limit_is_refused_naming_both_sizes(run, tmp_path, monkeypatch):  # noqa: F811
    src = external_copy(tmp_path / "src")
    header, weights = src.stat().st_size, (src.parent / "weights.bin").stat().st_size
    # the .onnx alone is under the (lowered) limit; with its external weights it is over
    monkeypatch.setattr(preprocess, "MAX_MODEL_BYTES", header + weights // 2)
    res = run("convert", src, "-p", "x86-64-gateway", "--calibration", CAL, "--validation", VAL,
              "--out", tmp_path / "out", "--json")
    assert res.exit_code == 4, res.output
    err = json.loads(res.stderr)["error"]
    assert err["code"] == "model" and "with its external data" in err["message"]
    assert err["details"]["bytes"] == header + weights and err["details"]["external_bytes"] == weights
    assert "prune" in err["hint"] or "distil" in err["hint"]
    assert not (tmp_path / "out").exists()


def test_missing_external_weights_file_says_where_it_was_expected(run, tmp_path):  # noqa: F811
    src = external_copy(tmp_path / "src")
    (src.parent / "weights.bin").unlink()
    res = run("convert", src, "-p", "x86-64-gateway", "--calibration", CAL, "--validation", VAL,
              "--out", tmp_path / "out", "--json")
    assert res.exit_code == 4, res.output
    err = json.loads(res.stderr)["error"]
    assert err["code"] == "model" and "weights.bin" in err["message"]
    assert "next to" in err["hint"]
    assert not (tmp_path / "out").exists()


def test_external_data_pointing_outside_the_model_folder_is_refused(run, tmp_path):  # noqa: F811
    src = external_copy(tmp_path / "src")
    m = onnx.load(str(src), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(m, str(src))
    res = run("convert", src, "-p", "x86-64-gateway", "--calibration", CAL, "--validation", VAL,
              "--out", tmp_path / "out", "--json")
    assert res.exit_code == 4, res.output
    err = json.loads(res.stderr)["error"]
    assert err["code"] == "model" and "../../etc/passwd" in err["message"] and "outside the model's folder" in err["message"]
    assert not (tmp_path / "out").exists()
