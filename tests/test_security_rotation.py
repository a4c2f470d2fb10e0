"""Key rotation and revocation: root N -> N+1 chains that devices follow offline, 2-of-3 root keys,
revoked release (targets) and notice keys. Real keys, real bundles of the sample model."""

from __future__ import annotations

import json
import os

import pytest

from edgekit import keys
from edgekit.core import bundle, notices, trust
from edgekit.core.errors import ConfigError, NoticeSignatureError, TrustError, UsageError
from edgekit.deploy import make_notice
from edgekit.release import release_artifact


@pytest.fixture
def store(tmp_path):
    return keys.init_keystore(tmp_path / "keys")


@pytest.fixture
def release(artifacts, tmp_path):
    counter = iter(range(1, 1000))

    def make(store, version):
        return release_artifact(artifacts / "fp32" / "raspberry-pi-4", store, tmp_path / f"out{next(counter)}",
                                name="digits-cnn", version=version)
    return make


class Device:
    """What the agent does: factory root + persisted history of followed roots."""

    def __init__(self, tmp_path, factory_root: bytes):
        self.dir = tmp_path / "device"
        self.factory = factory_root
        self.history = self.dir / "trust"
        self.n = 0

    @property
    def root(self):
        return trust.load_trusted_root(self.factory, self.history)

    def open(self, path):
        self.n += 1
        return bundle.open_bundle(path, self.root, self.dir / f"x{self.n}", root_history=self.history)


def test_targets_rotation_new_key_accepted_revoked_key_refused(store, release, tmp_path):
    device = Device(tmp_path, store.root_bytes())             # provisioned with root v1
    old = release(store, "1.0.0")                              # signed by targets key #1
    assert device.open(old).manifest["model"]["version"] == "1.0.0"
    info = keys.rotate(store, "targets")
    assert info["version"] == 2 and len(info["revoked_keyids"]) == 1
    assert (store.directory / "private" / "retired" / "targets-1.pem").exists()
    assert not (store.directory / "private" / "targets-1.pem").exists()
    new = release(store, "1.1.0")                              # signed by targets key #2, carries root v2
    assert device.open(new).manifest["model"]["version"] == "1.1.0"
    assert device.root.signed.version == 2 and (device.history / "2.root.json").exists()
    with pytest.raises(TrustError, match="not signed by this fleet's release keys"):
        device.open(old)                                       # the revoked key no longer counts


def test_device_that_never_saw_the_new_root_still_follows_from_any_later_bundle(store, release, tmp_path):
    keys.rotate(store, "targets")
    keys.rotate(store, "targets")
    device = Device(tmp_path, json.dumps(json.loads((store.directory / "roots" / "1.root.json").read_text())).encode())
    assert device.open(release(store, "2.0.0")).manifest["model"]["version"] == "2.0.0"
    assert device.root.signed.version == 3                     # v1 -> v2 -> v3, one step at a time


def test_root_rotation_two_of_three_offline_keys(tmp_path, release):
    store = keys.init_keystore(tmp_path / "keys", root_keys=3, root_threshold=2)
    factory = store.root_bytes()
    os.replace(store.directory / "private" / "root-1.pem", tmp_path / "offline-root-1.pem")  # one key is away
    info = keys.rotate(store, "root")
    assert info["version"] == 2 and len(info["new_keyids"]) == 3
    v1, v2 = (trust.load_root((store.directory / "roots" / f"{v}.root.json").read_bytes()) for v in (1, 2))
    assert len(v2.signatures) == 4            # 2 old + 2 new: both thresholds
    assert trust.next_root(v1, v2.to_bytes()).signed.version == 2
    keys.rotate(store, "targets")             # v3, signed by the *new* root keys only
    device = Device(tmp_path, factory)
    assert device.open(release(store, "3.0.0")).manifest["model"]["version"] == "3.0.0"
    assert device.root.signed.version == 3


def test_root_rotation_needs_the_threshold_of_root_keys(tmp_path):
    store = keys.init_keystore(tmp_path / "keys", root_keys=3, root_threshold=2)
    for n in (1, 2):
        (store.directory / "private" / f"root-{n}.pem").unlink()
    with pytest.raises(ConfigError, match="needs 2 private key"):
        keys.rotate(store, "targets")
    assert trust.load_root(store.root_bytes()).signed.version == 1  # nothing half-written


def test_forged_next_root_is_refused_and_forged_history_ignored(store, release, tmp_path):
    """Arbitrary/forged root: a v2 signed only by an attacker's keys (the new-key half alone)."""
    attacker = keys.init_keystore(tmp_path / "attacker")
    forged = trust.load_root(attacker.root_bytes())
    forged.signed.version = 2
    trust.sign(forged, attacker.signers("root"))
    device = Device(tmp_path, store.root_bytes())
    with pytest.raises(TrustError, match="not signed by the threshold of both"):
        trust.next_root(device.root, forged.to_bytes())
    good = release(store, "1.0.0")
    evil = tmp_path / "evil.bundle"
    bundle.write_bundle(evil, *_members(good), roots=[forged.to_bytes()])
    with pytest.raises(TrustError):
        device.open(evil)
    device.history.mkdir(parents=True, exist_ok=True)
    (device.history / "2.root.json").write_bytes(forged.to_bytes())  # planted on the device's disk
    assert device.root.signed.version == 1


def _members(path):
    import tarfile

    with tarfile.open(path) as tar:
        raw = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    md = raw.pop(bundle.METADATA_MEMBER)
    return json.loads(raw[bundle.MANIFEST_MEMBER]), {k: v for k, v in raw.items()
                                                      if not k.startswith(bundle.ROOTS_PREFIX)}, md


def test_root_version_gap_is_not_followed(store, tmp_path):
    keys.rotate(store, "targets")
    keys.rotate(store, "targets")
    v1 = trust.load_root((store.directory / "roots" / "1.root.json").read_bytes())
    v3 = (store.directory / "roots" / "3.root.json").read_bytes()
    assert trust.update_root(v1, [v3], None).signed.version == 1   # v2 missing: stay on v1
    with pytest.raises(TrustError, match="sequential"):
        trust.next_root(v1, v3)


def test_notices_key_rotation_travels_with_the_notice(store, tmp_path):
    factory = trust.load_root(store.root_bytes())
    old_signer = store.notice_signer()
    keys.rotate(store, "notices")
    manifest = {"model": {"name": "m", "version": "1"}, "profile": "p"}
    stored = {"url": "http://h/x", "sha256": "c" * 64, "length": 1}
    n = make_notice(manifest, stored, device="d", fleet="f", signer=store.notice_signer())
    assert n["roots"] and n["roots"][-1]["signed"]["version"] == 2
    with pytest.raises(NoticeSignatureError):                 # the old root does not know the new key
        notices.verify_notice(n, factory, device="d", fleet="f", replay=None)
    root = trust.update_root(factory, notices.carried_roots(n), None)
    notices.verify_notice(n, root, device="d", fleet="f", replay=None)
    stale = make_notice(manifest, stored, device="d", fleet="f", signer=old_signer)
    with pytest.raises(NoticeSignatureError):                 # the revoked notices key
        notices.verify_notice(stale, root, device="d", fleet="f", replay=None)


def test_unknown_role_cannot_be_rotated(store):
    with pytest.raises(UsageError, match="rotatable"):
        keys.rotate(store, "mirror")  # snapshot/timestamp rotate since ADR 0010 (test_agent_freshness)


def test_keys_rotate_cli(store):
    from click.testing import CliRunner

    from edgekit.cli.main import cli

    res = CliRunner().invoke(cli, ["keys", "rotate", "--role", "targets", "--keys", str(store.directory), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["version"] == 2
    res = CliRunner().invoke(cli, ["keys", "rotate", "--role", "nope", "--keys", str(store.directory)])
    assert res.exit_code == 2
