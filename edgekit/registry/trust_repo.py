"""The registry's hosted TUF repository: stored, served and re-signed metadata (ADR 0010).

Roles (python-tuf ``Metadata`` API, consistent snapshots, all versions in the table
``trust_metadata`` so a restart never lowers a version)::

    N.root.json        the fleet's roots, imported from the operator's key store (offline keys)
    N.targets.json     top-level targets, signed ONCE by the operator's release (targets) key: lists
                       nothing itself, delegates ``*/*/*.bundle`` to the role ``released`` whose keys
                       are the root's snapshot keys (``edgekit registry trust init``; long expiry)
    N.released.json    every bundle of a *released* model version: path ``model/version/profile.bundle``,
                       length, sha256, custom {model, version, profile, release}; online (snapshot key)
    N.snapshot.json    versions of targets + released; online (snapshot key), default 7 days
    timestamp.json     version + hash of the snapshot; online (timestamp key), default 1 day

:meth:`TrustRepo.resign` re-signs ``released`` when the catalog changed (a deprecated release
drops out) and every online role when less than half of its lifetime is left; the registry runs
it in a background thread (:class:`Resigner`) and after each API write. Release (targets) and root
keys never reach the registry: it needs only the timestamp and snapshot private keys.

This module does not verify bundles (devices do) and does not decide who may write (``tokens``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import threading
import time
from pathlib import Path

from sqlalchemy import Float, Integer, String, Text, UniqueConstraint, delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgekit.core import trust
from edgekit.core.errors import ConfigError, TrustError

from .catalog import ModelArtifact, ModelVersion
from .db import Base

log = logging.getLogger("edgekit.registry.trust")

DAY = 86400.0
DEFAULT_LIFETIMES = {"timestamp": 1 * DAY, "snapshot": 7 * DAY, "released": 7 * DAY}
TARGETS_DAYS = 365.0            # the operator-signed delegation
KEEP_VERSIONS = 16              # older versions of the online roles are pruned (roots are kept)
ONLINE = ("released", "snapshot", "timestamp")
_NAME = re.compile(r"^(?:(\d+)\.(root|targets|snapshot|released)|(timestamp))\.json$")


class TrustMetadataRow(Base):
    __tablename__ = "trust_metadata"
    __table_args__ = (UniqueConstraint("role", "version", name="uq_trust_metadata_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    role: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer)
    signed_at: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)
    raw: Mapped[str] = mapped_column(Text)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.timezone.utc)


def _expiry(ts: float) -> dt.datetime:
    """Whole seconds (TUF's format), rounded up so a role never lives shorter than configured."""
    return dt.datetime.fromtimestamp(math.ceil(ts), tz=dt.timezone.utc)


def _latest(s: Session, role: str) -> TrustMetadataRow | None:
    return s.scalar(select(TrustMetadataRow).where(TrustMetadataRow.role == role)
                    .order_by(TrustMetadataRow.version.desc()).limit(1))


def read_metadata(engine: Engine, name: str) -> bytes | None:
    """The bytes served for ``name`` (``timestamp.json`` or ``N.ROLE.json``); None when unknown (HTTP 404)."""
    m = _NAME.match(name)
    if not m:
        return None
    with Session(engine) as s:
        if m.group(3):
            row = _latest(s, "timestamp")
        else:
            row = s.scalar(select(TrustMetadataRow).where(TrustMetadataRow.role == m.group(2),
                                                          TrustMetadataRow.version == int(m.group(1))))
        return row.raw.encode() if row else None


def status(engine: Engine, now: float | None = None) -> dict:
    """Versions, expiries and the next re-sign (when half the lifetime is left) per role, from the database."""
    now = time.time() if now is None else now
    roles = {}
    with Session(engine) as s:
        for role in ("root", "targets") + ONLINE:
            row = _latest(s, role)
            if row is None:
                continue
            entry = {"version": row.version, "signed_at": _utc(row.signed_at).isoformat(),
                     "expires": _utc(row.expires).isoformat(), "expires_in_s": round(row.expires - now, 1),
                     "expired": row.expires <= now}
            if role in ONLINE:
                due = row.signed_at + (row.expires - row.signed_at) / 2
                entry["next_resign"] = _utc(due).isoformat()
                entry["next_resign_in_s"] = round(due - now, 1)
            if role == "released":
                entry["targets"] = len(_parse(row.raw).signed.targets)
            roles[role] = entry
    hosted = all(r in roles for r in ("root", "targets") + ONLINE)
    problems = [f"{r} expired on {e['expires']}" for r, e in roles.items() if e["expired"] and r != "root"]
    problems += [f"{r} re-sign overdue by {-e['next_resign_in_s']:.0f} s (is `registry serve --trust` running?)"
                 for r, e in roles.items() if r in ONLINE and e["next_resign_in_s"] < 0 and not e["expired"]]
    return {"hosted": hosted, "ok": hosted and not problems, "roles": roles, "problems": problems,
            **({} if hosted else {"hint": "Run `edgekit registry trust init --db URL --keys DIR`, then "
                                          "`edgekit registry serve --trust --keys DIR`."})}


def _parse(raw: str | bytes):
    from tuf.api.metadata import Metadata

    return Metadata.from_bytes(raw.encode() if isinstance(raw, str) else raw)


class TrustRepo:
    """Signs and stores the hosted metadata with a key store's keys (re-read at every signing, so a
    key rotation is picked up without a restart)."""

    def __init__(self, engine: Engine, keys_dir: str | Path, lifetimes: dict[str, float] | None = None) -> None:
        self.engine, self.keys_dir = engine, Path(keys_dir)
        self.lifetimes = {**DEFAULT_LIFETIMES, **(lifetimes or {})}
        for role, value in self.lifetimes.items():
            if role not in DEFAULT_LIFETIMES or not value > 0:
                raise ConfigError(f"trust metadata lifetime for {role!r} must be a positive number of seconds",
                                  hint=f"Roles with a lifetime: {', '.join(DEFAULT_LIFETIMES)}.")
        self._lock = threading.Lock()

    def _keystore(self):
        from edgekit.keys import load_keystore

        return load_keystore(self.keys_dir)

    # -- roots and the operator-signed delegation ------------------------------------------------
    def import_roots(self, store=None) -> None:
        """Store every root version of the key store (``store``: already loaded) that the table does not hold yet."""
        store = store or self._keystore()
        raw = store.root_bytes()
        raws = {trust.load_root(raw).signed.version: raw}
        for raw in store.root_chain():
            raws[trust.load_root(raw, "a key store root").signed.version] = raw
        with Session(self.engine) as s, s.begin():
            have = set(s.scalars(select(TrustMetadataRow.version).where(TrustMetadataRow.role == "root")))
            for version, raw in sorted(raws.items()):
                if version not in have:
                    md = trust.load_root(raw)
                    s.add(TrustMetadataRow(role="root", version=version, signed_at=time.time(),
                                           expires=md.signed.expires.timestamp(), raw=raw.decode()))

    def newest_root(self):
        with Session(self.engine) as s:
            row = _latest(s, "root")
            if row is None:
                raise ConfigError("the registry holds no trust root yet",
                                  hint="Run `edgekit registry trust init --db URL --keys DIR` (operator, once).")
            return trust.load_root(row.raw.encode(), "the registry's newest root")

    def init_targets(self, days: float = TARGETS_DAYS) -> dict:
        """Operator step: sign top-level targets (release key) delegating bundles to the snapshot keys."""
        from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Targets

        store = self._keystore()
        self.import_roots(store)
        root = self.newest_root()
        snap = root.signed.roles["snapshot"]
        keys = {kid: root.signed.keys[kid] for kid in snap.keyids}
        role = DelegatedRole(trust.RELEASED_ROLE, list(snap.keyids), snap.threshold, True,
                             paths=[trust.RELEASED_PATTERN])
        md = Metadata(Targets(version=self._next_version("targets"), expires=trust.utc_in(days), targets={},
                              delegations=Delegations(keys=keys, roles={role.name: role})))
        trust.sign(md, store.signers("targets"))
        self._verify_targets(root, md)
        self._store({"targets": md})
        return {"role": "targets", "version": md.signed.version, "expires": md.signed.expires.isoformat(),
                "delegates_to": trust.RELEASED_ROLE, "keyids": sorted(keys)}

    def _verify_targets(self, root, md) -> None:
        try:
            root.signed.verify_delegate("targets", md.signed_bytes, md.signatures)
        except Exception as exc:  # tuf UnsignedMetadataError: the key store's release key is not the root's
            raise TrustError(f"top-level targets is not signed by root v{root.signed.version}'s release keys: {exc}",
                             hint="Use the key store whose root the devices hold; after `edgekit keys rotate "
                                  "--role targets` run `edgekit registry trust init` again.") from None

    def delegation_problem(self) -> str | None:
        """Why the stored top-level targets no longer fits the newest root (None when it does)."""
        root = self.newest_root()
        with Session(self.engine) as s:
            row = _latest(s, "targets")
        if row is None:
            return "no top-level targets yet"
        md = _parse(row.raw)
        try:
            self._verify_targets(root, md)
        except TrustError as exc:
            return exc.message
        delegated = md.signed.delegations.roles.get(trust.RELEASED_ROLE) if md.signed.delegations else None
        if delegated is None or set(delegated.keyids) != set(root.signed.roles["snapshot"].keyids):
            return "its delegation does not name the root's current snapshot keys (rotated?)"
        if md.signed.expires.timestamp() <= time.time():
            return f"it expired on {md.signed.expires.isoformat()}"
        return None

    def ensure_targets(self) -> None:
        """At start-up: import new roots; (re)sign the delegation if it is missing or stale and the
        release key is present, else say what the operator must do."""
        self.import_roots()
        problem = self.delegation_problem()
        if problem is None:
            return
        try:
            self._keystore().signers("targets")  # the release key (threshold of them) is here: sign now
        except ConfigError:
            raise ConfigError(f"the hosted top-level targets needs the operator: {problem}",
                              hint="On the release host run `edgekit registry trust init --db URL --keys DIR` "
                                   "(signs with the release key), then start the registry again.") from None
        self.init_targets()

    # -- the online roles ----------------------------------------------------------------------
    def released_targets(self) -> dict:
        from tuf.api.metadata import TargetFile

        out = {}
        with Session(self.engine) as s:
            rows = s.execute(select(ModelVersion, ModelArtifact).join(
                ModelArtifact, ModelArtifact.version_id == ModelVersion.id).where(ModelVersion.stage == "released"))
            for ver, art in rows:
                path = trust.released_target_path(ver.model, ver.version, art.profile)
                out[path] = TargetFile(art.length, {"sha256": art.sha256}, path, unrecognized_fields={"custom": {
                    "model": ver.model, "version": ver.version, "profile": art.profile, "release": art.release}})
        return out

    def resign(self, force: bool = False, now: float | None = None) -> dict:
        """Sign what is due: ``released`` if the catalog changed, any online role past half its
        lifetime (or all with ``force``), and every role above a changed one. Returns {role: version}."""
        from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets, Timestamp

        now = time.time() if now is None else now
        with self._lock:
            store = self._keystore()
            self.import_roots(store)
            with Session(self.engine) as s:
                cur = {role: _latest(s, role) for role in ("targets",) + ONLINE}
            if cur["targets"] is None:
                raise ConfigError("no top-level targets to host yet",
                                  hint="Run `edgekit registry trust init --db URL --keys DIR` once (operator).")
            nxt = {r: (cur[r].version if cur[r] else 0) + 1 for r in ONLINE}  # rows are the newest of each role
            due = {r: force or cur[r] is None or now >= cur[r].signed_at + (cur[r].expires - cur[r].signed_at) / 2
                   for r in ONLINE}
            new: dict = {}
            wanted = self.released_targets()
            old = _parse(cur["released"].raw).signed.targets if cur["released"] else None
            listed = _parse(cur["snapshot"].raw).signed.meta.get("targets.json") if cur["snapshot"] else None
            targets_changed = listed is None or listed.version != cur["targets"].version  # e.g. new delegation keys
            if due["released"] or targets_changed or old is None or \
                    {p: t.to_dict() for p, t in old.items()} != {p: t.to_dict() for p, t in wanted.items()}:
                new["released"] = Metadata(Targets(version=nxt["released"],
                                                   expires=_expiry(now + self.lifetimes["released"]), targets=wanted))
                trust.sign(new["released"], store.signers("snapshot"))
            released_v = new["released"].signed.version if "released" in new else cur["released"].version
            if new or due["snapshot"]:
                new["snapshot"] = Metadata(Snapshot(
                    version=nxt["snapshot"], expires=_expiry(now + self.lifetimes["snapshot"]),
                    meta={"targets.json": MetaFile(cur["targets"].version), "released.json": MetaFile(released_v)}))
                trust.sign(new["snapshot"], store.signers("snapshot"))
            snap_raw = new["snapshot"].to_bytes() if "snapshot" in new else cur["snapshot"].raw.encode()
            if new or due["timestamp"]:
                snap_v = new["snapshot"].signed.version if "snapshot" in new else cur["snapshot"].version
                new["timestamp"] = Metadata(Timestamp(
                    version=nxt["timestamp"], expires=_expiry(now + self.lifetimes["timestamp"]),
                    snapshot_meta=MetaFile(snap_v, len(snap_raw), {"sha256": hashlib.sha256(snap_raw).hexdigest()})))
                trust.sign(new["timestamp"], store.signers("timestamp"))
            if new:
                self._store(new, now, raws={"snapshot": snap_raw})  # the exact bytes the timestamp hashed
            return {role: md.signed.version for role, md in new.items()}

    def _next_version(self, role: str) -> int:
        with Session(self.engine) as s:
            return (s.scalar(select(func.max(TrustMetadataRow.version)).where(TrustMetadataRow.role == role)) or 0) + 1

    def _store(self, mds: dict, now: float | None = None, raws: dict | None = None) -> None:
        """Insert the new versions in one transaction (a concurrent signer makes it fail: retried next tick)."""
        now = time.time() if now is None else now
        try:
            with Session(self.engine) as s, s.begin():
                for role, md in mds.items():
                    raw = (raws or {}).get(role) or md.to_bytes()
                    s.add(TrustMetadataRow(role=role, version=md.signed.version, signed_at=now,
                                           expires=md.signed.expires.timestamp(), raw=raw.decode()))
                    if role in ONLINE:
                        s.execute(delete(TrustMetadataRow).where(TrustMetadataRow.role == role,
                                                                 TrustMetadataRow.version <= md.signed.version - KEEP_VERSIONS))
        except DbIntegrityError:
            raise ConfigError("another registry process signed the same trust metadata version concurrently",
                              hint="Run the re-signer in one process only (`registry serve --trust` without "
                                   "--no-rollouts); it retries on its next tick.") from None


class Resigner:
    """Background thread: :meth:`TrustRepo.resign` every ``tick_s`` (a quarter of the shortest lifetime,
    between 0.2 s and 60 s) and when woken; failures are counted and retried, never fatal."""

    def __init__(self, repo: TrustRepo, tick_s: float | None = None) -> None:
        self.repo = repo
        self.tick_s = tick_s or min(max(min(repo.lifetimes.values()) / 4, 0.2), 60.0)
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> None:
        try:
            self.repo.resign()
        except Exception as exc:  # noqa: BLE001 - keep re-signing (next tick); `trust status` shows what is overdue
            log.warning("re-signing the hosted trust metadata failed (retried in %.1f s): %s", self.tick_s, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def start(self) -> "Resigner":
        self._thread = threading.Thread(target=self._run, name="trust-resigner", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
