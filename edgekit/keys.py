"""Host-side key store: generates Ed25519 keys per TUF role, writes and reads them, signs root.

Layout of a key store directory::

    root.json                 signed root metadata: provision this on every device
    keystore.json             which private key files belong to which role, thresholds
    private/<role>-<n>.pem    PKCS#8 private keys (mode 0600). Keep root keys offline.

Only the host imports this module; devices get ``root.json`` and nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from .core import trust
from .core.atomic import atomic_write_bytes, atomic_write_json, read_json
from .core.errors import ConfigError, UsageError

KEYSTORE_SCHEMA = "edgekit.keystore/1"


@dataclass
class KeyStore:
    directory: Path
    index: dict

    @property
    def root_path(self) -> Path:
        return self.directory / "root.json"

    def root_bytes(self) -> bytes:
        return self.root_path.read_bytes()

    def signers(self, role: str) -> list[CryptoSigner]:
        files = self.index["roles"].get(role, {}).get("keys", [])
        if not files:
            raise ConfigError(f"key store {self.directory} has no keys for role {role!r}")
        signers = []
        for name in files:
            path = self.directory / "private" / name
            try:
                signers.append(CryptoSigner(load_pem_private_key(path.read_bytes(), None)))
            except FileNotFoundError:
                raise ConfigError(f"private key {path} is missing",
                                  hint="Restore it from your backup, or rotate the role's keys.") from None
        return signers[: self.index["roles"][role]["threshold"]]


def init_keystore(directory: str | Path, *, root_keys: int = 1, root_threshold: int = 1,
                  root_expiry_days: float = 365, force: bool = False) -> KeyStore:
    """Create keys for every role and a self-signed ``root.json`` (version 1)."""
    directory = Path(directory)
    if (directory / "keystore.json").exists() and not force:
        raise UsageError(f"a key store already exists in {directory}",
                         hint="Use it as is, pass another --keys directory, or --force to replace it (devices "
                              "provisioned with the old root.json will then refuse new releases).")
    if not 1 <= root_threshold <= root_keys:
        raise UsageError(f"root threshold {root_threshold} must be between 1 and the number of root keys ({root_keys})")
    (directory / "private").mkdir(parents=True, exist_ok=True)
    os.chmod(directory / "private", 0o700)
    counts = {"root": root_keys, "targets": 1, "snapshot": 1, "timestamp": 1}
    thresholds = {"root": root_threshold, "targets": 1, "snapshot": 1, "timestamp": 1}
    index: dict = {"schema": KEYSTORE_SCHEMA, "roles": {}}
    public: dict[str, list] = {}
    for role, n in counts.items():
        names = []
        for i in range(1, n + 1):
            signer = CryptoSigner.generate_ed25519()
            name = f"{role}-{i}.pem"
            atomic_write_bytes(directory / "private" / name, signer.private_bytes)
            os.chmod(directory / "private" / name, 0o600)
            names.append(name)
            public.setdefault(role, []).append(signer.public_key)
        index["roles"][role] = {"keys": names, "threshold": thresholds[role]}
    root = trust.build_root(public, thresholds, trust.utc_in(root_expiry_days))
    store = KeyStore(directory, index)
    trust.sign(root, store.signers("root"))
    atomic_write_bytes(store.root_path, root.to_bytes())
    atomic_write_json(directory / "keystore.json", index)
    return store


def load_keystore(directory: str | Path) -> KeyStore:
    directory = Path(directory)
    index = read_json(directory / "keystore.json")
    if index is None:
        raise ConfigError(f"no key store in {directory}", hint="Create one with `edgekit keys init`.")
    if index.get("schema") != KEYSTORE_SCHEMA:
        raise ConfigError(f"{directory}/keystore.json has unknown schema {index.get('schema')!r}")
    return KeyStore(directory, index)
