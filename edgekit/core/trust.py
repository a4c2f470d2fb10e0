"""Trust chain on python-tuf's metadata API: build/sign root and targets, verify offline.

The fleet's trust anchor is a TUF ``root.json`` (Ed25519 keys, thresholds, expiry) provisioned
on each device. A release is a ``targets`` metadata document signed by the targets role,
listing every file in the bundle with length, SHA-256 and custom fields (profile, model,
version). The agent verifies it against its provisioned root *without a network*:
``Root.verify_delegate("targets", ...)`` → expiry with a persisted time floor → per-file
length and hashes. Private keys never reach this module's verify path (see ``edgekit.keys``).

tuf/securesystemslib exceptions are mapped to :mod:`edgekit.core.errors` here.
Importing this module costs ~20 MB RSS (tuf): the agent imports it only when a bundle arrives.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import IO, Any, Iterable

from securesystemslib.signer import Signer
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Role, Root, TargetFile, Targets

from .errors import ExpiredError, IntegrityError, TrustError

ROLES = ("root", "targets", "snapshot", "timestamp")


def utc_in(days: float, now: float | None = None) -> dt.datetime:
    base = dt.datetime.fromtimestamp(now if now is not None else time.time(), tz=dt.timezone.utc)
    return (base + dt.timedelta(days=days)).replace(microsecond=0)


NOTICES_FIELD = "x-edgekit-notices"  # root field listing the deployment-notice keys (signed by root)

# The registry's hosted repository (ADR 0010): top-level targets delegates every bundle path to the
# online role ``released`` (signed with the snapshot keys); one entry per released bundle.
RELEASED_ROLE = "released"
RELEASED_PATTERN = "*/*/*.bundle"


def released_target_path(model: str, version: str, profile: str) -> str:
    """The hosted target path of one released bundle: ``model/version/profile.bundle``."""
    return f"{model}/{version}/{profile}.bundle"


def build_root(role_keys: dict[str, list], thresholds: dict[str, int], expires: dt.datetime,
               version: int = 1) -> Metadata[Root]:
    """Make an unsigned root listing ``role_keys[role]`` (public ``Key`` objects) per role.

    ``role_keys["notices"]`` (optional) are the online keys that sign deployment notices; TUF's
    Root only knows the four top-level roles, so they live in the signed field ``x-edgekit-notices``.
    """
    root = Root(version=version, expires=expires, consistent_snapshot=True)
    if role_keys.get("notices"):
        set_notice_keys(root, role_keys["notices"], thresholds.get("notices", 1))
    for role in ROLES:
        keys = role_keys.get(role, [])
        if not keys:
            raise TrustError(f"role {role!r} needs at least one key")
        if not 1 <= thresholds.get(role, 1) <= len(keys):
            raise TrustError(f"threshold for {role!r} must be between 1 and {len(keys)}")
        root.roles[role] = Role([], thresholds.get(role, 1))
        for key in keys:
            root.add_key(key, role)
    return Metadata(root)


def sign(md: Metadata, signers: Iterable[Signer]) -> Metadata:
    for i, signer in enumerate(signers):
        md.sign(signer, append=i > 0)  # sign() replaces signatures unless append=True
    return md


def build_targets(files: dict[str, bytes], version: int, expires: dt.datetime,
                  custom: dict[str, dict] | None = None) -> Metadata[Targets]:
    """Targets metadata for a release: one entry per bundle member, custom fields signed too."""
    targets: dict[str, TargetFile] = {}
    for path, data in files.items():
        tf = TargetFile.from_data(path, data, ["sha256"])
        if custom and path in custom:
            tf.unrecognized_fields["custom"] = custom[path]
        targets[path] = tf
    return Metadata(Targets(version=version, expires=expires, targets=targets))


def load_root(raw: bytes, what: str = "provisioned root.json") -> Metadata[Root]:
    try:
        md = Metadata[Root].from_bytes(raw)
    except (tuf_exc.RepositoryError, ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"{what} is not valid root metadata: {exc}") from None
    if md.signed.type != Root.type:
        raise TrustError(f"{what} is not a root role document")
    return md


def verify_root_self_signed(md: Metadata[Root]) -> None:
    """A root must meet its own root threshold (used on ``keys init`` and on provisioning)."""
    try:
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except tuf_exc.UnsignedMetadataError as exc:
        raise TrustError(f"root metadata is not signed by its own root keys: {exc}") from None


def verify_targets(root: Metadata[Root], raw_targets: bytes, *, reference_time: float,
                   allow_expired: bool = False) -> Metadata[Targets]:
    """Check signatures against the provisioned root, and expiry at ``reference_time``.

    ``reference_time`` should be ``max(clock, persisted floor, agent build time)`` so a device
    with a wrong clock cannot be tricked into accepting expired metadata.
    """
    try:
        md = Metadata[Targets].from_bytes(raw_targets)
    except (tuf_exc.RepositoryError, ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"signed metadata in the bundle is malformed: {exc}") from None
    if md.signed.type != Targets.type:
        raise TrustError(f"bundle metadata has type {md.signed.type!r}, expected 'targets'")
    try:
        root.signed.verify_delegate(Targets.type, md.signed_bytes, md.signatures)
    except tuf_exc.UnsignedMetadataError as exc:
        raise TrustError(
            f"bundle is not signed by this fleet's release keys ({exc})",
            keyids=sorted(md.signatures),
        ) from None
    ref = dt.datetime.fromtimestamp(reference_time, tz=dt.timezone.utc)
    if md.signed.is_expired(ref) and not allow_expired:
        raise ExpiredError(f"release metadata expired on {md.signed.expires.isoformat()}",
                           expires=md.signed.expires.isoformat())
    return md


def verify_member(md: Metadata[Targets], path: str, data: bytes | IO[bytes]) -> TargetFile:
    """Check one bundle member's length and hashes against the signed targets entry."""
    tf = md.signed.targets.get(path)
    if tf is None:
        raise IntegrityError(f"bundle member {path!r} is not listed in the signed metadata")
    try:
        tf.verify_length_and_hashes(data)
    except tuf_exc.LengthOrHashMismatchError as exc:
        raise IntegrityError(f"bundle member {path!r} does not match its signed hash/length: {exc}",
                             member=path) from None
    return tf


def verify_member_digest(md: Metadata[Targets], path: str, length: int, sha256_hex: str) -> TargetFile:
    """Like :func:`verify_member` for a caller that hashed the bytes while copying them (one pass).

    The signed entry must carry a ``sha256`` hash (edgekit always signs one).
    """
    tf = md.signed.targets.get(path)
    if tf is None:
        raise IntegrityError(f"bundle member {path!r} is not listed in the signed metadata")
    want = tf.hashes.get("sha256")
    if want is None:
        raise IntegrityError(f"signed entry of {path!r} has no sha256 hash", member=path)
    if tf.length != length or want != sha256_hex:
        raise IntegrityError(f"bundle member {path!r} does not match its signed hash/length: got {length} bytes "
                             f"sha256 {sha256_hex[:12]}…, signed {tf.length} bytes sha256 {want[:12]}…",
                             member=path)
    return tf


def custom(md: Metadata[Targets], path: str) -> dict[str, Any]:
    tf = md.signed.targets.get(path)
    return dict(tf.custom) if tf is not None and isinstance(tf.custom, dict) else {}


def set_notice_keys(root: Root, keys: list, threshold: int = 1) -> None:
    if not 1 <= threshold <= len(keys):
        raise TrustError(f"threshold for 'notices' must be between 1 and {len(keys)}")
    root.unrecognized_fields[NOTICES_FIELD] = {"keys": {k.keyid: k.to_dict() for k in keys}, "threshold": threshold}


def notice_keys(root: Root) -> tuple[list, int]:
    """The public keys (securesystemslib ``Key``) allowed to sign notices, and how many must sign."""
    from securesystemslib.signer import Key

    field = root.unrecognized_fields.get(NOTICES_FIELD)
    if not isinstance(field, dict) or not field.get("keys"):
        raise TrustError("this device's trust root lists no deployment-notice keys",
                         hint="Re-provision the device with a root.json from a current `edgekit keys init`, or "
                              "rotate with `edgekit keys rotate --role notices`.")
    try:
        keys = [Key.from_dict(kid, dict(kd)) for kid, kd in field["keys"].items()]
    except (KeyError, TypeError, ValueError) as exc:
        raise TrustError(f"notice keys in the trust root are malformed: {exc}") from None
    return keys, int(field.get("threshold", 1))


# -- root rotation: devices follow root N -> N+1 -> ... offline ----------------------------------
def _parse_root(raw: bytes) -> Metadata[Root]:
    return load_root(raw, "a root document carried for rotation")


def next_root(trusted: Metadata[Root], raw: bytes) -> Metadata[Root]:
    """Verify ``raw`` as version N+1 of ``trusted``: threshold of the old AND the new root keys."""
    new = _parse_root(raw)
    try:
        result = new.signed.get_root_verification_result(trusted.signed, new.signed_bytes, new.signatures)
    except ValueError as exc:
        raise TrustError(f"root rotation refused: {exc}") from None
    if not result.verified:
        raise TrustError(f"root v{new.signed.version} is not signed by the threshold of both the old and the new "
                         "root keys: refusing the rotation",
                         hint="Sign the new root with `edgekit keys rotate` (it uses the old and the new keys).")
    return new


def load_trusted_root(provisioned: bytes, history: Path | None) -> Metadata[Root]:
    """The newest root reachable from the provisioned (factory) root through ``history/N.root.json``.

    The chain is re-verified from the provisioned root every time, so a forged file in the
    history is never trusted (it stops the walk)."""
    root = load_root(provisioned)
    while history is not None:
        path = history / f"{root.signed.version + 1}.root.json"
        if not path.exists():
            break
        try:
            root = next_root(root, path.read_bytes())
        except TrustError:
            break
    return root


def update_root(trusted: Metadata[Root], candidates: Iterable[bytes], history: Path | None) -> Metadata[Root]:
    """Follow the newer roots among ``candidates`` one version at a time, persisting each to ``history``."""
    from .atomic import atomic_write_bytes

    by_version: dict[int, bytes] = {}
    for raw in candidates:
        by_version[_parse_root(raw).signed.version] = raw
    while (raw := by_version.get(trusted.signed.version + 1)) is not None:
        trusted = next_root(trusted, raw)
        if history is not None:
            history.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(history / f"{trusted.signed.version}.root.json", raw)
    return trusted
