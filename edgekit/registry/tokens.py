"""Bearer tokens for the registry HTTP API (ADR 0009).

A token is ``ekt_<id>_<secret>``: ``id`` (8 hex) names the row, only ``sha256(secret)`` is
stored, so a copy of the database does not hold usable credentials. Roles:

* ``viewer``   – read routes (GET); with ``--private-reads`` reads need at least this;
* ``operator`` – everything: uploads, stages, tags, groups, rollouts and their actions.

Tokens are created, listed and revoked with direct database access (``edgekit registry token
… --db URL``): whoever can open the registry database is already its administrator, so there
is no bootstrap secret. A revoked token answers 401 from the next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from sqlalchemy import Float, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgekit.core.errors import AuthError, ForbiddenError, UsageError

from .db import Base

ROLES = ("viewer", "operator")
_TOKEN = re.compile(r"^ekt_([0-9a-f]{8})_([A-Za-z0-9_-]{20,})$")


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Float)
    revoked: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used: Mapped[float | None] = mapped_column(Float, nullable=True)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(engine: Engine, role: str, name: str) -> dict:
    """A new token; the returned ``token`` is shown once and never stored."""
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}; roles: {', '.join(ROLES)}",
                         hint="operator may change things, viewer may only read.")
    secret = secrets.token_urlsafe(32)
    with Session(engine) as s, s.begin():
        tid = secrets.token_hex(4)
        while s.get(ApiToken, tid) is not None:
            tid = secrets.token_hex(4)
        s.add(ApiToken(id=tid, name=name, role=role, secret_sha256=_digest(secret), created=time.time()))
    return {"id": tid, "name": name, "role": role, "token": f"ekt_{tid}_{secret}"}


def list_tokens(engine: Engine) -> list[dict]:
    with Session(engine) as s:
        return [{"id": t.id, "name": t.name, "role": t.role, "created": t.created, "revoked": t.revoked,
                 "last_used": t.last_used} for t in s.scalars(select(ApiToken).order_by(ApiToken.created))]


def revoke(engine: Engine, token_id: str) -> dict:
    with Session(engine) as s, s.begin():
        t = s.get(ApiToken, token_id)
        if t is None:
            raise UsageError(f"unknown token id {token_id!r}", hint="See `edgekit registry token ls --db URL`.")
        t.revoked = t.revoked or time.time()
        return {"id": t.id, "name": t.name, "role": t.role, "revoked": t.revoked}


def authenticate(engine: Engine, header: str | None) -> dict:
    """The token row (id, name, role) behind an ``Authorization: Bearer …`` header, else AuthError."""
    if not header:
        raise AuthError("this registry route needs a bearer token (no Authorization header was sent)")
    scheme, _, value = header.strip().partition(" ")
    m = _TOKEN.match(value.strip()) if scheme.lower() == "bearer" else None
    if not m:
        raise AuthError("the Authorization header is not `Bearer ekt_…` token",
                        hint="Send the token `edgekit registry token create` printed, as EDGEKIT_REGISTRY_TOKEN.")
    with Session(engine) as s, s.begin():
        t = s.get(ApiToken, m.group(1))
        if t is None or not hmac.compare_digest(t.secret_sha256, _digest(m.group(2))):
            raise AuthError("the registry does not know this token")
        if t.revoked:
            raise AuthError(f"token {t.id} ({t.name}) was revoked",
                            hint="Ask an administrator for a new one (`edgekit registry token create`).")
        if not t.last_used or time.time() - t.last_used > 60:  # not a DB write per request
            t.last_used = time.time()
        return {"id": t.id, "name": t.name, "role": t.role}


def require(identity: dict, role: str, what: str) -> None:
    if ROLES.index(identity["role"]) < ROLES.index(role):
        raise ForbiddenError(f"token {identity['id']} ({identity['name']}) has role {identity['role']!r}; "
                             f"{what} needs {role!r}")
