"""Bundle download over real HTTP (a loopback ThreadingHTTPServer with Range support and fault
injection): resume after a cut connection, retries with backoff, byte cap, hash check, free-disk
check, refused downloads. Nothing half-written survives a failure."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.fetch import download
from edgekit.core.errors import IntegrityError, SlowRetrievalError, StorageError, TransportError

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
        if fault == "trickle":  # a slow-retrieval attacker: one byte every 20 ms, forever within the read timeout
            for i in range(len(part)):
                try:
                    self.wfile.write(part[i:i + 1])
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.02)
            return
        if fault == "stall":  # some bytes, then silence
            self.wfile.write(part[:1000])
            self.wfile.flush()
            time.sleep(5)
            return
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


# -- slow retrieval (TUF threat): an overall deadline from the signed length and a minimum rate -----
SMALL = BLOB[:20000]


@pytest.mark.parametrize("fault", ["trickle", "stall"])
def test_slow_retrieval_hits_the_deadline_and_leaves_nothing(fault, server, tmp_path):
    server.body, server.faults = SMALL, [fault] * 20
    t0 = time.monotonic()
    with pytest.raises(SlowRetrievalError, match="too slow") as info:  # deadline 0.3 s + 20000 B / 100 kB/s
        download(server.url, tmp_path / "b.bundle", length=len(SMALL), sha256=hashlib.sha256(SMALL).hexdigest(),
                 min_rate_bps=100_000, grace_s=0.3, backoff_s=0.01)
    assert time.monotonic() - t0 < 4.0  # not the 30 s per-read timeout, nor the 5 s stall
    assert info.value.code == "slow_retrieval" and info.value.exit_code == 6 and "min_rate_bps" in info.value.hint
    assert info.value.details["deadline_s"] == pytest.approx(0.5)
    assert not list(tmp_path.iterdir())


def test_a_fast_enough_server_is_not_cut(server, tmp_path):
    server.body = SMALL
    out = download(server.url, tmp_path / "b.bundle", length=len(SMALL), sha256=hashlib.sha256(SMALL).hexdigest(),
                   min_rate_bps=100_000, grace_s=0.3)
    assert out.read_bytes() == SMALL


def test_slow_retrieval_fails_the_install_and_keeps_the_old_model(server, tmp_path, keystore, make_bundle):
    """Installer level: the old model stays current, the event names the slow retrieval."""
    from agent.installer import InstallRequest, Installer
    from edgekit.core.profiles import load_profile

    events = []
    inst = Installer(tmp_path / "data", load_profile("raspberry-pi-4"), keystore.root_path,
                     lambda s, ok, d, e, dep: events.append((s, e.code if e else None)), health_runs=3,
                     min_rate_bps=50_000, download_grace_s=0.3,
                     freshness="off")  # the bundle download itself; trust metadata: the test below
    assert inst.install(InstallRequest("v1", bundle_path=str(make_bundle(version="1.0.0")))).state == "committed"
    b2 = make_bundle(version="2.0.0").read_bytes()
    server.body, server.faults = b2, ["trickle"] * 20
    rec = inst.install(InstallRequest("v2", url=server.url, sha256=hashlib.sha256(b2).hexdigest(), length=len(b2)))
    assert rec.state == "failed" and rec.error["code"] == "slow_retrieval"
    assert events[-1] == ("failed", "slow_retrieval")
    assert inst.slots.installed()["version"] == "1.0.0"
    assert not list((tmp_path / "data" / "downloads").iterdir())


# -- member digests taken while the bundle streams in (edgekit.core.bundle.MemberDigests) --------------
def _tar_digests(data: bytes) -> dict:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {i.name: (i.offset_data, i.size, hashlib.sha256(data[i.offset_data:i.offset_data + i.size]).hexdigest())
                for i in tar}


def test_member_digests_follow_cut_resumed_and_restarted_downloads(server, tmp_path, make_bundle):
    from edgekit.core.bundle import MemberDigests

    body = make_bundle(version="1.0.0").read_bytes()
    server.body, server.faults = body, ["cut", "cut", "ignore-range"]
    (tmp_path / "b.bundle.part").write_bytes(body[:777])  # and a .part left by a crash
    tap = MemberDigests()
    download(server.url, tmp_path / "b.bundle", length=len(body), sha256=hashlib.sha256(body).hexdigest(),
             backoff_s=0.01, tap=tap)
    assert server.requests[0] == "bytes=777-" and len(server.requests) == 3  # the last one restarts at 0
    assert tap.result() == _tar_digests(body)


def test_streamed_digests_are_still_checked_against_the_signature(server, tmp_path, keystore, make_bundle,
                                                                  monkeypatch):
    """A bundle whose bytes match the notice's SHA-256 but whose model was altered after signing: the
    digest taken during the download is refused by the signed entry, nothing is staged."""
    import tarfile

    from agent.installer import InstallRequest, Installer
    from edgekit.core import bundle as bundle_mod
    from edgekit.core.profiles import load_profile

    kernel_copies: list[str] = []
    real_copy = bundle_mod._copy_range
    monkeypatch.setattr(bundle_mod, "_copy_range", lambda fd, dest, off, size: (kernel_copies.append(dest.name),
                                                                                real_copy(fd, dest, off, size)))
    inst = Installer(tmp_path / "data", load_profile("raspberry-pi-4"), keystore.root_path,
                     lambda *a: None, health_runs=3, freshness="off")  # a plain file server, no /tuf
    good = make_bundle(version="1.0.0").read_bytes()
    server.body = good
    rec = inst.install(InstallRequest("v1", url=server.url, sha256=hashlib.sha256(good).hexdigest(), length=len(good)))
    assert rec.state == "committed" and "model.onnx" in kernel_copies  # the streamed path was taken

    b2 = make_bundle(version="2.0.0")
    with tarfile.open(b2) as tar:
        at = tar.getmember("model.onnx").offset_data + 100
    bad = bytearray(b2.read_bytes())
    bad[at] ^= 0xFF
    server.body, kernel_copies[:] = bytes(bad), []
    rec = inst.install(InstallRequest("v2", url=server.url, sha256=hashlib.sha256(bad).hexdigest(), length=len(bad)))
    assert rec.state == "failed" and rec.error["code"] == "integrity"
    assert "'model.onnx' does not match its signed hash" in rec.error["message"]
    assert "model.onnx" not in kernel_copies  # checked before any byte of it was copied
    assert inst.slots.installed()["version"] == "1.0.0"
    assert not (tmp_path / "data" / "work" / "v2").exists()
    assert not list((tmp_path / "data" / "downloads").iterdir())  # the refused bundle is not kept either


def test_refused_bundles_and_leftovers_of_other_deployments_do_not_pile_up(server, tmp_path, keystore,
                                                                          other_keystore, make_bundle):
    """Every refused notice left its whole bundle in downloads/ (a device sent bad bundles filled its disk);
    a .part of a deployment that never came back (the agent was killed mid-way) stayed too."""
    from agent.installer import InstallRequest, Installer
    from edgekit.core.profiles import load_profile

    inst = Installer(tmp_path / "data", load_profile("raspberry-pi-4"), keystore.root_path, lambda *a: None,
                     health_runs=3, freshness="off")
    foreign = make_bundle(version="1.0.0", store=other_keystore).read_bytes()  # signed by another fleet
    server.body = foreign
    for i in range(3):
        rec = inst.install(InstallRequest(f"bad-{i}", url=server.url, sha256=hashlib.sha256(foreign).hexdigest(),
                                          length=len(foreign)))
        assert rec.state == "failed" and rec.error["code"] == "trust"
        assert not list((tmp_path / "data" / "downloads").iterdir())
    stale = tmp_path / "data" / "downloads" / "gone-42.bundle.part"
    stale.write_bytes(b"x" * 1000)
    good = make_bundle(version="1.0.0").read_bytes()
    server.body = good
    rec = inst.install(InstallRequest("ok-1", url=server.url, sha256=hashlib.sha256(good).hexdigest(), length=len(good)))
    assert rec.state == "committed" and not list((tmp_path / "data" / "downloads").iterdir())
    flashed = make_bundle(version="2.0.0")  # a bench-flashed file is the user's: never deleted
    assert inst.install(InstallRequest("bench", bundle_path=str(flashed))).state == "committed" and flashed.exists()
def test_slow_trust_metadata_fails_the_check_before_any_download(server, tmp_path, keystore):
    """A server that trickles the hosted TUF metadata (agent/freshness.py) hits the same grace deadline."""
    from agent.installer import InstallRequest, Installer
    from edgekit.core.profiles import load_profile

    events = []
    inst = Installer(tmp_path / "data", load_profile("raspberry-pi-4"), keystore.root_path,
                     lambda s, ok, d, e, dep: events.append((s, e.code if e else None)), download_grace_s=1.0,
                     freshness="require")
    server.faults = ["trickle"] * 5
    t0 = time.monotonic()
    rec = inst.install(InstallRequest("v2", url=server.url, sha256=SHA, length=len(BLOB), model="m", version="1"))
    assert rec.state == "failed" and rec.error["code"] == "slow_retrieval", rec.error
    assert rec.details["failed_state"] == "checking_release" and time.monotonic() - t0 < 5
    assert server.requests and not (tmp_path / "data" / "downloads").exists()
