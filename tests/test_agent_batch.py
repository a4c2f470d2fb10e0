"""``edgekit-agent batch IN_DIR OUT_FILE``: real CLI subprocesses on a flashed sample model,
outputs compared with onnxruntime run directly on the installed artifact; bad input refused with
specific exit codes and no output file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgekit.demo import SAMPLES, provision_device


def cli(cfg, *args):
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def flashed(tmp_path, keystore, make_bundle):
    cfg = provision_device(tmp_path / "dev", "dev-batch", "raspberry-pi-4", 1883, keystore.root_path)
    assert cli(cfg, "install", str(make_bundle(version="1.0.0", release=600))).returncode == 0
    return cfg


def test_batch_matches_onnxruntime_and_reports_throughput(flashed, tmp_path):
    with np.load(SAMPLES / "validation.npz") as data:
        x = data["input"].astype(np.float32)
    ind = tmp_path / "in"
    ind.mkdir()
    np.save(ind / "a.npy", x[:5])
    np.savez(ind / "b.npz", input=x[5:12])
    (ind / "notes.txt").write_text("ignored")
    out = cli(flashed, "batch", str(ind), str(tmp_path / "out.npz"), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["files"] == 2 and summary["samples"] == 12 and summary["throughput_per_s"] > 0
    assert summary["model"] == "digits-cnn" and summary["outputs"] == {"a/logits": [5, 10], "b/logits": [7, 10]}
    model = flashed.parent / "data" / "current" / "model.onnx"
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with np.load(tmp_path / "out.npz") as res:
        assert np.allclose(res["a/logits"], ref.run(None, {"input": x[:5]})[0], atol=1e-5)
        assert np.allclose(res["b/logits"], ref.run(None, {"input": x[5:12]})[0], atol=1e-5)
    human = cli(flashed, "batch", str(ind), str(tmp_path / "out2.npz"))
    assert human.returncode == 0 and "12 samples from 2 files" in human.stdout and "2/2" in human.stderr


@pytest.mark.parametrize("case, code, message", [
    ("empty", 2, "holds no .npy or .npz files"),
    ("missing", 2, "does not exist"),
    ("garbage", 2, "not a readable numpy file"),
    ("wrong_key", 2, "lacks model input(s) ['input']"),
    ("wrong_shape", 4, "bad.npy, samples 0-2"),
])
def test_bad_input_is_refused_and_nothing_is_written(flashed, tmp_path, case, code, message):
    ind = tmp_path / "in"
    if case != "missing":
        ind.mkdir()
    np.save(ind / "a.npy", np.zeros((2, 1, 8, 8), np.float32)) if case in ("garbage", "wrong_key") else None
    if case == "garbage":
        (ind / "bad.npy").write_bytes(b"not numpy")
    elif case == "wrong_key":
        np.savez(ind / "bad.npz", pixels=np.zeros((2, 1, 8, 8), np.float32))
    elif case == "wrong_shape":
        np.save(ind / "bad.npy", np.zeros((3, 1, 9, 9), np.float32))
    out = cli(flashed, "batch", str(ind), str(tmp_path / "out.npz"))
    assert out.returncode == code, (out.returncode, out.stderr)
    assert message in out.stderr, out.stderr
    assert not (tmp_path / "out.npz").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_batch_without_an_installed_model(tmp_path, keystore):
    cfg = provision_device(tmp_path / "dev", "dev-empty", "raspberry-pi-4", 1883, keystore.root_path)
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", np.zeros((1, 1, 8, 8), np.float32))
    out = cli(cfg, "batch", str(tmp_path / "in"), str(tmp_path / "out.npz"))
    assert out.returncode == 4 and "no model installed" in out.stderr and "edgekit-agent install" in out.stderr
