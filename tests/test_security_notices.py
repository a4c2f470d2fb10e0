"""Signed deployment notices (edgekit.core.notices): real Ed25519 keys from a real key store."""

from __future__ import annotations

import copy
import time

import pytest

from edgekit.core import notices, trust
from edgekit.core.errors import (NoticeExpiredError, NoticeReplayError, NoticeSignatureError, NoticeTargetError,
                                 UsageError)
from edgekit.deploy import make_notice

MANIFEST = {"model": {"name": "m", "version": "1.0.0"}, "profile": "raspberry-pi-4"}
STORED = {"url": "http://127.0.0.1:1/artifacts/x.bundle", "sha256": "a" * 64, "length": 10}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from edgekit.keys import init_keystore

    return init_keystore(tmp_path_factory.mktemp("k"))


@pytest.fixture
def root(store):
    return trust.load_root(store.root_bytes())


def signed(store, device="dev-1", fleet="f", ttl=600):
    return make_notice(MANIFEST, STORED, ttl, device=device, fleet=fleet, signer=store.notice_signer())


def verify(n, root, tmp_path, device="dev-1", fleet="f", now=None, replay=True):
    cache = notices.ReplayCache(tmp_path / "seen.json") if replay else None
    return notices.verify_notice(n, root, device=device, fleet=fleet, replay=cache, now=now)


def test_signed_notice_verifies_and_binds_device_fleet_and_nonce(store, root, tmp_path):
    n = signed(store)
    assert n["device"] == "dev-1" and n["fleet"] == "f" and len(n["nonce"]) == 32 and n["signatures"]
    assert n["expires_at"] - n["issued_at"] == 600
    assert verify(n, root, tmp_path) is n
    assert signed(store)["nonce"] != n["nonce"]


def test_unsigned_notice_is_refused(root, tmp_path):
    with pytest.raises(NoticeSignatureError, match="not signed"):
        verify(make_notice(MANIFEST, STORED), root, tmp_path)


@pytest.mark.parametrize("field, value", [("sha256", "b" * 64), ("bundle_url", "http://evil/x.bundle"),
                                          ("device", "dev-2"), ("expires_at", 4102444800), ("length", 11)])
def test_any_edited_signed_field_breaks_the_signature(field, value, store, root, tmp_path):
    n = signed(store)
    n[field] = value
    with pytest.raises(NoticeSignatureError, match="0 of 1 valid"):
        verify(n, root, tmp_path, device=n["device"])


def test_notice_signed_by_another_fleets_key_is_refused(root, tmp_path):
    from edgekit.keys import init_keystore

    other = init_keystore(tmp_path / "other")
    with pytest.raises(NoticeSignatureError):
        verify(signed(other), root, tmp_path)


def test_release_key_cannot_sign_notices(store, root, tmp_path):
    """Key separation: the targets (release) key is not a notice key."""
    n = signed(store)
    payload = notices.signed_bytes(n)
    n["signatures"] = [s.sign(payload).to_dict() for s in store.signers("targets")]
    with pytest.raises(NoticeSignatureError):
        verify(n, root, tmp_path)


def test_garbage_signatures_are_refused_not_crashing(store, root, tmp_path):
    n = signed(store)
    for sigs in ([{"keyid": n["signatures"][0]["keyid"], "sig": "00"}], [{"nope": 1}], ["x"], "str"):
        bad = {**n, "signatures": sigs}
        with pytest.raises(NoticeSignatureError):
            verify(bad, root, tmp_path)


def test_wrong_device_or_fleet_is_refused(store, root, tmp_path):
    with pytest.raises(NoticeTargetError, match="not f/dev-2"):
        verify(signed(store, device="dev-1"), root, tmp_path, device="dev-2")
    with pytest.raises(NoticeTargetError):
        verify(signed(store, fleet="other"), root, tmp_path)


def test_expired_and_future_notices_are_refused(store, root, tmp_path):
    n = signed(store, ttl=60)
    with pytest.raises(NoticeExpiredError, match="expired"):
        verify(n, root, tmp_path, now=n["expires_at"] + 1)
    with pytest.raises(NoticeExpiredError, match="future"):
        verify(n, root, tmp_path, now=n["issued_at"] - notices.CLOCK_SKEW_S - 10)


def test_overlong_lifetime_is_refused_by_signer_and_verifier(store, root, tmp_path):
    with pytest.raises(NoticeExpiredError, match="exceeds"):
        signed(store, ttl=notices.MAX_TTL_S + 10)
    # a sender that bypasses the signer's check (validly signed, 30-day lifetime) is refused too
    n = signed(store)
    n["expires_at"] = n["issued_at"] + 30 * 86400
    payload = notices.signed_bytes(n)
    n["signatures"] = [s.sign(payload).to_dict() for s in store.signers("notices")]
    with pytest.raises(NoticeExpiredError, match="lifetime"):
        verify(n, root, tmp_path)


def test_replay_is_refused_and_persisted(store, root, tmp_path):
    n = signed(store)
    verify(n, root, tmp_path)
    with pytest.raises(NoticeReplayError, match="already used"):
        verify(copy.deepcopy(n), root, tmp_path)
    # a new cache object over the same file (agent restart) still remembers it
    with pytest.raises(NoticeReplayError):
        notices.verify_notice(n, root, device="dev-1", fleet="f", replay=notices.ReplayCache(tmp_path / "seen.json"))


def test_replay_cache_forgets_expired_nonces(tmp_path):
    cache = notices.ReplayCache(tmp_path / "c.json")
    now = time.time()
    cache.add("old", now - 1, now - 100)
    cache.add("new", now + 100, now)
    assert not cache.seen("old") and cache.seen("new")


def test_root_without_notice_keys_refuses_everything(store, tmp_path):
    md = trust.load_root(store.root_bytes())
    md.signed.unrecognized_fields.pop(trust.NOTICES_FIELD)
    with pytest.raises(NoticeSignatureError, match="no deployment-notice keys"):
        verify(signed(store), md, tmp_path)


def test_floats_cannot_be_signed_ambiguously(store, root, tmp_path):
    n = signed(store)
    n["extra"] = 1.5
    with pytest.raises(NoticeSignatureError, match="canonically"):
        verify(n, root, tmp_path)


def test_signed_notice_needs_a_device():
    from edgekit.core.notices import NoticeSigner

    with pytest.raises(UsageError):
        make_notice(MANIFEST, STORED, signer=NoticeSigner([]))
