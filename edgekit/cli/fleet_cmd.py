"""``edgekit push``, ``edgekit infer``, ``edgekit fleet ls`` and ``edgekit registry serve``."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import click

from . import trust_cmd
from .common import (broker_option, emit_json, fleet_option, identity_option, json_option, keys_option,
                     registry_option, run_guarded, table, tls_files)


def _connect(broker: str, prefix: str, identity: str | None = None):
    from edgekit.core.mqtt import MqttConnection
    from edgekit.deploy import parse_broker

    host, port = parse_broker(broker)
    conn = MqttConnection(f"{prefix}-{uuid.uuid4().hex[:8]}", host, port, tls=tls_files(identity))
    conn.connect()
    return conn


@click.command("push")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device", "-d", "devices", multiple=True, required=True, help="Target device id (repeatable).")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for each device's final answer.")
@click.option("--ttl", default=3600.0, show_default=True, help="Seconds the signed notice stays valid.")
@click.option("--transport", type=click.Choice(["http", "mqtt"]), default="http", show_default=True,
              help="How devices fetch the bundle: HTTP from the registry, or in chunks over the broker "
                   "(for devices that reach only the broker).")
@fleet_option
@broker_option
@registry_option
@keys_option
@identity_option
@json_option
def push(bundle: Path, devices: tuple[str, ...], timeout: float, ttl: float, transport: str, fleet: str, broker: str,
         registry: str, keys_dir: str, identity: str | None, as_json: bool) -> None:
    """Upload BUNDLE to the registry, send a signed deployment notice to each --device over MQTT,
    and wait until every device has committed or refused it. Exit 0 only if all committed.

    \b
    Each notice is signed with the key store's notices key, names its device, expires after
    --ttl and is single-use. Example (mTLS broker):
      edgekit push bundles/digits-1.0.0-raspberry-pi-4.bundle -d pi-01 \\
          --keys keys --identity pki/services/edgekit-host --broker 127.0.0.1:8883
    Devices behind a broker-only link (the registry serves the chunks over MQTT):
      edgekit push bundles/digits-1.0.0-raspberry-pi-4.bundle -d pi-01 --transport mqtt
    """
    def body():
        from edgekit.deploy import DeviceWatcher, check_outcome, make_notice, push as send, read_manifest, upload
        from edgekit.keys import load_keystore

        manifest = read_manifest(bundle)
        signer = load_keystore(keys_dir).notice_signer()
        stored = upload(bundle, registry)
        conn = _connect(broker, "edgekit-push", identity)
        try:
            watcher = DeviceWatcher(conn, fleet, list(devices))
            pending = {}
            for d in devices:
                notice = make_notice(manifest, stored, ttl, device=d, fleet=fleet, signer=signer,
                                     transport=None if transport == "http" else transport)
                send(conn, fleet, d, notice)
                pending[d] = notice["deployment_id"]
            show = (lambda d, e: None) if as_json else \
                (lambda d, e: click.echo(f"  {d}: {e['state']}" + ("" if e["ok"] else f" — {e['error']['message']}"
                                                                   if e.get("error") else "")))
            results = watcher.wait_terminal(pending, timeout, show)
        finally:
            conn.close()
        if as_json:
            emit_json({d: {"deployment_id": pending[d], "state": e["state"], "error": e.get("error")}
                       for d, e in results.items()})
        for d, ev in results.items():
            check_outcome(d, ev)
    run_guarded(body, as_json)


@click.command("infer")
@click.option("--device", "-d", required=True)
@click.option("--input", "input_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=".npz with arrays named after the model inputs (first row is sent), or 'input'.")
@click.option("--row", default=0, show_default=True, help="Which sample of the file to send.")
@click.option("--timeout", default=10.0, show_default=True)
@fleet_option
@broker_option
@identity_option
@json_option
def infer(device: str, input_file: Path, row: int, timeout: float, fleet: str, broker: str, identity: str | None,
          as_json: bool) -> None:
    """Run one inference on DEVICE over MQTT (request/response) and print the outputs."""
    def body():
        import numpy as np

        from edgekit.deploy import infer_remote

        with np.load(input_file, allow_pickle=False) as data:
            inputs = {k: data[k][row:row + 1] for k in data.files if k != "label"}
        conn = _connect(broker, "edgekit-infer", identity)
        try:
            t0 = time.perf_counter()
            outputs, resp = infer_remote(conn, fleet, device, inputs, timeout)
            rtt = (time.perf_counter() - t0) * 1000
        finally:
            conn.close()
        info = {"device": device, "model": resp.get("model"), "version": resp.get("version"),
                "device_latency_ms": resp.get("latency_ms"), "round_trip_ms": round(rtt, 3),
                "outputs": {k: v.tolist() for k, v in outputs.items()}}
        emit_json(info) if as_json else click.echo("\n".join(f"{k}: {v}" for k, v in info.items()))
    run_guarded(body, as_json)


@click.group("fleet")
def fleet() -> None:
    """Devices known to the registry."""


@fleet.command("ls")
@click.option("--fleet", "fleet_id", default=None, help="Only this fleet.")
@click.option("--to", "selector", default="all", show_default=True,
              help="Device selector, e.g. 'profile=raspberry-pi-4,tag=kitchen' or group:canary.")
@click.option("--pki", "pki_dir", envvar="EDGEKIT_PKI", default=None, type=click.Path(file_okay=False),
              help="Fleet PKI directory: adds certificate expiry and warns before certificates expire.")
@registry_option
@json_option
def fleet_ls(fleet_id: str | None, selector: str, pki_dir: str | None, registry: str, as_json: bool) -> None:
    """List devices: online state, profile, model version, agent, last seen, latency, tags, groups
    (and certificate expiry with --pki).

    \b
    Examples:
      edgekit fleet ls
      edgekit fleet ls --to 'profile=raspberry-pi-4,tag=kitchen' --json
      edgekit fleet ls --pki pki          # CERT_DAYS column + a warning before certificates expire
    """
    def body():
        from .inventory_cmd import COLUMNS, device_rows
        from edgekit.registry_client import api

        if fleet_id:
            selector_ = f"fleet={fleet_id}" + ("" if selector in ("all", "*") else f",{selector}")
        else:
            selector_ = selector
        devices = api(registry, "GET", "/api/v1/fleet", params={"selector": selector_})["devices"]
        if pki_dir:
            from edgekit.pki import load_pki

            certs = {c["device"]: c for c in load_pki(pki_dir).devices()}
            for d in devices:
                c = certs.get(d["id"], {})
                d["cert"] = {k: c.get(k) for k in ("state", "not_after", "days_left", "warning")} if c else None
        if as_json:
            return emit_json(devices)
        rows, cols = device_rows(devices), list(COLUMNS)
        if pki_dir:
            for row in rows:
                c = row.get("cert") or {}
                row["cert_days"] = c.get("days_left") if c.get("state") != "revoked" else "revoked"
            cols.append("cert_days")
        click.echo(table(rows, cols))
        for row in rows:
            if (row.get("cert") or {}).get("warning"):
                click.secho(f"warning: {row['id']}: {row['cert']['warning']}", fg="yellow", err=True)
    run_guarded(body, as_json)


@click.group("registry")
def registry_group() -> None:
    """The fleet registry service."""


@registry_group.command("serve")
@click.option("--db", "db_url", default="sqlite:///registry.db", show_default=True, help="SQLAlchemy database URL.")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts"),
              show_default=True, help="Directory of the artifact store.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--shared-group", default=None, help="MQTT 5 shared-subscription group, so several workers split "
              "telemetry and events.")
@click.option("--client-id", default="edgekit-registry", show_default=True,
              help="MQTT client id (its persistent session keeps messages while the registry is down).")
@click.option("--no-rollouts", is_flag=True, help="Ingest-only worker: do not drive rollouts (run one driver).")
@broker_option
@identity_option
@click.option("--keys", "keys_dir", envvar="EDGEKIT_KEYS", default=None, type=click.Path(file_okay=False),
              help="Key store whose online notices key signs rollout notices (agents refuse unsigned notices).")
@click.option("--private-reads", is_flag=True, help="Inventory, model and rollout reads need a viewer token too "
              "(writes always need an operator token; health, OpenAPI and bundle downloads stay open).")
@click.option("--receiver", type=click.Choice(["process", "thread"]), default="process", show_default=True,
              help="Where the MQTT session runs: a child process (receiving and storing use two cores) or a "
                   "thread of this process.")
@trust_cmd.serve_options
def serve(db_url: str, store: Path, host: str, port: int, shared_group: str | None, client_id: str,
          no_rollouts: bool, broker: str, identity: str | None, keys_dir: str | None, private_reads: bool,
          receiver: str, trust: bool, trust_timestamp: str, trust_snapshot: str) -> None:
    """Ingest device reports from MQTT into the database, serve the HTTP API + bundles, drive rollouts.

    Writes (uploads, stages, tags, groups, rollouts) need an operator bearer token: create one with
    `edgekit registry token create --db URL --role operator` and export it as EDGEKIT_REGISTRY_TOKEN.

    \b
    Examples:
      edgekit registry serve --db sqlite:///registry.db --broker 127.0.0.1:1883 --keys keys
      edgekit registry serve --broker mqtt.example:8883 --identity pki/services/edgekit-registry --keys keys
      edgekit registry serve --keys keys --trust --trust-timestamp 1d   # host TUF metadata (ADR 0010)
      edgekit registry serve --db postgresql+psycopg://edgekit@db/edgekit --shared-group ingest
      edgekit registry serve --db postgresql+psycopg://edgekit@db/edgekit --shared-group ingest \\
          --client-id registry-2 --port 8081 --no-rollouts
    """
    def body():
        import json

        from edgekit.deploy import parse_broker
        from edgekit.registry.service import Registry

        bhost, bport = parse_broker(broker)
        signer = None
        if keys_dir and not no_rollouts:
            from edgekit.keys import load_keystore

            signer = load_keystore(keys_dir).notice_signer()
        elif not no_rollouts:
            click.echo("warning: no --keys: rollout notices will be unsigned and agents will refuse them",
                       err=True)
        reg = Registry(db_url, store, bhost, bport, host, port, tls=tls_files(identity), shared_group=shared_group,
                       client_id=client_id, rollouts=not no_rollouts, notice_signer=signer,
                       private_reads=private_reads, receiver=receiver,
                       **trust_cmd.serve_kwargs(trust and not no_rollouts, keys_dir, trust_timestamp, trust_snapshot))
        from edgekit.registry import tokens

        if not any(not t["revoked"] for t in tokens.list_tokens(reg.engine)):
            click.echo("warning: no API token yet, so every write will be refused (401): create one with "
                       "`edgekit registry token create --db URL --role operator`", err=True)
        reg.serve_forever(
            lambda url: click.echo(json.dumps({"registry": "ready", "url": url}), nl=True))
    run_guarded(body)


@registry_group.group("token")
def token_group() -> None:
    """API bearer tokens (operator: may change things; viewer: may only read). Needs the registry's --db."""


_db_option = click.option("--db", "db_url", default="sqlite:///registry.db", show_default=True,
                          help="The registry's SQLAlchemy database URL (the same as `registry serve --db`).")


@token_group.command("create")
@_db_option
@click.option("--role", type=click.Choice(["operator", "viewer"]), default="operator", show_default=True)
@click.option("--name", default="cli", show_default=True, help="Who or what holds the token (shown by `token ls`).")
@json_option
def token_create(db_url: str, role: str, name: str, as_json: bool) -> None:
    """Create a token and print it once (only its hash is stored).

    \b
    Examples:
      export EDGEKIT_REGISTRY_TOKEN=$(edgekit registry token create --db sqlite:///registry.db --role operator)
      edgekit registry token create --db postgresql+psycopg://edgekit@db/edgekit --role viewer --name grafana --json
    """
    def body():
        from edgekit.registry import db, tokens

        out = tokens.create(db.open_db(db_url), role, name)
        emit_json(out) if as_json else click.echo(out["token"])
    run_guarded(body, as_json)


@token_group.command("ls")
@_db_option
@json_option
def token_ls(db_url: str, as_json: bool) -> None:
    """List tokens (never their secrets).

    \b
    Example:
      edgekit registry token ls --db sqlite:///registry.db
    """
    def body():
        import time

        from edgekit.registry import db, tokens

        rows = tokens.list_tokens(db.open_existing_db(db_url))
        if as_json:
            return emit_json({"tokens": rows})
        fmt = lambda t: time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "-"  # noqa: E731
        click.echo(table([{**r, "created": fmt(r["created"]), "last_used": fmt(r["last_used"]),
                           "revoked": fmt(r["revoked"])} for r in rows],
                         ["id", "name", "role", "created", "last_used", "revoked"]))
    run_guarded(body, as_json)


@token_group.command("revoke")
@_db_option
@click.argument("token_id")
@json_option
def token_revoke(db_url: str, token_id: str, as_json: bool) -> None:
    """Revoke token TOKEN_ID (the 8 hex after `ekt_`); the registry refuses it from the next request on.

    \b
    Example:
      edgekit registry token revoke --db sqlite:///registry.db 3f9a0c1e
    """
    def body():
        from edgekit.registry import db, tokens

        out = tokens.revoke(db.open_existing_db(db_url), token_id)
        emit_json(out) if as_json else click.echo(f"revoked token {out['id']} ({out['name']}, {out['role']})")
    run_guarded(body, as_json)


@registry_group.command("migrate")
@_db_option
@json_option
def registry_migrate(db_url: str, as_json: bool) -> None:
    """Upgrade the registry database in place to this edgekit's schema version, keeping its data.

    `registry serve` does the same on start (once, under the database's write lock, so workers starting
    together are safe); run this to upgrade ahead of a rollout of new registry workers, or to check a
    database. A database written by a *newer* edgekit is refused (exit 3) and left untouched.

    \b
    Examples:
      edgekit registry migrate --db sqlite:///registry.db
      edgekit registry migrate --db postgresql+psycopg://edgekit@db/edgekit --json
    """
    def body():
        from edgekit.registry import db, migrations

        engine = db.make_engine(db_url)
        try:
            out = migrations.upgrade(engine)
        finally:
            engine.dispose()
        if as_json:
            return emit_json(out)
        if out["from"] is None:
            click.echo(f"created a new registry database at schema version {out['to']}")
        elif out["applied"]:
            click.echo(f"upgraded the registry database from schema version {out['from']} to {out['to']} "
                       f"(steps {', '.join(map(str, out['applied']))})")
        else:
            click.echo(f"the registry database is at schema version {out['to']}: nothing to do")
    run_guarded(body, as_json)


def register(cli: click.Group) -> None:
    from . import inventory_cmd, rollout_cmd

    inventory_cmd.attach(fleet)
    trust_cmd.attach(registry_group)
    rollout_cmd.register(cli)
    for cmd in (push, infer, fleet, registry_group):
        cli.add_command(cmd)
