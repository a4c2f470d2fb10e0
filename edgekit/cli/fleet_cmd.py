"""``edgekit push``, ``edgekit infer``, ``edgekit fleet ls`` and ``edgekit registry serve``."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import click

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
@fleet_option
@broker_option
@registry_option
@keys_option
@identity_option
@json_option
def push(bundle: Path, devices: tuple[str, ...], timeout: float, ttl: float, fleet: str, broker: str, registry: str,
         keys_dir: str, identity: str | None, as_json: bool) -> None:
    """Upload BUNDLE to the registry, send a signed deployment notice to each --device over MQTT,
    and wait until every device has committed or refused it. Exit 0 only if all committed.

    \b
    Each notice is signed with the key store's notices key, names its device, expires after
    --ttl and is single-use. Example (mTLS broker):
      edgekit push bundles/digits-1.0.0-raspberry-pi-4.bundle -d pi-01 \\
          --keys keys --identity pki/services/edgekit-host --broker 127.0.0.1:8883
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
                notice = make_notice(manifest, stored, ttl, device=d, fleet=fleet, signer=signer)
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
        from .registry_client import api

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
@click.option("--receiver", type=click.Choice(["process", "thread"]), default="process", show_default=True,
              help="Where the MQTT session runs: a child process (receiving and storing use two cores) or a "
                   "thread of this process.")
def serve(db_url: str, store: Path, host: str, port: int, shared_group: str | None, client_id: str,
          no_rollouts: bool, broker: str, identity: str | None, keys_dir: str | None, receiver: str) -> None:
    """Ingest device reports from MQTT into the database, serve the HTTP API + bundles, drive rollouts.

    \b
    Examples:
      edgekit registry serve --db sqlite:///registry.db --broker 127.0.0.1:1883 --keys keys
      edgekit registry serve --broker mqtt.example:8883 --identity pki/services/edgekit-registry --keys keys
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
        Registry(db_url, store, bhost, bport, host, port, tls=tls_files(identity), shared_group=shared_group,
                 client_id=client_id, rollouts=not no_rollouts, notice_signer=signer,
                 receiver=receiver).serve_forever(
            lambda url: click.echo(json.dumps({"registry": "ready", "url": url}), nl=True))
    run_guarded(body)


def register(cli: click.Group) -> None:
    from . import inventory_cmd, rollout_cmd

    inventory_cmd.attach(fleet)
    rollout_cmd.register(cli)
    for cmd in (push, infer, fleet, registry_group):
        cli.add_command(cmd)
