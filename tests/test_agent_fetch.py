"""Bundle download over real HTTP (a loopback ThreadingHTTPServer with Range support and fault
injection): resume after a cut connection, retries with backoff, byte cap, hash check, free-disk
check, refused downloads. Nothing half-written survives a failure."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.fetch import download
from edgekit.core.errors import IntegrityError, StorageError, TransportError

BLOB = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(BLOB).hexdigest()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.body, self.faults, self.requests = BLOB, [], []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/bundle"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv: Server = self.server
        rng = self.headers.get("Range")
        srv.requests.append(rng)
        fault = srv.faults.pop(0) if srv.faults else None
        if fault == "404":
            self.send_error(404)
            return
        if fault == "503":
            self.send_error(503)
            return
        body, start = srv.body, 0
        if rng and fault != "ignore-range":
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        if fault == "extra":
            part += b"x" * 100
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if fault == "cut":  # send a third, then drop the connection
            self.wfile.write(part[:len(part) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(part)


@pytest.fixture
def server():
    srv = Server()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def fetch(server, dest, **kw):
    kw.setdefault("backoff_s", 0.01)
    return download(server.url, dest, length=len(BLOB), sha256=SHA, **kw)


def test_cut_connections_resume_with_range(server, tmp_path):
    server.faults = ["cut", "cut"]
    seen = []
    out = fetch(server, tmp_path / "b.bundle", progress=seen.append)
    assert out.read_bytes() == BLOB
    assert server.requests[0] is None and all(r and r.startswith("bytes=") for r in server.requests[1:])
    offsets = [int(r.split("=")[1][:-1]) for r in server.requests[1:]]
    assert len(server.requests) == 3 and 0 < offsets[0] < offsets[1] < len(BLOB)
    assert seen[-1] == len(BLOB) and not (tmp_path / "b.bundle.part").exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.faults = ["cut", "ignore-range"]
    assert fetch(server, tmp_path / "b.bundle").read_bytes() == BLOB


def test_resume_from_a_part_file_left_by_a_crash(server, tmp_path):
    (tmp_path / "b.bundle.part").write_bytes(BLOB[:1000])
    assert fetch(server, tmp_path / "b.bundle").read_bytes() == BLOB
    assert server.requests == ["bytes=1000-"]


def test_transient_errors_are_retried_then_given_up(server, tmp_path):
    server.faults = ["503", "503"]
    assert fetch(server, tmp_path / "a.bundle").read_bytes() == BLOB
    server.faults = ["503"] * 10
    server.requests.clear()
    with pytest.raises(TransportError, match="after 3 attempts"):
        fetch(server, tmp_path / "b.bundle", retries=2)
    assert len(server.requests) == 3


def test_refused_download_is_not_retried(server, tmp_path):
    server.faults = ["404"]
    with pytest.raises(TransportError, match="HTTP 404"):
        fetch(server, tmp_path / "b.bundle")
    assert len(server.requests) == 1


def test_more_bytes_than_signed_length_is_refused(server, tmp_path):
    server.faults = ["extra"]
    with pytest.raises(IntegrityError, match="more than the announced"):
        fetch(server, tmp_path / "b.bundle")
    assert not list(tmp_path.iterdir())


def test_corrupted_bytes_fail_the_hash_and_leave_nothing(server, tmp_path):
    server.body = BLOB[:-1] + b"\x00"
    with pytest.raises(IntegrityError, match="does not match"):
        fetch(server, tmp_path / "b.bundle")
    assert not list(tmp_path.iterdir())


def test_free_disk_is_checked_before_any_request(server, tmp_path):
    with pytest.raises(StorageError, match="not enough free space") as exc:
        fetch(server, tmp_path / "b.bundle", reserve_bytes=1 << 60)
    assert server.requests == [] and exc.value.exit_code == 8 and exc.value.hint
