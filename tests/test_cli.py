"""The ``edgekit`` CLI as a user types it: help, JSON output, and clear non-zero exits on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.core.profiles import profiles_dir
from edgekit.demo import SAMPLES


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return invoke


def test_help_teaches_the_flow(run):
    res = run("--help")
    assert res.exit_code == 0
    for word in ("keys init", "convert", "release", "push", "fleet ls", "edgekit demo"):
        assert word in res.output


def test_profiles_list_json_has_all_profiles(run):
    res = run("profiles", "list", "--json")
    assert res.exit_code == 0
    ids = {p["id"] for p in json.loads(res.output)}
    assert {"raspberry-pi-4", "coral-dev-board", "esp32-s3", "iphone-15"} <= ids and len(ids) >= 8


def test_profiles_validate_rejects_malformed_profile_with_field_and_reason(run, tmp_path):
    text = (profiles_dir() / "raspberry-pi-4.toml").read_text().replace("cores = 4", 'cores = "four"')
    bad = tmp_path / "raspberry-pi-4.toml"
    bad.write_text(text)
    res = run("profiles", "validate", bad)
    assert res.exit_code == 3
    assert "cpu.cores: must be int" in res.output
    assert run("profiles", "validate", profiles_dir() / "esp32-s3.toml").exit_code == 0


def test_unknown_profile_is_a_clear_error(run, tmp_path):
    res = run("convert", SAMPLES / "digits_cnn.onnx", "-p", "toaster-9000", "--calibration",
              SAMPLES / "calibration.npz", "--validation", SAMPLES / "validation.npz", "--out", tmp_path / "o")
    assert res.exit_code == 3
    assert "unknown profile 'toaster-9000'" in res.output and "raspberry-pi-4" in res.output


def test_convert_then_release_json(run, tmp_path):
    out = tmp_path / "out"
    res = run("convert", SAMPLES / "digits_cnn.onnx", "-p", "x86-64-gateway", "--precision", "int8-static",
              "--calibration", SAMPLES / "calibration.npz", "--validation", SAMPLES / "validation.npz",
              "--out", out, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)[0]
    assert report["precision"] == "int8-static" and report["size_ratio"] > 1.5
    assert report["candidates"][0]["accuracy_drop"] <= 0.005
    assert run("keys", "init", "--keys", tmp_path / "k").exit_code == 0
    res = run("release", out / "x86-64-gateway", "--name", "digits", "--version", "1.0.0", "--keys", tmp_path / "k",
              "--out", tmp_path / "b", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["bundle"].endswith("digits-1.0.0-x86-64-gateway.bundle")


def test_convert_rejects_wrong_shaped_calibration_and_leaves_nothing(run, tmp_path):
    cal = tmp_path / "cal.npz"
    np.savez(cal, input=np.zeros((4, 3, 8, 8), np.float32))
    res = run("convert", SAMPLES / "digits_cnn.onnx", "-p", "raspberry-pi-4", "--calibration", cal,
              "--validation", SAMPLES / "validation.npz", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "shape [4, 3, 8, 8]" in res.output
    assert not (tmp_path / "o" / "raspberry-pi-4").exists()


def test_convert_rejects_non_onnx_file(run, tmp_path):
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"this is not a protobuf at all" * 10)
    res = run("convert", junk, "-p", "raspberry-pi-4", "--calibration", SAMPLES / "calibration.npz",
              "--validation", SAMPLES / "validation.npz", "--out", tmp_path / "o")
    assert res.exit_code == 4 and "not a readable ONNX model" in res.output


def test_release_without_convert_says_what_to_do(run, tmp_path):
    assert run("keys", "init", "--keys", tmp_path / "k").exit_code == 0
    (tmp_path / "empty").mkdir()
    res = run("release", tmp_path / "empty", "--name", "m", "--version", "1", "--keys", tmp_path / "k")
    assert res.exit_code == 2 and "edgekit convert" in res.output


def test_keys_init_twice_refuses(run, tmp_path):
    assert run("keys", "init", "--keys", tmp_path / "k").exit_code == 0
    res = run("keys", "init", "--keys", tmp_path / "k")
    assert res.exit_code == 2 and "already exists" in res.output


def test_push_with_registry_down_exits_transport_error(make_bundle, keystore):
    registry_down_url = "http://127.0.0.1:9"
    b = make_bundle(version="1.0.0")
    res = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "push", str(b), "-d", "dev-1",
                          "--keys", str(keystore.directory),
                          "--broker", "127.0.0.1:9", "--registry", registry_down_url], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 6
    assert "cannot upload to the registry" in res.stderr and "hint:" in res.stderr


def test_fleet_ls_against_a_real_registry(run, registry):
    res = run("fleet", "ls", "--registry", registry.url, "--json")
    assert res.exit_code == 0 and json.loads(res.output) == []


@pytest.mark.integration
def test_demo_runs_end_to_end_and_exits_zero(tmp_path):
    res = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "demo", "--json", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(res.stdout)
    assert len(rows) == 3 and len({r["profile"] for r in rows}) == 3
    assert all(r["ok"] and r["model"] == "digits-cnn@1.0.0" and r["registry"].startswith("online") for r in rows)
    assert len({r["rollout"] for r in rows}) == 1  # one registry-driven rollout reached all three devices
    for r in rows:  # each device checked the registry's hosted TUF metadata before downloading (ADR 0010)
        state = json.loads((tmp_path / "devices" / r["device"] / "data" / "state.json").read_text())
        assert '"freshness": "verified"' in json.dumps(state), state


def test_push_with_broker_down_after_upload_exits_transport_error(make_bundle, registry, keystore):
    b = make_bundle(version="1.0.0")
    res = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "push", str(b), "-d", "dev-1",
                          "--keys", str(keystore.directory),
                          "--broker", "127.0.0.1:9", "--registry", registry.url], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 6
    assert "cannot reach MQTT broker at 127.0.0.1:9" in res.stderr


def test_push_without_a_key_store_says_how_to_sign(make_bundle, tmp_path):
    b = make_bundle(version="1.0.0")
    res = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "push", str(b), "-d", "dev-1",
                          "--keys", str(tmp_path / "nokeys"), "--registry", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "edgekit keys init" in res.stderr
