"""Registry storage: SQLAlchemy models and the queries the API and ingest need.

SQLite by default (WAL mode), any SQLAlchemy URL otherwise (PostgreSQL is the path at scale).
Write paths take batches so MQTT ingest commits once per batch, not once per message.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import (JSON, Boolean, Float, Integer, String, UniqueConstraint, create_engine, event, func, insert,
                        select)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from edgekit.core.errors import ConfigError


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64), index=True)
    profile: Mapped[str | None] = mapped_column(String(64))
    agent_version: Mapped[str | None] = mapped_column(String(32))
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    session: Mapped[int] = mapped_column(Integer, default=0)
    model: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(64))
    last_seen: Mapped[float] = mapped_column(Float, default=0.0)
    last_status_reason: Mapped[str | None] = mapped_column(String(128))
    health: Mapped[dict | None] = mapped_column(JSON)
    inference: Mapped[dict | None] = mapped_column(JSON)


class EventRow(Base):
    __tablename__ = "events"
    # a redelivered message (ingest acknowledges only after commit) must not be stored twice:
    # a device's (seq, ts) names one message; seq restarts with the agent, ts does not repeat
    __table_args__ = (UniqueConstraint("device", "seq", "ts", name="uq_events_message"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(64), index=True)
    ts: Mapped[float] = mapped_column(Float)
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32))
    ok: Mapped[bool] = mapped_column(Boolean)
    deployment_id: Mapped[str | None] = mapped_column(String(64), index=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON)


class TelemetryRow(Base):
    __tablename__ = "telemetry"
    __table_args__ = (UniqueConstraint("device", "seq", "ts", name="uq_telemetry_message"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    ts: Mapped[float] = mapped_column(Float, index=True)
    payload: Mapped[dict] = mapped_column(JSON)


class Artifact(Base):
    __tablename__ = "artifacts"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    size: Mapped[int] = mapped_column(Integer)
    created: Mapped[float] = mapped_column(Float)


class RawJSON(dict):
    """A decoded message that remembers the JSON text it came from, so storing it does not
    serialize it again (the device's validated payload is stored as received)."""

    __slots__ = ("text",)

    def __init__(self, obj: dict, text: str) -> None:
        super().__init__(obj)
        self.text = text


def _json_serializer(obj: Any) -> str:
    return obj.text if isinstance(obj, RawJSON) else json.dumps(obj)


def open_db(url: str) -> Engine:
    """An engine on ``url`` whose schema is this edgekit's: created when fresh, upgraded in place when
    older, :class:`~edgekit.core.errors.DatabaseSchemaError` when newer (ADR 0011)."""
    from . import migrations

    engine = make_engine(url)
    migrations.upgrade(engine)
    return engine


def open_existing_db(url: str) -> Engine:
    """:func:`open_db` for commands that only read or change an existing registry: a SQLite URL whose
    file does not exist is refused instead of creating an empty database (a mistyped ``--db``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).exists():
        raise ConfigError(f"no registry database at {parsed.database}",
                          hint="Check --db (a SQLAlchemy URL such as sqlite:///registry.db, relative to the current "
                               "directory); `edgekit registry serve` creates the database on first start.")
    return open_db(url)


def make_engine(url: str) -> Engine:
    """The engine alone (SQLite: WAL, synchronous=NORMAL, writers wait for each other); no schema work."""
    engine = create_engine(url, future=True, json_serializer=_json_serializer)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")  # concurrent writers (CLI, workers) wait, not fail
            cur.close()
    return engine


def serialize_writers(bind: Session | Any, key: int) -> None:
    """Make the current transaction the database's only writer until it ends, so a check and the
    write that depends on it cannot interleave with another process doing the same: ``BEGIN
    IMMEDIATE`` on SQLite (call it before anything is written in the transaction), an advisory
    transaction lock on ``key`` on PostgreSQL. ``bind`` is a Session or a Connection."""
    conn = bind.connection() if isinstance(bind, Session) else bind
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({int(key)})")


def store_batch(engine: Engine, batch: Iterable[tuple[str, str, str, dict]]) -> int:
    """Write ``(kind, fleet, device, message)`` tuples in one transaction; return the count.

    One query loads the batch's devices; telemetry and event rows go in as one multi-row insert
    each; a device row takes the *last* telemetry of the batch (in arrival order), so the ORM
    touches each device once per batch, not once per message.
    """
    batch = list(batch)
    telemetry, events, last_tel = [], [], {}
    with Session(engine, autoflush=False) as s, s.begin():
        ids = {device for _, _, device, _ in batch}
        devices = {d.id: d for d in s.scalars(select(Device).where(Device.id.in_(ids)))}
        seen: dict[str, float] = {}
        for kind, fleet, device, msg in batch:
            dev = devices.get(device)
            if dev is None:
                dev = devices[device] = Device(id=device, fleet=fleet, online=False, session=0, last_seen=0.0)
                s.add(dev)
            ts = float(msg.get("ts", time.time()))
            if kind == "status":
                _apply_telemetry(dev, last_tel.pop(device, None))  # keep arrival order around statuses
                # a stale birth/death (older session) must not override a newer one
                if msg["session"] >= dev.session:
                    dev.online, dev.session = msg["online"], msg["session"]
                    dev.profile = msg.get("profile", dev.profile)
                    dev.agent_version = msg.get("agent_version", dev.agent_version)
                    dev.last_status_reason = msg.get("reason")
                    if msg["online"]:
                        dev.model, dev.version = msg.get("model"), msg.get("version")
            elif kind == "telemetry":
                telemetry.append({"device": device, "seq": msg["seq"], "ts": ts, "payload": msg})
                last_tel[device] = msg
            elif kind == "events":
                err = msg.get("error") or {}
                events.append({"device": device, "ts": ts, "seq": msg["seq"], "state": msg["state"], "ok": msg["ok"],
                               "deployment_id": msg.get("deployment_id"), "error_code": err.get("code"),
                               "payload": msg})
            seen[device] = max(seen.get(device, 0.0), ts)
        for device, msg in last_tel.items():
            _apply_telemetry(devices[device], msg)
        for device, ts in seen.items():
            dev = devices[device]
            dev.last_seen = max(dev.last_seen or 0.0, ts)
        s.flush()
        if telemetry:
            _insert_many(s, TelemetryRow, telemetry)
        if events:
            _insert_many(s, EventRow, events)
    return len(batch)


def _insert_once(s: Session, model):
    """INSERT that skips rows already stored (same device, seq, ts): redeliveries are idempotent."""
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:  # other databases: the unique constraint still refuses duplicates (the batch is split)
        return insert(model.__table__)
    return dialect_insert(model.__table__).on_conflict_do_nothing()


_COMPILED: dict[tuple, tuple[str, tuple | None]] = {}


def _insert_many(s: Session, model, rows: list[dict]) -> None:
    """:func:`_insert_once` for many rows as one driver-level ``executemany``.

    Ingest writes thousands of rows a second; SQLAlchemy's per-row parameter processing cost
    about as much CPU as the database itself. The statement is compiled once per dialect, and
    ``payload`` is bound as the JSON text the device sent (``RawJSON.text``), not serialized again.
    """
    conn = s.connection()
    cols = tuple(rows[0])
    key = (conn.dialect.name, model.__tablename__, cols)
    if key not in _COMPILED:
        compiled = _insert_once(s, model).compile(dialect=conn.dialect, column_keys=list(cols))
        _COMPILED[key] = (str(compiled), tuple(compiled.positiontup) if compiled.positional else None)
    sql, order = _COMPILED[key]
    rows = [{**r, "payload": _json_serializer(r["payload"])} for r in rows]
    conn.exec_driver_sql(sql, [tuple(r[k] for k in order) for r in rows] if order else rows)


def _apply_telemetry(dev: Device, msg: dict | None) -> None:
    if msg is not None:
        dev.health, dev.inference = msg["health"], msg["inference"]
        if msg.get("model"):
            dev.model, dev.version = msg["model"], msg.get("version")


def device_dict(d: Device) -> dict[str, Any]:
    return {"id": d.id, "fleet": d.fleet, "profile": d.profile, "online": d.online, "session": d.session,
            "model": d.model, "version": d.version, "agent_version": d.agent_version, "last_seen": d.last_seen,
            "status_reason": d.last_status_reason, "health": d.health, "inference": d.inference}


def list_devices(engine: Engine, fleet: str | None = None) -> list[dict]:
    with Session(engine) as s:
        q = select(Device).order_by(Device.id)
        if fleet:
            q = q.where(Device.fleet == fleet)
        return [device_dict(d) for d in s.scalars(q)]


def get_device(engine: Engine, device: str) -> dict | None:
    with Session(engine) as s:
        d = s.get(Device, device)
        return device_dict(d) if d else None


def list_events(engine: Engine, device: str | None = None, deployment_id: str | None = None,
                limit: int = 200) -> list[dict]:
    with Session(engine) as s:
        q = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if device:
            q = q.where(EventRow.device == device)
        if deployment_id:
            q = q.where(EventRow.deployment_id == deployment_id)
        return [r.payload for r in reversed(list(s.scalars(q)))]


def count_rows(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                for t in (Device, EventRow, TelemetryRow, Artifact)}


def add_artifact(engine: Engine, sha256: str, name: str, size: int) -> None:
    with Session(engine) as s, s.begin():
        if s.get(Artifact, sha256) is None:
            s.add(Artifact(sha256=sha256, name=name, size=size, created=time.time()))


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, default=str).encode()
