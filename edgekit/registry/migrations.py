"""Registry database schema versions: upgrade a database written by an older edgekit in place.

A one-row table ``schema_version`` records the version of the schema a database has. On every
open (:func:`edgekit.registry.db.open_db`) :func:`upgrade`, inside one transaction that holds
the database's write lock (``BEGIN IMMEDIATE`` on SQLite, an advisory transaction lock on
PostgreSQL, so two workers starting together migrate once):

1. reads the version (a database from before this table is recognised by its columns);
2. refuses a database *newer* than this code (:class:`~edgekit.core.errors.DatabaseSchemaError`);
3. runs the ordered steps ``MIGRATIONS[n]`` for every version after it, in order;
4. creates tables that are new since (``create_all`` only adds missing tables), and stamps
   ``LATEST``. A fresh database gets every table and ``LATEST`` directly.

Steps use plain DDL (``ALTER TABLE … ADD COLUMN``, ``CREATE UNIQUE INDEX``) valid on SQLite and
PostgreSQL, and never drop data. Why not Alembic: ADR 0011. Does not create the tables' models
(``db``, ``catalog``, ``rollout_store``, ...), only moves older databases to them.

To change the schema: add the column to the model, append a step ``N + 1`` below, bump ``LATEST``.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Float, Integer, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapped, mapped_column

from edgekit.core.errors import DatabaseSchemaError

from .db import Base, serialize_writers

log = logging.getLogger("edgekit.registry.migrations")
LATEST = 3
_LOCK_KEY = 0x6564676B  # "edgk": PostgreSQL advisory lock id for schema changes


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated: Mapped[float] = mapped_column(Float)


def _v2_message_ids(conn: Connection) -> None:
    """Ack-after-commit ingest (ADR 0005 §10): ``telemetry.seq`` (back-filled from each stored
    payload) and rows unique per (device, seq, ts), which idempotent inserts rely on."""
    pg = conn.dialect.name == "postgresql"
    conn.exec_driver_sql("ALTER TABLE telemetry ADD COLUMN seq INTEGER DEFAULT 0")
    conn.exec_driver_sql("UPDATE telemetry SET seq = COALESCE(" + (
        "CAST(payload::json ->> 'seq' AS INTEGER)" if pg else "CAST(json_extract(payload, '$.seq') AS INTEGER)")
        + ", 0)")
    for table in ("telemetry", "events"):  # duplicates stored before the constraint: keep the first
        conn.exec_driver_sql(f"DELETE FROM {table} WHERE id NOT IN "
                             f"(SELECT MIN(id) FROM {table} GROUP BY device, seq, ts)")
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX uq_{table}_message ON {table} (device, seq, ts)")


def _v3_rollout_links(conn: Connection) -> None:
    """Overlapping rollouts and rollback to an earlier release (ADR 0011): a target remembers the
    rollout that superseded it; a rollout remembers the one it rolls back."""
    conn.exec_driver_sql("ALTER TABLE rollout_targets ADD COLUMN superseded_by VARCHAR(16)")
    conn.exec_driver_sql("ALTER TABLE rollouts ADD COLUMN rollback_of VARCHAR(16)")


MIGRATIONS = {2: _v2_message_ids, 3: _v3_rollout_links}  # version N ← N - 1


def _detect(conn: Connection) -> int | None:
    """The schema version of this database; None if it is empty (a fresh database)."""
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    if "schema_version" in tables:
        version = conn.exec_driver_sql("SELECT MAX(version) FROM schema_version").scalar()
        if version is not None:
            return int(version)
    if "devices" not in tables:
        return None
    # written before versions were recorded: v1 had no telemetry.seq (ADR 0005 §10 added it)
    return 2 if "seq" in {c["name"] for c in insp.get_columns("telemetry")} else 1


def current_version(engine: Engine) -> int | None:
    with engine.connect() as conn:
        return _detect(conn)


def upgrade(engine: Engine) -> dict:
    """Bring the database to ``LATEST``; return ``{"from": v or None (fresh), "to": LATEST, "applied": [...]}``."""
    from . import catalog, inventory, rollout_store, tokens, trust_repo  # noqa: F401  (their tables join Base.metadata)

    with engine.connect() as conn:
        serialize_writers(conn, _LOCK_KEY)  # one migrator at a time; DDL inside it is transactional
        found = _detect(conn)
        if found is not None and found > LATEST:
            conn.rollback()
            raise DatabaseSchemaError(
                f"the registry database has schema version {found}, newer than this edgekit knows ({LATEST})",
                hint="It was upgraded by a newer edgekit: run that version (or newer) against it, or point --db "
                     "at another database. Do not edit schema_version by hand.", found=found, supported=LATEST)
        applied = []
        for n in range(found + 1 if found is not None else LATEST + 1, LATEST + 1):
            log.warning("upgrading the registry database schema to version %d (%s)", n, MIGRATIONS[n].__name__)
            try:
                MIGRATIONS[n](conn)
            except sa_exc.SQLAlchemyError as exc:  # the transaction rolls back: the database is as it was
                raise DatabaseSchemaError(
                    f"upgrading the registry database from schema version {n - 1} to {n} failed: {exc.orig or exc}",
                    hint="Nothing was changed (the upgrade runs in one transaction). Back the database up and "
                         "report this with the message above.", found=found, step=n) from None
            applied.append(n)
        Base.metadata.create_all(conn)  # every table of a fresh database; tables added since, otherwise
        if found != LATEST:
            conn.exec_driver_sql("DELETE FROM schema_version")
            conn.execute(SchemaVersion.__table__.insert().values(id=1, version=LATEST, updated=time.time()))
        conn.commit()
    return {"from": found, "to": LATEST, "applied": applied}
