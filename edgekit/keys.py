"""Host-side key store: generates Ed25519 keys per TUF role, writes and reads them, signs root.

Layout of a key store directory::

    root.json                 signed root metadata (newest version): provision this on every device
    roots/<N>.root.json       every root version: bundles and notices carry 2..N so devices follow
    keystore.json             which private key files belong to which role, thresholds
    private/<role>-<n>.pem    PKCS#8 private keys (mode 0600). Keep root keys offline.
    private/retired/          keys replaced by `edgekit keys rotate` (revoked: no device accepts them)

Roles: root (offline, threshold ≥ 1, e.g. 2 of 3), targets (signs releases), snapshot/timestamp
(online: the registry's hosted TUF repository, ``edgekit registry serve --trust``, ADR 0010), notices (online: signs deployment notices; listed in
the root's signed ``x-edgekit-notices`` field).

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

    def root_chain(self) -> list[bytes]:
        """Root versions 2..N (version 1 is what devices were provisioned with at the latest)."""
        d = self.directory / "roots"
        files = sorted(d.glob("*.root.json"), key=lambda p: int(p.name.split(".")[0])) if d.exists() else []
        return [p.read_bytes() for p in files if int(p.name.split(".")[0]) > 1]

    def notice_signer(self):
        import json

        from .core.notices import NoticeSigner

        return NoticeSigner(self.signers("notices"), [json.loads(raw) for raw in self.root_chain()])

    def signers(self, role: str) -> list[CryptoSigner]:
        files = self.index["roles"].get(role, {}).get("keys", [])
        if not files:
            raise ConfigError(f"key store {self.directory} has no keys for role {role!r}")
        threshold = self.index["roles"][role]["threshold"]
        signers, missing = [], []
        for name in files:  # offline keys (e.g. 2 of 3 root keys): any `threshold` present ones will do
            path = self.directory / "private" / name
            if len(signers) == threshold:
                break
            try:
                signers.append(CryptoSigner(load_pem_private_key(path.read_bytes(), None)))
            except FileNotFoundError:
                missing.append(str(path))
        if len(signers) < threshold:
            raise ConfigError(f"role {role!r} needs {threshold} private key(s) but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} missing",
                              hint="Bring the offline key files back into private/ (or restore them from your "
                                   "backup), or rotate the role's keys.")
        return signers


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
    counts = {"root": root_keys, "targets": 1, "snapshot": 1, "timestamp": 1, "notices": 1}
    thresholds = {"root": root_threshold, "targets": 1, "snapshot": 1, "timestamp": 1, "notices": 1}
    index: dict = {"schema": KEYSTORE_SCHEMA, "roles": {}}
    public: dict[str, list] = {}
    for role, n in counts.items():
        names, public[role] = _new_keys(directory, role, n, first=1)
        index["roles"][role] = {"keys": names, "threshold": thresholds[role]}
    root = trust.build_root(public, thresholds, trust.utc_in(root_expiry_days))
    store = KeyStore(directory, index)
    trust.sign(root, store.signers("root"))
    _write_root(store, root.to_bytes(), 1)
    atomic_write_json(directory / "keystore.json", index)
    return store


def _new_keys(directory: Path, role: str, n: int, first: int) -> tuple[list[str], list]:
    names, public = [], []
    for i in range(first, first + n):
        signer = CryptoSigner.generate_ed25519()
        name = f"{role}-{i}.pem"
        atomic_write_bytes(directory / "private" / name, signer.private_bytes)
        os.chmod(directory / "private" / name, 0o600)
        names.append(name)
        public.append(signer.public_key)
    return names, public


def _write_root(store: KeyStore, raw: bytes, version: int) -> None:
    (store.directory / "roots").mkdir(exist_ok=True)
    atomic_write_bytes(store.directory / "roots" / f"{version}.root.json", raw)
    atomic_write_bytes(store.root_path, raw)


ROTATABLE = ("root", "targets", "notices", "snapshot", "timestamp")  # the last two: registry's online keys


def rotate(store: KeyStore, role: str, *, expiry_days: float = 365) -> dict:
    """Replace ``role``'s keys with new ones in root version N+1 (the old keys are revoked).

    Root N+1 is signed by the threshold of the *current* root keys (and, when the root keys
    themselves rotate, also of the new ones), so devices holding root N accept it and follow.
    """
    from tuf.api.metadata import Metadata, Root

    if role not in ROTATABLE:
        raise UsageError(f"cannot rotate role {role!r}; rotatable: {', '.join(ROTATABLE)}")
    current = trust.load_root(store.root_bytes())
    old_signers = store.signers("root")
    if not (store.directory / "roots" / f"{current.signed.version}.root.json").exists():
        _write_root(store, store.root_bytes(), current.signed.version)  # key stores older than rotation
    entry = store.index["roles"].get(role, {"keys": [], "threshold": 1})
    n = max(len(entry["keys"]), 1)
    first = 1 + max([int(k.rsplit("-", 1)[1].split(".")[0]) for k in entry["keys"]] +
                    [int(p.stem.rsplit("-", 1)[1]) for p in (store.directory / "private" / "retired").glob(f"{role}-*.pem")]
                    + [0])
    names, public = _new_keys(store.directory, role, n, first)
    new: Root = Metadata[Root].from_bytes(current.to_bytes()).signed  # a copy (to_dict shares keyid lists)
    new.version, new.expires = current.signed.version + 1, trust.utc_in(expiry_days)
    if role == "notices":
        trust.set_notice_keys(new, public, entry["threshold"])
    else:
        for keyid in list(new.roles[role].keyids):
            new.revoke_key(keyid, role)
        for key in public:
            new.add_key(key, role)
    md = Metadata(new)
    retired = store.directory / "private" / "retired"
    retired.mkdir(exist_ok=True)
    old_files = list(entry["keys"])
    store.index["roles"][role] = {"keys": names, "threshold": entry["threshold"]}
    signers = old_signers + (store.signers("root") if role == "root" else [])
    trust.sign(md, signers)
    # refuse to publish a root that devices would not accept
    trust.next_root(current, md.to_bytes())
    for name in old_files:  # an offline key is revoked too; it is simply not here to move
        if (store.directory / "private" / name).exists():
            os.replace(store.directory / "private" / name, retired / name)
    _write_root(store, md.to_bytes(), new.version)
    atomic_write_json(store.directory / "keystore.json", store.index)
    return {"role": role, "version": new.version, "revoked_keyids": sorted(set(current.signed.keys) - set(new.keys)),
            "new_keyids": [k.keyid for k in public]}


def load_keystore(directory: str | Path) -> KeyStore:
    directory = Path(directory)
    index = read_json(directory / "keystore.json")
    if index is None:
        raise ConfigError(f"no key store in {directory}", hint="Create one with `edgekit keys init`.")
    if index.get("schema") != KEYSTORE_SCHEMA:
        raise ConfigError(f"{directory}/keystore.json has unknown schema {index.get('schema')!r}")
    return KeyStore(directory, index)
