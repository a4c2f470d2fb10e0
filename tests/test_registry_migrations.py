"""Registry schema migrations on real databases (SQLite and a private PostgreSQL): a database an
older edgekit wrote is upgraded in place when the registry starts, keeps its data and gains the new
columns; concurrent starts migrate once; a database newer than the code is refused, untouched."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

import registry_old_schemas
from edgekit.cli.main import cli
from edgekit.fleetsim import FleetSim
from edgekit.registry import db, migrations
from edgekit.registry.service import Registry

pytestmark = pytest.mark.integration


def columns(engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def telemetry_rows(engine) -> list[tuple[str, int]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text("SELECT device, seq FROM telemetry ORDER BY id"))]


@pytest.mark.parametrize("old", [1, 2])
def test_old_database_is_upgraded_in_place_when_the_registry_starts(db_url, tmp_path, broker, old):
    held = registry_old_schemas.create(db_url, old)
    assert migrations.current_version(db.make_engine(db_url)) == old
    reg = Registry(db_url, tmp_path / "a", "127.0.0.1", broker.port, rollouts=False).start()
    try:
        eng = reg.engine
        assert migrations.current_version(eng) == migrations.LATEST
        assert "seq" in columns(eng, "telemetry") and "superseded_by" in columns(eng, "rollout_targets")
        assert "rollback_of" in columns(eng, "rollouts") and "api_tokens" in inspect(eng).get_table_names()
        # the data is kept: old telemetry got its seq from the stored payload, the duplicate is gone
        assert telemetry_rows(eng) == held["telemetry"]
        devices = requests.get(reg.url + "/api/v1/devices", timeout=10).json()["devices"]
        assert [(d["id"], d["version"]) for d in devices] == [("sim-0000", "1.0.0"), ("sim-0001", "1.0.0")]
        events = requests.get(reg.url + "/api/v1/events", params={"device": "sim-0000"}, timeout=10).json()["events"]
        assert [e["state"] for e in events] == ["downloading", "committed"]
        rollout = requests.get(reg.url + f"/api/v1/rollouts/{held['rollout']}", timeout=10).json()
        assert rollout["state"] == "succeeded" and rollout["counts"] == {"succeeded": 1}
        # stored messages are unique now: a redelivered one is not stored twice
        obj = registry_old_schemas._telemetry("sim-0001", 7, time.time())
        msg = db.RawJSON(obj, json.dumps(obj))
        db.store_batch(eng, [("telemetry", "default", "sim-0001", msg)] * 2)
        db.store_batch(eng, [("telemetry", "default", "sim-0001", msg)])
        assert telemetry_rows(eng).count(("sim-0001", 7)) == 1
        # and the upgraded registry ingests live devices
        sim = FleetSim("127.0.0.1", broker.port, 3, telemetry_s=None).start()
        try:
            sent = sim.flood_telemetry(5)
            deadline = time.monotonic() + 20
            while reg.ingest.kinds.get("telemetry", 0) < sent:
                assert time.monotonic() < deadline, reg.ingest.kinds
                time.sleep(0.05)
        finally:
            sim.stop()
        assert len(telemetry_rows(eng)) == len(held["telemetry"]) + 1 + sent
    finally:
        reg.stop()
    again = db.open_db(db_url)  # reopening a current database changes nothing
    assert migrations.upgrade(again) == {"from": migrations.LATEST, "to": migrations.LATEST, "applied": []}
    again.dispose()


def test_workers_starting_together_migrate_once(db_url):
    registry_old_schemas.create(db_url, 1)
    results, errors = [], []

    def open_one():
        try:
            eng = db.make_engine(db_url)
            results.append(migrations.upgrade(eng))
            eng.dispose()
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(r["applied"] for r in results) == [[], [], [2, 3]]
    assert telemetry_rows(db.make_engine(db_url)) == [("sim-0000", 1), ("sim-0000", 2), ("sim-0001", 1)]


def test_database_newer_than_the_code_is_refused_and_left_untouched(db_url, tmp_path, broker):
    db.open_db(db_url).dispose()
    eng = create_engine(db_url)
    with eng.begin() as c:
        c.execute(text("UPDATE schema_version SET version = 99"))
    before = sorted(inspect(eng).get_table_names())
    runner = CliRunner()
    res = runner.invoke(cli, ["registry", "migrate", "--db", db_url])
    assert res.exit_code == 3, res.output
    assert "schema version 99, newer than this edgekit knows (3)" in res.output and "hint:" in res.output
    res = runner.invoke(cli, ["registry", "serve", "--db", db_url, "--store", str(tmp_path / "a"), "--port", "0",
                              "--broker", f"127.0.0.1:{broker.port}", "--no-rollouts"])
    assert res.exit_code == 3 and "newer than this edgekit" in res.output, res.output
    res = runner.invoke(cli, ["registry", "migrate", "--db", db_url, "--json"])
    assert res.exit_code == 3 and '"code": "db_schema"' in res.output
    with eng.connect() as c:
        assert c.execute(text("SELECT version FROM schema_version")).scalar() == 99
    assert sorted(inspect(eng).get_table_names()) == before
    eng.dispose()


def test_migrate_command_reports_what_it_did(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    registry_old_schemas.create(url, 1)
    runner = CliRunner()
    res = runner.invoke(cli, ["registry", "migrate", "--db", url])
    assert res.exit_code == 0 and "from schema version 1 to 3 (steps 2, 3)" in res.output, res.output
    res = runner.invoke(cli, ["registry", "migrate", "--db", url, "--json"])
    assert res.exit_code == 0 and '"applied": []' in res.output
    fresh = f"sqlite:///{tmp_path}/new.db"
    res = runner.invoke(cli, ["registry", "migrate", "--db", fresh])
    assert res.exit_code == 0 and "created a new registry database at schema version 3" in res.output


def test_a_failing_step_rolls_back_and_names_the_step(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/r.db"
    registry_old_schemas.create(url, 2)

    def broken(conn):
        conn.exec_driver_sql("ALTER TABLE rollouts ADD COLUMN rollback_of VARCHAR(16)")
        conn.exec_driver_sql("ALTER TABLE no_such_table ADD COLUMN x INTEGER")

    monkeypatch.setitem(migrations.MIGRATIONS, 3, broken)
    with pytest.raises(migrations.DatabaseSchemaError, match="from schema version 2 to 3 failed"):
        db.open_db(url)
    eng = db.make_engine(url)
    assert "rollback_of" not in columns(eng, "rollouts")  # the first statement was rolled back too
    assert "schema_version" not in inspect(eng).get_table_names() and migrations.current_version(eng) == 2
