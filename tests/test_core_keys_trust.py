"""edgekit.keys (host key store) and edgekit.core.trust (TUF root/targets, offline verification)."""

from __future__ import annotations

import json
import stat
import time

import pytest

from edgekit import keys
from edgekit.core import trust
from edgekit.core.errors import ConfigError, ExpiredError, IntegrityError, TrustError, UsageError

ROLES = ("root", "targets", "snapshot", "timestamp")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return keys.init_keystore(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    return keys.init_keystore(tmp_path_factory.mktemp("other-keys"))


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def signed_targets(store, files=None, *, days=30, version=1) -> bytes:
    files = {"a.bin": b"alpha", "b.bin": b"beta"} if files is None else files
    md = trust.build_targets(files, version=version, expires=trust.utc_in(days),
                             custom={"a.bin": {"model": "m", "release": 1}})
    return trust.sign(md, store.signers("targets")).to_bytes()


def verify(store, raw: bytes, **kw):
    kw.setdefault("reference_time", time.time())
    return trust.verify_targets(trust.load_root(store.root_bytes()), raw, **kw)


# -- key store ---------------------------------------------------------------------------------

def test_init_keystore_layout(store):
    d = store.directory
    assert (d / "root.json").is_file() and (d / "keystore.json").is_file()
    index = json.loads((d / "keystore.json").read_text())
    assert index["schema"] == keys.KEYSTORE_SCHEMA
    assert set(index["roles"]) == set(ROLES) | {"notices"}
    pems = sorted(p.name for p in (d / "private").iterdir())
    assert pems == sorted(f"{r}-1.pem" for r in ROLES + ("notices",))
    assert (d / "roots" / "1.root.json").read_bytes() == store.root_bytes()
    assert mode(d / "private") == 0o700
    for pem in (d / "private").iterdir():
        assert mode(pem) == 0o600
        assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert b"PRIVATE" not in store.root_bytes()


def test_root_is_self_signed_and_lists_every_role(store):
    root = trust.load_root(store.root_bytes())
    trust.verify_root_self_signed(root)
    assert root.signed.version == 1
    for role in ROLES:
        assert root.signed.roles[role].threshold == 1
        assert len(root.signed.roles[role].keyids) == 1
    assert len({tuple(root.signed.roles[r].keyids) for r in ROLES}) == 4  # a distinct key per role


def test_second_init_without_force_is_refused(store):
    before = store.root_bytes()
    with pytest.raises(UsageError, match="already exists"):
        keys.init_keystore(store.directory)
    assert store.root_bytes() == before


def test_force_replaces_keys(tmp_path):
    first = keys.init_keystore(tmp_path).root_bytes()
    second = keys.init_keystore(tmp_path, force=True).root_bytes()
    assert first != second
    trust.verify_root_self_signed(trust.load_root(second))


@pytest.mark.parametrize("n,threshold", [(1, 2), (2, 0), (2, 3)])
def test_bad_root_threshold(tmp_path, n, threshold):
    with pytest.raises(UsageError, match="threshold"):
        keys.init_keystore(tmp_path, root_keys=n, root_threshold=threshold)
    assert not (tmp_path / "keystore.json").exists()


def test_root_two_of_two(tmp_path):
    store = keys.init_keystore(tmp_path, root_keys=2, root_threshold=2)
    root = trust.load_root(store.root_bytes())
    assert root.signed.roles["root"].threshold == 2
    assert len(root.signed.roles["root"].keyids) == 2
    assert len(root.signatures) == 2
    trust.verify_root_self_signed(root)
    # one signature short of the threshold is refused
    root.signatures.pop(next(iter(root.signatures)))
    with pytest.raises(TrustError, match="not signed by its own root keys"):
        trust.verify_root_self_signed(root)


def test_load_keystore(store, tmp_path):
    loaded = keys.load_keystore(store.directory)
    assert loaded.index == store.index
    assert len(loaded.signers("targets")) == 1
    with pytest.raises(ConfigError, match="no key store"):
        keys.load_keystore(tmp_path)
    (tmp_path / "keystore.json").write_text('{"schema": "other/9"}')
    with pytest.raises(ConfigError, match="unknown schema"):
        keys.load_keystore(tmp_path)


def test_signers_errors(tmp_path):
    store = keys.init_keystore(tmp_path)
    with pytest.raises(ConfigError, match="no keys for role 'nope'"):
        store.signers("nope")
    (tmp_path / "private" / "snapshot-1.pem").unlink()
    with pytest.raises(ConfigError, match="is missing"):
        store.signers("snapshot")


# -- trust -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"not json", b"{}", b'{"signed": {}, "signatures": []}'])
def test_load_root_rejects_garbage(raw):
    with pytest.raises(TrustError):
        trust.load_root(raw)


def test_load_root_rejects_targets_document(store):
    with pytest.raises(TrustError, match="not a root"):
        trust.load_root(signed_targets(store))


def test_build_root_checks_keys_and_thresholds(store):
    root = trust.load_root(store.root_bytes()).signed
    public = {role: [root.get_key(root.roles[role].keyids[0])] for role in ROLES}
    trust.build_root(public, {}, trust.utc_in(1))  # fine
    with pytest.raises(TrustError, match="needs at least one key"):
        trust.build_root({**public, "snapshot": []}, {}, trust.utc_in(1))
    with pytest.raises(TrustError, match="threshold"):
        trust.build_root(public, {"targets": 2}, trust.utc_in(1))


def test_verify_targets_round_trip(store):
    md = verify(store, signed_targets(store, version=7))
    assert md.signed.version == 7
    assert set(md.signed.targets) == {"a.bin", "b.bin"}
    assert trust.custom(md, "a.bin") == {"model": "m", "release": 1}
    assert trust.custom(md, "b.bin") == {}
    assert trust.custom(md, "absent") == {}
    assert trust.verify_member(md, "a.bin", b"alpha").length == 5


def test_verify_targets_wrong_keys(store, other_store):
    with pytest.raises(TrustError, match="not signed by this fleet's release keys"):
        verify(store, signed_targets(other_store))


def test_verify_targets_signed_by_root_key_instead_of_targets_key(store):
    md = trust.build_targets({"a.bin": b"alpha"}, version=1, expires=trust.utc_in(1))
    with pytest.raises(TrustError):
        verify(store, trust.sign(md, store.signers("root")).to_bytes())


def test_verify_targets_unsigned_or_tampered(store):
    doc = json.loads(signed_targets(store))
    doc["signed"]["version"] = 99
    with pytest.raises(TrustError):
        verify(store, json.dumps(doc).encode())
    doc["signatures"] = []
    with pytest.raises(TrustError):
        verify(store, json.dumps(doc).encode())


@pytest.mark.parametrize("raw", [b"", b"[]", b"{garbage"])
def test_verify_targets_malformed(store, raw):
    with pytest.raises(TrustError, match="malformed"):
        verify(store, raw)


def test_verify_targets_wrong_type(store):
    with pytest.raises(TrustError, match="expected 'targets'"):
        verify(store, store.root_bytes())


def test_expiry(store):
    expired = signed_targets(store, days=-1)
    with pytest.raises(ExpiredError, match="expired on"):
        verify(store, expired)
    assert verify(store, expired, allow_expired=True).signed.is_expired()
    fresh = signed_targets(store, days=30)
    with pytest.raises(ExpiredError):
        verify(store, fresh, reference_time=time.time() + 31 * 86400)
    verify(store, fresh, reference_time=time.time() + 29 * 86400)


def test_signature_is_checked_before_expiry(store, other_store):
    with pytest.raises(TrustError) as info:
        verify(store, signed_targets(other_store, days=-1), allow_expired=True)
    assert not isinstance(info.value, ExpiredError)


def test_verify_member(store):
    md = verify(store, signed_targets(store))
    with pytest.raises(IntegrityError, match="does not match"):
        trust.verify_member(md, "a.bin", b"alphA")
    with pytest.raises(IntegrityError, match="does not match"):
        trust.verify_member(md, "a.bin", b"alph")
    with pytest.raises(IntegrityError, match="not listed"):
        trust.verify_member(md, "c.bin", b"alpha")


def test_utc_in():
    assert trust.utc_in(1, now=0).isoformat() == "1970-01-02T00:00:00+00:00"
    assert trust.utc_in(-0.5, now=86400).microsecond == 0
    assert trust.utc_in(0).tzinfo is not None
