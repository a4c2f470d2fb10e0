"""Frozen copies of the registry schemas older edgekit versions wrote, with a little data, so the
migration tests open real old databases (SQLite and PostgreSQL) instead of the current schema.

Schema 1: before ack-after-commit ingest (commit e2bc06b): ``telemetry`` had no ``seq`` and
neither ``telemetry`` nor ``events`` was unique per (device, seq, ts). Schema 2: as of commit
9559eaf (no ``schema_version`` table yet, no ``rollout_targets.superseded_by`` /
``rollouts.rollback_of``). Never import the registry's models here: these must not change.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import (JSON, Boolean, Column, Float, ForeignKey, Integer, MetaData, String, Table, UniqueConstraint,
                        create_engine)


def _tables(version: int) -> MetaData:
    md = MetaData()
    Table("devices", md, Column("id", String(64), primary_key=True), Column("fleet", String(64), index=True),
          Column("profile", String(64)), Column("agent_version", String(32)), Column("online", Boolean),
          Column("session", Integer), Column("model", String(128)), Column("version", String(64)),
          Column("last_seen", Float), Column("last_status_reason", String(128)), Column("health", JSON),
          Column("inference", JSON))
    msg = (UniqueConstraint("device", "seq", "ts", name="uq_events_message"),) if version >= 2 else ()
    Table("events", md, Column("id", Integer, primary_key=True, autoincrement=True),
          Column("device", String(64), index=True), Column("ts", Float), Column("seq", Integer),
          Column("state", String(32)), Column("ok", Boolean), Column("deployment_id", String(64), index=True),
          Column("error_code", String(64)), Column("payload", JSON), *msg)
    tel = [Column("seq", Integer), UniqueConstraint("device", "seq", "ts", name="uq_telemetry_message")] \
        if version >= 2 else []
    Table("telemetry", md, Column("id", Integer, primary_key=True, autoincrement=True),
          Column("device", String(64), index=True), Column("ts", Float, index=True), Column("payload", JSON), *tel)
    Table("artifacts", md, Column("sha256", String(64), primary_key=True), Column("name", String(256)),
          Column("size", Integer), Column("created", Float))
    Table("model_versions", md, Column("id", Integer, primary_key=True, autoincrement=True),
          Column("model", String(128), index=True), Column("version", String(64)), Column("stage", String(16)),
          Column("source_sha256", String(64)), Column("created", Float), UniqueConstraint("model", "version"))
    Table("model_artifacts", md, Column("id", Integer, primary_key=True, autoincrement=True),
          Column("version_id", ForeignKey("model_versions.id"), index=True), Column("profile", String(64)),
          Column("sha256", String(64)), Column("length", Integer), Column("release", Integer),
          Column("manifest", JSON), UniqueConstraint("version_id", "profile"))
    Table("device_tags", md, Column("device", String(64), primary_key=True), Column("tag", String(64), primary_key=True))
    Table("group_members", md, Column("group", String(64), primary_key=True),
          Column("device", String(64), primary_key=True))
    Table("rollouts", md, Column("id", String(16), primary_key=True), Column("model", String(128)),
          Column("version", String(64)), Column("selector", String(256)), Column("waves", JSON),
          Column("wave_sizes", JSON), Column("rules", JSON), Column("timeout_s", Float), Column("rate_per_min", Float),
          Column("state", String(16), index=True), Column("wave", Integer), Column("reason", String(512)),
          Column("created", Float), Column("updated", Float))
    Table("rollout_targets", md, Column("id", Integer, primary_key=True, autoincrement=True),
          Column("rollout_id", String(16), index=True), Column("device", String(64)), Column("fleet", String(64)),
          Column("profile", String(64)), Column("wave", Integer), Column("state", String(16), index=True),
          Column("deployment_id", String(64), index=True), Column("sent_at", Float), Column("finished_at", Float),
          Column("error_code", String(64)), Column("error", String(512)), Column("prev_model", String(128)),
          Column("prev_version", String(64)), Column("baseline_p95", Float), Column("rollback_state", String(16)),
          Column("rollback_deployment_id", String(64), index=True), Column("rollback_sent_at", Float))
    if version >= 2:
        Table("api_tokens", md, Column("id", String(8), primary_key=True), Column("name", String(128)),
              Column("role", String(16)), Column("secret_sha256", String(64)), Column("created", Float),
              Column("revoked", Float, nullable=True), Column("last_used", Float, nullable=True))
    return md


def _telemetry(device: str, seq: int, ts: float) -> dict:
    return {"schema": "edgekit.telemetry/1", "device": device, "ts": ts, "seq": seq, "health": {"cpu_percent": 1.0},
            "inference": {"count": seq, "p95_ms": 5.0}, "model": "digits-cnn", "version": "1.0.0"}


def create(url: str, version: int) -> dict:
    """Write a database of schema ``version`` (1 or 2) at ``url``; return what it holds."""
    engine = create_engine(url)
    md = _tables(version)
    md.create_all(engine)
    now = time.time() - 100
    t = md.tables
    tel = [("sim-0000", 1, now), ("sim-0000", 2, now + 1), ("sim-0001", 1, now + 2)]
    with engine.begin() as c:
        c.execute(t["devices"].insert(), [
            {"id": d, "fleet": "default", "profile": "raspberry-pi-4", "agent_version": "0.9", "online": True,
             "session": 1, "model": "digits-cnn", "version": "1.0.0", "last_seen": now, "health": {},
             "inference": {"p95_ms": 5.0}} for d in ("sim-0000", "sim-0001")])
        rows = [{"device": d, "ts": ts, "payload": _telemetry(d, s, ts), **({"seq": s} if version >= 2 else {})}
                for d, s, ts in tel]
        if version == 1:  # a duplicate an old, at-least-once ingest could store
            rows.append(dict(rows[1]))
        c.execute(t["telemetry"].insert(), rows)
        c.execute(t["events"].insert(), [
            {"device": "sim-0000", "ts": now + i, "seq": i, "state": s, "ok": True, "deployment_id": "dep-old",
             "payload": {"schema": "edgekit.event/1", "device": "sim-0000", "ts": now + i, "seq": i, "state": s,
                         "ok": True, "deployment_id": "dep-old"}} for i, s in enumerate(("downloading", "committed"), 1)])
        c.execute(t["model_versions"].insert(), [{"model": "digits-cnn", "version": "1.0.0",
                                                  "stage": "released", "source_sha256": "a" * 64, "created": now}])
        c.execute(t["rollouts"].insert(), [{
            "id": "old0rollout", "model": "digits-cnn", "version": "1.0.0", "selector": "all", "waves": [100.0],
            "wave_sizes": [1], "rules": [], "timeout_s": 300.0, "rate_per_min": None, "state": "succeeded", "wave": 0,
            "reason": None, "created": now, "updated": now}])
        c.execute(t["rollout_targets"].insert(), [{
            "rollout_id": "old0rollout", "device": "sim-0000", "fleet": "default", "profile": "raspberry-pi-4",
            "wave": 0, "state": "succeeded", "deployment_id": "dep-old", "sent_at": now, "finished_at": now + 2,
            "prev_model": None, "prev_version": None}])
    engine.dispose()
    return {"devices": 2, "telemetry": [(d, s) for d, s, _ in tel], "events": 2, "rollout": "old0rollout",
            "payload_example": json.dumps(_telemetry("sim-0000", 1, now))}
