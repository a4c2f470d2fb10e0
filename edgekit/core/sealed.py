"""Encrypted model artifacts: AES-256-GCM in chunks, the data key wrapped to each device's X25519 key.

Scheme ``edgekit.sealed/1``:

* A random 256-bit data key encrypts the artifact in chunks of :data:`CHUNK` bytes with
  AES-256-GCM. Chunk *i*'s nonce is ``prefix(7) || i (4, big endian) || last (1)`` and its
  associated data is the member name, so chunks cannot be reordered, dropped, truncated
  (the last chunk is marked) or moved to another member. Memory stays O(chunk) both ways.
* For each recipient device: an ephemeral X25519 key agrees a secret with the device's
  X25519 public key (written at ``edgekit device enroll``); HKDF-SHA256 (salt = both public
  keys, info = scheme + device id) derives a key-encryption key; AES-256-GCM wraps the data key
  with the device id as associated data.
* ``sealed.json`` lists the recipients' wrapped keys; it and the ciphertext are ordinary bundle
  members, so the release (targets) signature covers them: nobody can add a recipient.

A stolen bundle therefore does not reveal the model; an installed model is plaintext in the
device's slot (at-rest protection on the device is the device's business).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import EncryptionError, IntegrityError

SCHEME = "edgekit.sealed/1"
KEYS_MEMBER = "sealed.json"
SUFFIX = ".sealed"
CHUNK = 1 << 20
TAG = 16


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _kek(shared: bytes, epk: bytes, device_pub: bytes, device: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=epk + device_pub, info=f"{SCHEME} wrap {device}".encode()).derive(shared)


def wrap_key(data_key: bytes, device: str, device_pub: bytes) -> dict:
    eph = X25519PrivateKey.generate()
    epk = _raw(eph.public_key())
    kek = _kek(eph.exchange(X25519PublicKey.from_public_bytes(device_pub)), epk, device_pub, device)
    nonce = os.urandom(12)
    return {"epk": epk.hex(), "nonce": nonce.hex(), "wrapped": AESGCM(kek).encrypt(nonce, data_key, device.encode()).hex()}


def unwrap_key(entry: dict, device: str, device_key: X25519PrivateKey) -> bytes:
    try:
        epk = bytes.fromhex(entry["epk"])
        pub = _raw(device_key.public_key())
        kek = _kek(device_key.exchange(X25519PublicKey.from_public_bytes(epk)), epk, pub, device)
        return AESGCM(kek).decrypt(bytes.fromhex(entry["nonce"]), bytes.fromhex(entry["wrapped"]), device.encode())
    except (InvalidTag, KeyError, ValueError, TypeError):
        raise EncryptionError(f"the model's key was not wrapped for this device's key ({device})") from None


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def seal(plaintext: bytes, member: str, recipients: dict[str, bytes]) -> tuple[bytes, dict]:
    """Encrypt ``plaintext`` (host side, in memory: artifacts are read whole by ``release``)."""
    if not recipients:
        raise EncryptionError("no recipients to encrypt the model for", hint="Pass --encrypt-for DEVICE_ID.")
    key, prefix = AESGCM.generate_key(256), secrets.token_bytes(7)
    aes = AESGCM(key)
    n = max(1, -(-len(plaintext) // CHUNK))
    out = bytearray()
    for i in range(n):
        out += aes.encrypt(_nonce(prefix, i, i == n - 1), plaintext[i * CHUNK:(i + 1) * CHUNK], member.encode())
    keys = {"schema": SCHEME, "member": member, "chunk": CHUNK, "prefix": prefix.hex(), "length": len(plaintext),
            "recipients": {d: wrap_key(key, d, pub) for d, pub in sorted(recipients.items())}}
    return bytes(out), keys


def load_device_key(path: Path) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except FileNotFoundError:
        raise EncryptionError(f"this device has no decryption key ({path})",
                              hint="Re-provision it with `edgekit device enroll` (writes enc.key).") from None
    if not isinstance(key, X25519PrivateKey):
        raise EncryptionError(f"{path} is not an X25519 private key")
    return key


def unseal_file(sealed_path: Path, keys_doc: dict, out_path: Path, device: str, device_key: X25519PrivateKey) -> None:
    """Decrypt a sealed member chunk by chunk into ``out_path`` (removed again on failure)."""
    if keys_doc.get("schema") != SCHEME:
        raise EncryptionError(f"unknown encryption scheme {keys_doc.get('schema')!r}")
    entry = keys_doc.get("recipients", {}).get(device)
    if entry is None:
        raise EncryptionError(f"the model is encrypted for {', '.join(sorted(keys_doc.get('recipients', {})))}, "
                              f"not for this device ({device})", recipients=sorted(keys_doc.get("recipients", {})))
    aes = AESGCM(unwrap_key(entry, device, device_key))
    prefix, chunk, member = bytes.fromhex(keys_doc["prefix"]), int(keys_doc["chunk"]), keys_doc["member"]
    total = os.path.getsize(sealed_path)
    n = max(1, -(-total // (chunk + TAG)))
    try:
        with open(sealed_path, "rb") as src, open(out_path, "wb") as dst:
            for i in range(n):
                block = src.read(chunk + TAG)
                dst.write(aes.decrypt(_nonce(prefix, i, i == n - 1), block, member.encode()))
        if os.path.getsize(out_path) != keys_doc["length"]:
            raise IntegrityError("decrypted model has the wrong length")
    except InvalidTag:
        out_path.unlink(missing_ok=True)
        raise IntegrityError("encrypted model failed authentication (tampered or truncated)") from None
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise


def read_keys(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{KEYS_MEMBER} is unreadable: {exc}") from None
