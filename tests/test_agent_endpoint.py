"""The local inference endpoint, on real processes: a flashed ``edgekit-agent run`` subprocess
serving HTTP on 127.0.0.1 and on a Unix socket, JSON and binary frames, answers compared with
onnxruntime on the golden vectors; malformed requests get specific errors. Plus the binary frame
format itself."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from agent.endpoint import LocalClient
from edgekit.core import frames, parity, tensors
from edgekit.core.errors import MessageError, ModelError
from edgekit.demo import Proc, provision_device


def endpoint_agent(tmp_path, broker, keystore, bundle=None):
    sock_dir = Path(tempfile.mkdtemp(prefix="ek-", dir="/tmp"))  # Unix socket paths must stay short
    home = tmp_path / "dev"
    cfg = provision_device(home, "dev-ep", "raspberry-pi-4", broker.port, keystore.root_path, telemetry_s=30)
    cfg.write_text(cfg.read_text() + f'\n[endpoint]\nport = 0\nsocket = "{sock_dir}/infer.sock"\n')
    if bundle:
        out = subprocess.run([sys.executable, "-m", "agent.cli", "install", str(bundle), "--config", str(cfg)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    proc = Proc("dev-ep", [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)], home / "agent.log")
    return proc, proc.ready(), sock_dir / "infer.sock"


@pytest.fixture
def served(tmp_path, broker, keystore, make_bundle):
    bundle = make_bundle(version="3.0.0", release=300)
    proc, ready, sock = endpoint_agent(tmp_path, broker, keystore, bundle)
    yield ready, sock, bundle
    proc.stop()
    assert not sock.exists()  # removed on shutdown


def golden(bundle):
    import tarfile

    with tarfile.open(bundle) as tar:
        data = tar.extractfile("golden.npz").read()
    path = Path(tempfile.mkdtemp()) / "golden.npz"
    path.write_bytes(data)
    return parity.load_golden(path)


@pytest.mark.parametrize("mode", ["binary", "json", "framed"])
@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_endpoint_answers_like_the_golden_vectors(served, mode, via):
    ready, sock, bundle = served
    assert ready["model"] == "digits-cnn" and ready["endpoint_port"] > 0
    client = LocalClient(port=ready["endpoint_port"]) if via == "tcp" else LocalClient(socket_path=sock)
    client.binary, client.framed = mode != "json", mode == "framed"
    ins, outs = golden(bundle)
    try:
        for i in range(3):  # several requests on one kept-alive connection
            got = client.infer({k: v[i:i + 1] for k, v in ins.items()})
            assert np.allclose(got["logits"], outs["logits"][i:i + 1], atol=1e-4)
        sock_obj = client.sock
        assert client.get("/v1/health") == {"ok": True, "model": "digits-cnn", "version": "3.0.0"}
        assert client.sock is sock_obj  # same connection: keep-alive works
        info = client.get("/v1/model")
        assert info["inputs"][0]["name"] == "input" and info["engine"] == "onnxruntime"
    finally:
        client.close()


def test_endpoint_refuses_bad_requests_with_specific_errors(served):
    ready, _, _ = served
    port = ready["endpoint_port"]
    client = LocalClient(port=port)
    with pytest.raises(ModelError, match="inference failed"):  # wrong input name reaches the runtime
        client.infer({"nope": np.zeros((1, 1, 8, 8), np.float32)})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for body, ctype, want in [(b"EKT0" + b"\0" * 4, frames.CONTENT_TYPE, "not a tensor frame"),
                              (frames.encode({"input": np.zeros((1, 1, 8, 8), np.float32)})[:-7],
                               frames.CONTENT_TYPE, "ends 7 bytes early"),
                              (b"{not json", "application/json", "not valid JSON"),
                              (json.dumps({"inputs": {"input": {"dtype": "float32", "shape": [1, 2], "b64": "AAAA"}}})
                               .encode(), "application/json", "do not match shape")]:
        conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        err = json.loads(resp.read())["error"]
        assert resp.status == 400 and err["code"] == "malformed_message" and want in err["message"], err
    conn.request("GET", "/v2/nothing")
    resp = conn.getresponse()
    assert resp.status == 404 and json.loads(resp.read())["error"]["hint"]
    conn.close()
    client.close()


def test_framed_stream_refuses_bad_requests_and_mixes_with_http(served):
    """The framed stream (edgekit.core.frames STREAM_*) on a raw Unix socket: answers, specific
    errors in the framed format, and HTTP on the same connection."""
    import socket

    ready, sock_path, bundle = served
    ins, outs = golden(bundle)

    def exchange(sock, data):
        sock.sendall(data)
        head = sock.recv(frames.STREAM_RESPONSE.size, socket.MSG_WAITALL)
        magic, status, latency_ms, length = frames.STREAM_RESPONSE.unpack(head)
        body = sock.recv(length, socket.MSG_WAITALL) if length else b""
        assert magic == frames.STREAM_MAGIC and len(body) == length
        return status, latency_ms, body

    def request(frame):
        return frames.STREAM_REQUEST.pack(frames.STREAM_MAGIC, len(frame)) + frame

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        status, latency_ms, body = exchange(s, request(frames.encode({"input": ins["input"][:1]})))
        assert status == 200 and latency_ms > 0
        assert np.allclose(frames.decode(body)["logits"], outs["logits"][:1], atol=1e-4)
        for frame, want_status, want in [
                (frames.encode({"input": ins["input"][:1]})[:-7], 400, "ends 7 bytes early"),
                (b"EKT0" + b"\0" * 4, 400, "not a tensor frame"),
                (frames.encode({"nope": np.zeros((1, 1, 8, 8), np.float32)}), 400, "inference failed")]:
            status, _, body = exchange(s, request(frame))  # errors keep the connection open
            err = json.loads(body)["error"]
            assert status == want_status and want in err["message"], err
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")  # HTTP on the same connection
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
        status, _, body = exchange(s, frames.STREAM_REQUEST.pack(frames.STREAM_MAGIC, (64 << 20) + 1))
        assert status == 413 and "exceeds" in json.loads(body)["error"]["message"]
        assert s.recv(1) == b""  # an oversized request closes the connection
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        status, _, body = exchange(s, b"EKX9" + b"\0" * 4)
        assert status == 400 and "not an edgekit framed request" in json.loads(body)["error"]["message"]
    client = LocalClient(socket_path=sock_path, framed=True)
    with pytest.raises(ModelError, match="inference failed"):
        client.infer({"nope": np.zeros((1, 1, 8, 8), np.float32)})
    assert client.infer({"input": ins["input"][:1]})["logits"].shape == (1, 10) and client.last_latency_ms > 0
    client.close()


def test_endpoint_without_a_model_answers_503(tmp_path, broker, keystore):
    proc, ready, sock = endpoint_agent(tmp_path, broker, keystore)
    try:
        client = LocalClient(socket_path=sock)
        assert "model" not in ready
        with pytest.raises(ModelError, match="no model installed"):
            client.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})
        client.framed = True
        with pytest.raises(ModelError, match="no model installed"):
            client.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})
        client.close()
    finally:
        proc.stop()


# -- the binary frame format ------------------------------------------------------------------------
def test_frame_data_is_8_byte_aligned():
    frame = frames.encode({"n": np.arange(3, dtype=np.int8), "longer-name": np.ones((2, 3), np.float64)})
    assert frame.index(np.ones((2, 3), np.float64).tobytes()) % 8 == 0
    assert all(a.flags.aligned for a in frames.decode(bytearray(frame)).values())


def test_frame_round_trips_every_dtype_and_shape():
    rng = np.random.default_rng(0)
    arrays = {f"t-{d}": (rng.random((2, 3)) * 10).astype(d) for d in tensors.DTYPES}
    arrays["scalar"] = np.array(3.5, np.float32)
    arrays["empty"] = np.zeros((0, 4), np.int64)
    arrays["ü-name"] = np.arange(6, dtype=np.int16).reshape(2, 3)[:, ::2]  # non-contiguous view
    back = frames.decode(frames.encode(arrays))
    assert list(back) == list(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)


@pytest.mark.parametrize("frame, want", [
    (b"EKT", "shorter than its header"),
    (b"XXXX\x00\x00\x00\x00", "not a tensor frame"),
    (frames.encode({"a": np.zeros(3, np.float32)}) + b"\0", "trailing bytes"),
    (frames.encode({"a": np.zeros(3, np.float32)})[:-1], "ends 1 bytes early"),
    (frames.encode({"a": np.zeros(3, np.float32)})[:9], "truncated"),
    (b"EKT1\x01\x00\x00\x00\x01\x00a\x63\x00", "unknown dtype code 99"),
    (b"EKT1\x01\x00\x00\x00\x01\x00a\x00\x02" + (2**40).to_bytes(8, "little") * 2, "exceeds the limit"),
    (b"EKT1\x02\x00\x00\x00" + frames.encode({"a": np.zeros(8, np.uint8)})[8:] * 2, "appears twice"),
])
def test_malformed_frames_are_refused(frame, want):
    with pytest.raises(MessageError, match=want):
        frames.decode(frame)
