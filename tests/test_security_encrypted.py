"""Encrypted models (edgekit.core.sealed): real AES-256-GCM / X25519, real bundles, real agents."""

from __future__ import annotations

import os
import tarfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgekit.core import bundle, sealed, trust
from edgekit.core.errors import EncryptionError, IntegrityError


def keypair():
    k = X25519PrivateKey.generate()
    return k, k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture(scope="module")
def sealed_blob():
    data = os.urandom(2 * sealed.CHUNK + 12345)              # three chunks, the last one short
    (k1, p1), (k2, p2) = keypair(), keypair()
    blob, doc = sealed.seal(data, "model.onnx.sealed", {"dev-1": p1, "dev-2": p2})
    return data, blob, doc, k1, k2


def unseal(tmp_path, blob, doc, device, key):
    (tmp_path / "in").write_bytes(blob)
    sealed.unseal_file(tmp_path / "in", doc, tmp_path / "out", device, key)
    return (tmp_path / "out").read_bytes()


def test_round_trip_for_every_recipient(sealed_blob, tmp_path):
    data, blob, doc, k1, k2 = sealed_blob
    assert len(blob) == len(data) + 3 * sealed.TAG and data[:4096] not in blob
    assert unseal(tmp_path, blob, doc, "dev-1", k1) == data
    assert unseal(tmp_path, blob, doc, "dev-2", k2) == data


def test_not_a_recipient_or_wrong_key(sealed_blob, tmp_path):
    data, blob, doc, k1, k2 = sealed_blob
    with pytest.raises(EncryptionError, match="not for this device"):
        unseal(tmp_path, blob, doc, "dev-3", k1)
    with pytest.raises(EncryptionError, match="not wrapped for this device"):
        unseal(tmp_path, blob, doc, "dev-1", k2)              # dev-2's key cannot open dev-1's wrap
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("attack", ["flip", "truncate_last_chunk", "swap_chunks", "extend"])
def test_tampering_is_detected(attack, sealed_blob, tmp_path):
    data, blob, doc, k1, _ = sealed_blob
    c = sealed.CHUNK + sealed.TAG
    if attack == "flip":
        bad = bytearray(blob)
        bad[c + 100] ^= 1
        bad = bytes(bad)
    elif attack == "truncate_last_chunk":
        bad = blob[:2 * c]                                     # drop a whole chunk: "last" flag is wrong
    elif attack == "swap_chunks":
        bad = blob[c:2 * c] + blob[:c] + blob[2 * c:]
    else:
        bad = blob + blob[:c]
    with pytest.raises(IntegrityError):
        unseal(tmp_path, bad, doc, "dev-1", k1)
    assert not (tmp_path / "out").exists(), "nothing half-written"


def test_no_recipients_is_refused():
    with pytest.raises(EncryptionError):
        sealed.seal(b"x", "m", {})


@pytest.fixture
def enc_bundle(artifacts, keystore, pki, tmp_path):
    from edgekit.release import release_artifact

    for d in ("dev-1", "dev-2"):
        pki.enroll(d, tmp_path / "id" / d)
    path = release_artifact(artifacts / "fp32" / "raspberry-pi-4", keystore, tmp_path / "b", name="secret-cnn",
                            version="1.0.0", encrypt_to={"dev-1": pki.device_x25519("dev-1")})
    return path


def test_encrypted_bundle_hides_the_model_and_opens_only_on_the_recipient(enc_bundle, artifacts, keystore, tmp_path):
    model = (artifacts / "fp32" / "raspberry-pi-4" / "model.onnx").read_bytes()
    raw = enc_bundle.read_bytes()
    assert model[1000:1064] not in raw
    with tarfile.open(enc_bundle) as tar:
        assert "model.onnx" not in tar.getnames() and "model.onnx.sealed" in tar.getnames()
    root = trust.load_root(keystore.root_bytes())
    vb = bundle.open_bundle(enc_bundle, root, tmp_path / "x1", device_id="dev-1",
                            device_key=tmp_path / "id" / "dev-1" / "enc.key")
    assert vb.artifact_path.read_bytes() == model and vb.manifest["encryption"]["recipients"] == ["dev-1"]
    assert not (tmp_path / "x1" / "model.onnx.sealed").exists()
    with pytest.raises(EncryptionError, match="not for this device"):
        bundle.open_bundle(enc_bundle, root, tmp_path / "x2", device_id="dev-2",
                           device_key=tmp_path / "id" / "dev-2" / "enc.key")
    with pytest.raises(EncryptionError, match="no device key"):
        bundle.open_bundle(enc_bundle, root, tmp_path / "x3")
    assert not (tmp_path / "x2").exists() and not (tmp_path / "x3").exists()


def test_recipient_list_is_covered_by_the_release_signature(enc_bundle, keystore, tmp_path):
    """Adding yourself to sealed.json changes a signed member: refused before any decryption."""
    import io
    import json

    with tarfile.open(enc_bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    forged = tmp_path / "forged.bundle"
    with tarfile.open(forged, "w", format=tarfile.PAX_FORMAT) as out:
        for m, data in members:
            if m.name == sealed.KEYS_MEMBER:
                doc = json.loads(data)
                doc["recipients"]["dev-2"] = doc["recipients"]["dev-1"]
                data = json.dumps(doc).encode()
                m.size = len(data)
            out.addfile(m, io.BytesIO(data))
    with pytest.raises(IntegrityError, match="sealed.json"):
        bundle.open_bundle(forged, trust.load_root(keystore.root_bytes()), tmp_path / "x",
                           device_id="dev-2", device_key=tmp_path / "id" / "dev-2" / "enc.key")


def test_an_encrypted_release_is_re_signed_sealed_and_still_opens_only_on_its_recipient(enc_bundle, artifacts,
                                                                                          keystore, tmp_path):
    """rerelease_bundle (rollback to an older release, ADR 0011) on an encrypted bundle: verified, re-signed
    with a higher counter without the host ever decrypting it; the recipient opens the same model."""
    from edgekit.release import rerelease_bundle

    before = bundle.peek_manifest(enc_bundle)
    out = rerelease_bundle(enc_bundle, keystore, tmp_path / "re", above=before["model"]["release"] + 10)
    m = bundle.peek_manifest(out)
    assert m["model"]["release"] > before["model"]["release"] + 10
    assert m["rereleased_from"]["release"] == before["model"]["release"]
    assert m["encryption"] == before["encryption"]
    with tarfile.open(out) as tar, tarfile.open(enc_bundle) as old:
        assert "model.onnx" not in tar.getnames()
        assert tar.extractfile("model.onnx.sealed").read() == old.extractfile("model.onnx.sealed").read()
    root = trust.load_root(keystore.root_bytes())
    vb = bundle.open_bundle(out, root, tmp_path / "dev1", device_id="dev-1",
                            device_key=tmp_path / "id" / "dev-1" / "enc.key")
    model = (artifacts / "fp32" / "raspberry-pi-4" / "model.onnx").read_bytes()
    assert vb.artifact_path.read_bytes() == model and vb.manifest["model"]["release"] == m["model"]["release"]
    with pytest.raises(EncryptionError, match="not for this device"):
        bundle.open_bundle(out, root, tmp_path / "dev2", device_id="dev-2",
                           device_key=tmp_path / "id" / "dev-2" / "enc.key")
