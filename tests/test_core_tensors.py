"""edgekit.core.tensors: the JSON tensor wire format."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from edgekit.core import tensors
from edgekit.core.errors import MessageError

SHAPES = [(0,), (2, 0, 3), (1,), (5,), (2, 3), (1, 2, 2, 3)]


def sample(dtype: str, shape: tuple) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    values = np.arange(count) - count // 2
    if dtype == "float32":
        values = values * 0.37
    return values.astype(dtype).reshape(shape)


def tensor(dtype="float32", shape=(2,), b64=None) -> dict:
    if b64 is None:
        b64 = base64.b64encode(np.zeros(shape, dtype=dtype).tobytes()).decode()
    return {"dtype": dtype, "shape": list(shape), "b64": b64}


def decode_error(obj) -> MessageError:
    with pytest.raises(MessageError) as info:
        tensors.decode(obj, what="inputs.x")
    assert info.value.message.startswith("inputs.x:")
    return info.value


@pytest.mark.parametrize("dtype", ["float32", "int8", "int64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip(dtype, shape):
    arr = sample(dtype, shape)
    wire = json.loads(json.dumps(tensors.encode(arr)))  # survives JSON
    assert wire["dtype"] == dtype and wire["shape"] == list(shape)
    back = tensors.decode(wire)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == shape
    np.testing.assert_array_equal(back, arr)


def test_decode_zero_d():
    for dtype, value in (("float32", 1.5), ("int8", -3), ("int64", 2**40)):
        back = tensors.decode(tensor(dtype, (), b64=base64.b64encode(np.array(value, dtype=dtype).tobytes()).decode()))
        assert back.shape == () and back.dtype == np.dtype(dtype) and back.item() == value


@pytest.mark.parametrize("dtype", ["float32", "int8", "int64"])
def test_round_trip_zero_d(dtype):
    arr = np.array(7, dtype=dtype)
    assert tensors.encode(arr)["shape"] == []
    assert tensors.decode(tensors.encode(arr)).shape == ()


def test_other_supported_dtypes_round_trip():
    for dtype in ("float16", "float64", "uint8", "int16", "int32", "bool"):
        arr = np.array([[1, 0], [0, 1]], dtype=dtype)
        np.testing.assert_array_equal(tensors.decode(tensors.encode(arr)), arr)


def test_encode_is_little_endian_c_order():
    big_endian = np.array([1, 2], dtype=">i4")
    assert base64.b64decode(tensors.encode(big_endian)["b64"]) == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    fortran = np.asfortranarray(np.arange(6, dtype="int8").reshape(2, 3))
    assert base64.b64decode(tensors.encode(fortran)["b64"]) == bytes(range(6))


def test_encode_rejects_unsupported_dtype():
    with pytest.raises(MessageError, match="complex64"):
        tensors.encode(np.zeros(2, dtype="complex64"))


@pytest.mark.parametrize("dtype", ["complex64", "object", "float", "", None])
def test_decode_rejects_bad_dtype(dtype):
    assert "unsupported dtype" in decode_error(tensor() | {"dtype": dtype}).message


@pytest.mark.parametrize("shape", ["2", [-1], [1.5], [True], [None], {"0": 2}, None])
def test_decode_rejects_bad_shape(shape):
    assert "shape must be" in decode_error(tensor() | {"shape": shape}).message


@pytest.mark.parametrize("b64", ["!!!!", "AAA", "AA A=", 12])
def test_decode_rejects_bad_base64(b64):
    assert "not valid base64" in decode_error(tensor() | {"b64": b64}).message


@pytest.mark.parametrize("dtype,shape,nbytes", [("float32", [2], 7), ("float32", [2], 9), ("int64", [], 4),
                                                ("int8", [0], 1), ("int8", [2, 2], 3)])
def test_decode_rejects_length_mismatch(dtype, shape, nbytes):
    obj = {"dtype": dtype, "shape": shape, "b64": base64.b64encode(b"\x00" * nbytes).decode()}
    assert "do not match shape" in decode_error(obj).message


@pytest.mark.parametrize("obj", [None, [], {"dtype": "int8", "shape": [1]}, "AAAA"])
def test_decode_rejects_non_tensor(obj):
    assert "expected an object" in decode_error(obj).message


def test_decode_rejects_too_many_elements():
    assert "exceeds the limit" in decode_error(tensor("int8", (1,), b64="") | {"shape": [tensors.MAX_ELEMENTS + 1]}).message


def test_decode_rejects_overflowing_shape():
    decode_error({"dtype": "int8", "shape": [2**32, 2**32], "b64": ""})
