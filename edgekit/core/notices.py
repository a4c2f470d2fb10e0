"""Signed, expiring, single-use deployment notices: sign on the host, verify on the device.

A notice (schema ``edgekit.notice/1``) names the device and fleet it is for, a random
``nonce``, ``issued_at`` and ``expires_at``. The signed bytes are the canonical JSON
(securesystemslib's ``encode_canonical``, the encoding TUF signs) of every field except
``signatures`` and ``roots``; signatures are Ed25519 by the *notices* keys that the fleet's
root lists in its signed ``x-edgekit-notices`` field (see :mod:`edgekit.core.trust`).
``roots`` may carry newer root versions so a device can follow a key rotation before it
checks the signature (each root verifies itself against the previous one).

The device refuses (each with its own :class:`~edgekit.core.errors.NoticeError`):
unsigned / wrongly signed / under threshold, expired or issued in the future, a lifetime
longer than :data:`MAX_TTL_S`, a nonce already seen (persisted until the notice expires), and
a notice for another device or fleet. The notice's bundle hash is then enforced by the
download, and the bundle itself by the release keys: a notice can only choose *which* signed
release a device installs, never vouch for a model.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, read_json
from .errors import NoticeExpiredError, NoticeReplayError, NoticeSignatureError, NoticeTargetError, TrustError

MAX_TTL_S = 7 * 86400.0     # a notice may live at most a week: bounds the replay cache
CLOCK_SKEW_S = 300.0        # tolerated difference between host and device clocks
UNSIGNED_FIELDS = ("signatures", "roots")


def signed_bytes(notice: dict) -> bytes:
    """Canonical JSON (no floats allowed: times are whole seconds) of the signed fields."""
    from securesystemslib.exceptions import FormatError
    from securesystemslib.formats import encode_canonical

    try:
        return encode_canonical({k: v for k, v in notice.items() if k not in UNSIGNED_FIELDS}).encode()
    except FormatError as exc:
        raise NoticeSignatureError(f"notice cannot be canonically encoded (floats are not allowed): {exc}",
                                   hint="Use integers (whole seconds) or strings in notice fields.") from None


@dataclass
class NoticeSigner:
    """The online notices key(s) of a key store plus the root chain devices may need to follow."""

    signers: list
    roots: list[dict] = field(default_factory=list)

    def sign(self, notice: dict, *, device: str, fleet: str) -> dict:
        """A signed copy of ``notice`` bound to ``fleet``/``device`` with a fresh nonce."""
        out = {k: v for k, v in notice.items() if k not in UNSIGNED_FIELDS}
        now = out["issued_at"] = int(out.get("issued_at", time.time()))
        out["expires_at"] = int(out.get("expires_at", now + 3600))
        out.update(device=device, fleet=fleet, nonce=secrets.token_hex(16))
        if out["expires_at"] - now > MAX_TTL_S:
            raise NoticeExpiredError(f"notice lifetime {out['expires_at'] - now:.0f}s exceeds {MAX_TTL_S:.0f}s",
                                     hint="Use a shorter --ttl; devices refuse longer-lived notices.")
        payload = signed_bytes(out)
        out["signatures"] = [s.sign(payload).to_dict() for s in self.signers]
        if self.roots:
            out["roots"] = self.roots
        return out


class ReplayCache:
    """Nonces of accepted notices, kept (persisted, atomically) until the notice expires."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def seen(self, nonce: str) -> bool:
        return nonce in (read_json(self.path) or {}).get("nonces", {})

    def add(self, nonce: str, expires_at: float, now: float) -> None:
        nonces = {n: exp for n, exp in (read_json(self.path) or {}).get("nonces", {}).items() if exp >= now}
        nonces[nonce] = expires_at
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"nonces": nonces})


def verify_notice(notice: dict, root: Any, *, device: str, fleet: str, replay: ReplayCache | None,
                  now: float | None = None) -> dict:
    """Check signature (against ``root``'s notice keys), target, time window and nonce; then
    record the nonce. ``notice`` has already passed the schema check; ``root`` is a
    ``Metadata[Root]`` (after following any ``roots`` the notice carried)."""
    from securesystemslib.exceptions import UnverifiedSignatureError
    from securesystemslib.signer import Signature

    now = time.time() if now is None else now
    dep = notice.get("deployment_id", "?")
    sigs = notice.get("signatures")
    if not sigs:
        raise NoticeSignatureError(f"deployment notice {dep} is not signed; devices only act on signed notices")
    from .trust import notice_keys

    try:
        keys, threshold = notice_keys(root.signed)
    except TrustError as exc:
        raise NoticeSignatureError(exc.message, hint=exc.hint) from None
    by_id = {k.keyid: k for k in keys}
    payload = signed_bytes(notice)
    good: set[str] = set()
    for raw in sigs if isinstance(sigs, list) else []:
        try:
            sig = Signature.from_dict(dict(raw))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        key = by_id.get(sig.keyid)
        if key is None:
            continue
        try:
            key.verify_signature(sig, payload)
            good.add(sig.keyid)
        except UnverifiedSignatureError:
            continue
    if len(good) < threshold:
        raise NoticeSignatureError(f"deployment notice {dep} is not signed by this fleet's notice key(s) "
                                   f"({len(good)} of {threshold} valid signatures)",
                                   keyids=[s.get("keyid") for s in sigs if isinstance(s, dict)])
    if notice.get("device") != device or notice.get("fleet") != fleet:
        raise NoticeTargetError(f"deployment notice {dep} is for {notice.get('fleet')}/{notice.get('device')}, "
                                f"not {fleet}/{device}", notice_device=notice.get("device"))
    issued, expires = notice.get("issued_at"), notice.get("expires_at")
    if not isinstance(expires, (int, float)) or not isinstance(issued, (int, float)):
        raise NoticeExpiredError(f"deployment notice {dep} has no issued_at/expires_at")
    if expires - issued > MAX_TTL_S:
        raise NoticeExpiredError(f"deployment notice {dep} claims a lifetime of {expires - issued:.0f}s "
                                 f"(max {MAX_TTL_S:.0f}s)")
    if expires < now:
        raise NoticeExpiredError(f"deployment notice {dep} expired {now - expires:.0f}s ago", expires_at=expires)
    if issued > now + CLOCK_SKEW_S:
        raise NoticeExpiredError(f"deployment notice {dep} is issued {issued - now:.0f}s in the future "
                                 "(device clock behind?)", issued_at=issued)
    nonce = notice.get("nonce")
    if not isinstance(nonce, str) or len(nonce) < 16:
        raise NoticeReplayError(f"deployment notice {dep} has no nonce")
    if replay is not None:
        if replay.seen(nonce):
            raise NoticeReplayError(f"deployment notice {dep} was already used (replayed nonce {nonce[:8]}…)")
        replay.add(nonce, expires, now)
    return notice


def check_on_device(notice: dict, trusted_root: Path, history: Path, *, device: str, fleet: str,
                    replay_path: Path, now: float | None = None) -> dict:
    """The agent's hook: follow roots the notice carries (from the provisioned root + persisted
    history), then :func:`verify_notice`. Every refusal names the deployment id."""
    from . import trust
    from .errors import EdgekitError

    dep = notice.get("deployment_id")
    try:
        root = trust.load_trusted_root(Path(trusted_root).read_bytes(), history)
        root = trust.update_root(root, carried_roots(notice), history)
    except (EdgekitError, OSError) as exc:
        raise NoticeSignatureError(f"notice {dep}: {getattr(exc, 'message', exc)}", deployment_id=dep) from None
    try:
        return verify_notice(notice, root, device=device, fleet=fleet, replay=ReplayCache(replay_path), now=now)
    except EdgekitError as exc:
        exc.details.setdefault("deployment_id", dep)
        raise


def carried_roots(notice: dict) -> list[bytes]:
    roots = notice.get("roots") or []
    return [json.dumps(r).encode() for r in roots if isinstance(r, dict)]
