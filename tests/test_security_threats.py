"""One test per TUF/Uptane threat edgekit claims to cover (docs/security.md, "Threats").

Real keys, real signed bundles of the sample model, the real install state machine, a real HTTP
server. Each test names its threat; related end-to-end proofs over mosquitto are listed too.

| threat                | here                                         | also                                          |
|-----------------------|----------------------------------------------|-----------------------------------------------|
| arbitrary install     | test_arbitrary_installation                  | test_deploy_e2e (tampered, unknown_key)       |
| rollback              | test_rollback                                | test_deploy_e2e (older_release)               |
| fast-forward          | test_fast_forward_needs_the_release_key      | (recovery after a key compromise: NOT covered)|
| freeze (stale data)   | test_freeze                                  | test_security_notices (expired notices)       |
| endless data          | test_endless_data                            |                                               |
| mix-and-match         | test_mix_and_match                           | test_deploy_e2e (download hash mismatch)      |
| wrong software        | test_wrong_software                          | test_security_encrypted, test_security_e2e    |
| key compromise        | test_key_compromise_threshold_and_separation | test_security_rotation (revocation)           |
| replayed command      | test_security_notices / test_security_e2e    |                                               |
| device impersonation  | test_security_broker                         |                                               |
"""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
import time

import pytest

from agent.installer import InstallRequest, Installer
from edgekit.core import bundle, trust
from edgekit.core.errors import CompatibilityError, ExpiredError, IntegrityError, TrustError
from edgekit.core.profiles import load_profile


def members(path):
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def rebuild(path, out, replace: dict[str, bytes]):
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members(path):
            data = replace.get(m.name, data)
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return out


def open_(path, store, dest, **kw):
    return bundle.open_bundle(path, trust.load_root(store.root_bytes()), dest, **kw)


def installer(tmp_path, keystore, events):
    return Installer(tmp_path / "dev", load_profile("raspberry-pi-4"), keystore.root_path,
                     lambda s, ok, d, e, dep: events.append((s, e.code if e else None)), health_runs=2)


def test_arbitrary_installation(make_bundle, keystore, other_keystore, tmp_path):
    """An attacker without the fleet's release key cannot get any file installed."""
    forged = make_bundle(version="6.6.6", store=other_keystore)   # well-formed, signed by the wrong key
    with pytest.raises(TrustError):
        open_(forged, keystore, tmp_path / "a")
    good = make_bundle(version="1.0.0")
    evil = rebuild(good, tmp_path / "evil.bundle", {"model.onnx": b"\x08\x07evil model"})
    with pytest.raises(IntegrityError):
        open_(evil, keystore, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_rollback(make_bundle, keystore, tmp_path):
    """A validly signed but older release is refused once a newer one is installed."""
    events: list = []
    inst = installer(tmp_path, keystore, events)
    new, old = make_bundle(version="3.0.0", release=300), make_bundle(version="2.0.0", release=200)
    assert inst.install(InstallRequest("d1", bundle_path=str(new))).state == "committed"
    rec = inst.install(InstallRequest("d2", bundle_path=str(old)))
    assert rec.state == "failed" and rec.error["code"] == "rollback"
    assert inst.slots.installed()["version"] == "3.0.0"


def test_fast_forward_needs_the_release_key(make_bundle, keystore, tmp_path):
    """Pushing a device to an absurd release number (to block later updates) needs the release key:
    the counter is a signed field, so editing it is refused."""
    good = make_bundle(version="1.0.0", release=7)
    manifest = json.loads(dict((m.name, d) for m, d in members(good))["manifest.json"])
    manifest["model"]["release"] = 2 ** 40
    ff = rebuild(good, tmp_path / "ff.bundle", {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(IntegrityError):
        open_(ff, keystore, tmp_path / "x")


def test_freeze(make_bundle, keystore, tmp_path):
    """Stale but validly signed releases expire, and a device clock set back does not revive them
    (the agent keeps a persisted time floor)."""
    expired = make_bundle(version="1.0.0", expiry_days=-1)
    with pytest.raises(ExpiredError):
        open_(expired, keystore, tmp_path / "x")
    events: list = []
    inst = installer(tmp_path, keystore, events)
    fresh = make_bundle(version="1.0.1", expiry_days=30)
    (tmp_path / "dev").mkdir(parents=True, exist_ok=True)
    # the device once saw a time 60 days from now; its clock was then turned back to "now"
    (tmp_path / "dev" / "time_floor.json").write_text(json.dumps({"floor": time.time() + 60 * 86400}))
    rec = inst.install(InstallRequest("d1", bundle_path=str(fresh)))
    assert rec.state == "failed" and rec.error["code"] == "expired"


class _Endless(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - stdlib name
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(4096):             # 256 MiB if nobody stops reading
                self.wfile.write(b"\0" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *a):
        pass


def test_endless_data(tmp_path, make_bundle, keystore):
    """A server (or mirror) that keeps sending is cut off at the length the signed notice announced,
    and a bundle that expands past the device's limit is refused while reading."""
    from agent.fetch import download

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(IntegrityError, match="more than the announced"):
            download(f"http://127.0.0.1:{srv.server_port}/b", tmp_path / "b.bundle", length=100_000,
                     sha256="0" * 64, retries=0)
    finally:
        srv.shutdown()
        srv.server_close()
    assert not (tmp_path / "b.bundle").exists() and not (tmp_path / "b.bundle.part").exists()
    with pytest.raises(IntegrityError, match="expands past"):
        open_(make_bundle(version="1.0.0"), keystore, tmp_path / "x", max_bytes=4096)


def test_mix_and_match(make_bundle, keystore, tmp_path):
    """Members of two valid releases cannot be combined: every member is bound to one signed
    targets document by hash."""
    a, b = make_bundle(version="1.0.0"), make_bundle(version="1.1.0")
    b_manifest = dict((m.name, d) for m, d in members(b))["manifest.json"]
    mixed = rebuild(a, tmp_path / "mixed.bundle", {"manifest.json": b_manifest})
    with pytest.raises(IntegrityError):
        open_(mixed, keystore, tmp_path / "x")
    b_meta = dict((m.name, d) for m, d in members(b))[bundle.METADATA_MEMBER]
    mixed2 = rebuild(a, tmp_path / "mixed2.bundle", {bundle.METADATA_MEMBER: b_meta})
    with pytest.raises(IntegrityError):
        open_(mixed2, keystore, tmp_path / "y")


def test_wrong_software(make_bundle, keystore, tmp_path):
    """A valid release for another hardware profile is refused by the device (signed profile field)."""
    events: list = []
    inst = installer(tmp_path, keystore, events)
    rec = inst.install(InstallRequest("d1", bundle_path=str(make_bundle(profile="x86-64-gateway"))))
    assert rec.state == "failed" and rec.error["code"] == CompatibilityError.code
    assert inst.slots.installed() is None


def test_key_compromise_threshold_and_separation(tmp_path, make_bundle, keystore, other_keystore):
    """One stolen root key of a 2-of-2 root cannot rotate trust; a stolen online notices key
    cannot make a device install anything the release key did not sign."""
    from edgekit.core import notices
    from edgekit.deploy import make_notice
    from edgekit.keys import init_keystore

    store = init_keystore(tmp_path / "k", root_keys=2, root_threshold=2)
    v1 = trust.load_root(store.root_bytes())
    v2 = trust.load_root(store.root_bytes())
    v2.signed.version = 2
    trust.sign(v2, store.signers("root")[:1])                    # only the stolen key
    with pytest.raises(TrustError, match="threshold"):
        trust.next_root(v1, v2.to_bytes())
    # the attacker holds the fleet's notices key: the notice itself verifies ...
    root = trust.load_root(keystore.root_bytes())
    evil = make_bundle(version="6.6.6", store=other_keystore)
    digest, size = bundle.file_sha256(evil)
    n = make_notice(json.loads(dict((m.name, d) for m, d in members(evil))["manifest.json"]),
                    {"url": "http://x/evil.bundle", "sha256": digest, "length": size}, device="dev-1", fleet="f",
                    signer=keystore.notice_signer())
    notices.verify_notice(n, root, device="dev-1", fleet="f", replay=None)
    # ... but the bundle it points at is not signed by the release key, so nothing installs
    with pytest.raises(TrustError):
        open_(evil, keystore, tmp_path / "x")
    # and the notices key cannot stand in for the release key
    md = trust.build_targets({"model.onnx": b"x"}, 1, trust.utc_in(1))
    trust.sign(md, keystore.signers("notices"))
    with pytest.raises(TrustError):
        trust.verify_targets(root, md.to_bytes(), reference_time=time.time())
