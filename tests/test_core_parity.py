"""edgekit.core.parity: metrics, pass/fail reasons, golden vector files."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.core import parity
from edgekit.core.errors import BundleError

THRESHOLDS = {"min_cosine": 0.99, "min_top1_agreement": 0.95, "max_rel_error": 0.1}


def scores(rows: int = 4, classes: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, classes)).astype(np.float32)


def metrics(**overrides) -> parity.ParityMetrics:
    base = dict(max_abs_diff=0.0, relative_max_diff=0.0, mean_abs_diff=0.0, cosine=1.0, top1_agreement=1.0,
                within_tolerance=1.0, count=4)
    return parity.ParityMetrics(**(base | overrides))


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_identical_arrays():
    a = scores()
    got = parity.compare(a, a.copy(), atol=0.0, rtol=0.0)
    assert got.max_abs_diff == 0.0 and got.mean_abs_diff == 0.0 and got.relative_max_diff == 0.0
    assert got.cosine == pytest.approx(1.0)
    assert got.top1_agreement == 1.0
    assert got.within_tolerance == 1.0
    assert got.count == 4
    assert parity.passes(got, **THRESHOLDS) == []


def test_permuted_class_scores_lower_top1():
    expected = scores()
    actual = expected.copy()
    for row in (0, 1):  # swap the winning class with another one in two of four rows
        best, other = int(np.argmax(expected[row])), int(np.argmin(expected[row]))
        actual[row, [best, other]] = actual[row, [other, best]]
    got = parity.compare(actual, expected, atol=1e-3, rtol=0.0)
    assert got.top1_agreement == 0.5
    assert got.cosine < 1.0
    assert got.max_abs_diff > 0
    assert 0 < got.within_tolerance < 1
    reasons = parity.passes(got, **THRESHOLDS)
    assert any(r.startswith("top-1 agreement 0.5000 < 0.95") for r in reasons)


def test_small_noise_within_tolerance():
    expected = scores()
    got = parity.compare(expected + 1e-4, expected, atol=1e-3, rtol=0.0)
    assert got.within_tolerance == 1.0
    assert got.max_abs_diff == pytest.approx(1e-4, rel=1e-2)
    assert parity.passes(got, **THRESHOLDS) == []


def test_relative_max_diff_is_scale_free():
    expected = np.array([[10.0, -40.0, 20.0]])
    got = parity.compare(expected + 2.0, expected, 0, 0)
    assert got.max_abs_diff == pytest.approx(2.0)
    assert got.relative_max_diff == pytest.approx(2.0 / 40.0)
    scaled = parity.compare((expected + 2.0) * 1000, expected * 1000, 0, 0)
    assert scaled.relative_max_diff == pytest.approx(got.relative_max_diff)


def test_top1_only_for_class_scores():
    assert parity.compare(np.ones(5), np.ones(5), 0, 0).top1_agreement is None       # 1-D
    assert parity.compare(np.ones((3, 1)), np.ones((3, 1)), 0, 0).top1_agreement is None  # single class
    assert parity.compare(np.ones((2, 3, 4)), np.ones((2, 3, 4)), 0, 0).top1_agreement is None


def test_zero_vectors_count_as_identical_and_zero_vs_nonzero_does_not():
    assert parity.compare(np.zeros((2, 3)), np.zeros((2, 3)), 0, 0).cosine == 1.0
    assert parity.compare(np.zeros((2, 3)), np.ones((2, 3)), 0, 0).cosine == 0.0


def test_cosine_is_worst_row():
    expected = np.array([[1.0, 0.0], [1.0, 0.0]])
    actual = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert parity.compare(actual, expected, 0, 0).cosine == pytest.approx(0.0)


def test_scalar_output():
    got = parity.compare(np.float32(2.0), np.float32(2.0), 0, 0)
    assert got.count == 1 and got.cosine == pytest.approx(1.0)


def test_shape_mismatch_raises():
    with pytest.raises(BundleError, match="differs from the reference"):
        parity.compare(np.zeros((2, 3)), np.zeros((3, 2)), 0, 0)


def test_empty_batch():
    got = parity.compare(np.zeros((0, 5)), np.zeros((0, 5)), 0, 0)
    assert got.count == 0


def test_passes_reasons():
    assert parity.passes(metrics(), **THRESHOLDS) == []
    reasons = parity.passes(metrics(cosine=0.5, top1_agreement=0.25, max_abs_diff=2.0, relative_max_diff=0.5),
                            **THRESHOLDS)
    assert len(reasons) == 3
    assert reasons[0] == "cosine 0.5000 < 0.99"
    assert reasons[1] == "top-1 agreement 0.2500 < 0.95"
    assert reasons[2].startswith("max abs diff 2 ") and "0.5" in reasons[2] and "0.1" in reasons[2]
    # each threshold alone
    assert len(parity.passes(metrics(cosine=0.98), **THRESHOLDS)) == 1
    assert len(parity.passes(metrics(relative_max_diff=0.11), **THRESHOLDS)) == 1
    assert parity.passes(metrics(relative_max_diff=0.1), **THRESHOLDS) == []
    # no top-1 for non-class outputs, no relative budget when None
    assert parity.passes(metrics(top1_agreement=None, max_abs_diff=9.0, relative_max_diff=9.0),
                         min_cosine=0.9, min_top1_agreement=1.0, max_rel_error=None) == []


def test_as_dict_rounds_floats():
    d = metrics(cosine=0.123456789, top1_agreement=None).as_dict()
    assert d["cosine"] == 0.1234568 and d["top1_agreement"] is None and d["count"] == 4


def test_golden_round_trip(tmp_path):
    ins = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "mask": np.array([1, 0, 1], dtype=np.int8)}
    outs = {"y": scores(3, 2)}
    got_in, got_out = parity.load_golden(write(tmp_path / "golden.npz", parity.save_golden(ins, outs)))
    assert got_in.keys() == ins.keys() and got_out.keys() == outs.keys()
    for k in ins:
        np.testing.assert_array_equal(got_in[k], ins[k])
        assert got_in[k].dtype == ins[k].dtype
    np.testing.assert_array_equal(got_out["y"], outs["y"])


@pytest.mark.parametrize("data", [b"garbage", b"\x93NUMPY not really"])
def test_load_golden_garbage(tmp_path, data):
    with pytest.raises(BundleError, match="unreadable"):
        parity.load_golden(write(tmp_path / "golden.npz", data))


def test_load_golden_missing_file(tmp_path):
    with pytest.raises(BundleError):
        parity.load_golden(tmp_path / "absent.npz")


def test_load_golden_needs_inputs_and_outputs(tmp_path):
    only_inputs = parity.save_golden({"x": np.zeros(2)}, {})
    with pytest.raises(BundleError, match="no inputs or no outputs"):
        parity.load_golden(write(tmp_path / "golden.npz", only_inputs))


@pytest.mark.parametrize("cut", ["half", "empty"])
def test_load_golden_truncated(tmp_path, cut):
    data = parity.save_golden({"x": np.zeros((3, 4))}, {"y": np.ones((3, 2))})
    data = data[: len(data) // 2] if cut == "half" else b""
    with pytest.raises(BundleError):
        parity.load_golden(write(tmp_path / "golden.npz", data))


def test_cosine_flattens_and_handles_all_zero_tensors():
    a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    assert parity.cosine(a, a) == pytest.approx(1.0) and parity.cosine(a, -a) == pytest.approx(-1.0)
    assert parity.cosine(a, a.ravel()[::-1].reshape(3, 2)) < 0.8
    assert parity.cosine(np.zeros(4), np.zeros((2, 2))) == 1.0   # both silent: they agree
    assert parity.cosine(np.zeros(4), np.ones(4)) == 0.0         # one silent: they do not
