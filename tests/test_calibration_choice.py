"""The default static int8 path's choice of calibration method (converters.calibration_choice,
ADR 0013 amendment 1): the rule on its own (fast), then on the real sample model through the CLI,
with calibration data carrying one outlier pixel so MinMax misses the profile's min_cosine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from converters import calibration_choice as cc
from edgekit.cli.main import cli
from edgekit.demo import SAMPLES


def entry(passed: bool, cosine: float) -> dict:
    return {"passed": passed, "outputs": {"a": {"cosine": 0.9999}, "b": {"cosine": cosine}}}


def test_auto_builds_minmax_then_percentile_for_static_int8_only():
    assert cc.methods_for("int8-static", "auto") == ("minmax", "percentile")
    assert cc.methods_for("fp32", "auto") == ("minmax",)
    assert cc.methods_for("int8-static", "entropy") == ("entropy",)   # explicit means exactly that


def test_a_second_method_is_built_only_when_the_first_misses_min_cosine():
    assert cc.good_enough(entry(True, 0.995), 0.99)
    assert not cc.good_enough(entry(True, 0.985), 0.99)      # passed by the task metric, cosine missed
    assert not cc.good_enough(entry(False, 0.995), 0.99)     # cosine met, the answers failed (e.g. task IoU)
    slow_only = {**entry(False, 0.995), "fidelity_passed": True}  # failed only as "slower than fp32"
    assert cc.good_enough(slow_only, 0.99)                    # no calibration changes speed: not rebuilt
    assert not cc.good_enough({**entry(False, 0.995), "fidelity_passed": False}, 0.99)
    assert cc.good_enough({"skipped": True, "passed": False}, 0.99)


@pytest.mark.parametrize("entries, keep", [
    ([entry(True, 0.974), entry(True, 0.981)], 1),      # PP-OCR det 640: both pass by IoU, percentile closer
    ([entry(True, 0.980), entry(True, 0.975)], 0),      # 320: MinMax closer, kept
    ([entry(False, 0.989), entry(True, 0.960)], 1),     # passing beats a higher cosine that fails
    ([entry(True, 0.980), entry(True, 0.980)], 0),      # tie keeps the first (MinMax)
    ([{"skipped": True, "passed": False}, entry(False, 0.5)], 1),
])
def test_keeps_the_passing_then_closest_candidate(entries, keep):
    assert cc.best(entries) == keep


@pytest.fixture(scope="module")
def outlier_data(tmp_path_factory):
    """The sample model's calibration set x10 (128k input values) with ONE pixel at 100 (inputs are in
    [0, 1]): MinMax stretches the input range 100x, the 99.999th percentile clips that pixel away."""
    d = tmp_path_factory.mktemp("outlier")
    with np.load(SAMPLES / "calibration.npz") as c:
        x = np.tile(c["input"], (10, 1, 1, 1))
    x[0, 0, 0, 0] = 100.0
    np.savez(d / "cal.npz", input=x)
    return d / "cal.npz"


def convert(tmp_path, cal, *args):
    res = CliRunner().invoke(cli, ["convert", str(SAMPLES / "digits_cnn.onnx"), "-p", "x86-64-gateway", "--calibration",
                                   str(cal), "--validation", str(SAMPLES / "validation.npz"), "--out",
                                   str(tmp_path / "out"), "--json", *args], catch_exceptions=False)
    return res


def test_default_path_builds_percentile_when_minmax_misses_and_keeps_the_closer(tmp_path, outlier_data):
    res = convert(tmp_path, outlier_data)
    assert res.exit_code == 0, res.output          # neither int8 passes: auto falls back to fp32
    r = json.loads(res.output)[0]
    int8 = [c for c in r["candidates"] if c["precision"] == "int8-static"]
    assert [c["calibration_method"] for c in int8] == ["minmax", "percentile"]
    assert cc.output_cosine(int8[0]) < 0.99 and not int8[0]["passed"]
    cos = [cc.output_cosine(c) for c in int8]
    assert [c["kept"] for c in int8] == [cos[0] >= cos[1], cos[0] < cos[1]]
    assert all(c["convert_s"] > 0 for c in int8)      # each build's time is recorded
    assert r["precision"] == "fp32" and r["calibration_method"] == "auto"


def test_forced_int8_reports_both_methods_in_the_parity_error(tmp_path, outlier_data):
    res = convert(tmp_path, outlier_data, "--precision", "int8-static")
    assert res.exit_code != 0
    err = json.loads(res.output)["error"]
    assert err["code"] == "parity", err
    assert [c["calibration_method"] for c in err["details"]["report"]] == ["minmax", "percentile"]
    assert not (tmp_path / "out" / "x86-64-gateway").exists()


def test_an_explicit_method_builds_exactly_that_one(tmp_path, outlier_data):
    res = convert(tmp_path, outlier_data, "--calibration-method", "minmax")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)[0]
    int8 = [c for c in r["candidates"] if c["precision"] == "int8-static"]
    assert [c["calibration_method"] for c in int8] == ["minmax"] and "kept" not in int8[0]


def test_a_minmax_build_whose_answers_pass_is_not_rebuilt_with_percentile(tmp_path):
    """The sample model with its own calibration data: MinMax int8 reaches min_cosine. Whether it is
    released or dropped for speed (it is slower than fp32 on x86 at ~11 µs), Percentile is not built."""
    res = convert(tmp_path, SAMPLES / "calibration.npz")
    assert res.exit_code == 0, res.output
    int8 = [c for c in json.loads(res.output)[0]["candidates"] if c["precision"] == "int8-static"]
    assert [c["calibration_method"] for c in int8] == ["minmax"]
    assert int8[0]["fidelity_passed"] and cc.output_cosine(int8[0]) >= 0.99
    assert int8[0]["passed"] or all(r.startswith(("slower than fp32", "size ")) for r in int8[0]["reasons"])
