"""``edgekit pki init`` and ``edgekit device enroll|revoke|ls``: the fleet CA and device identities."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit_json, json_option, keys_option, pki_option, run_guarded, table


@click.group("pki")
def pki() -> None:
    """The fleet's certificate authority (mutual TLS between devices, broker and services)."""


@pki.command("init")
@pki_option
@click.option("--fleet", default="default", show_default=True, help="Fleet id (becomes the certificates' O=).")
@click.option("--ca-days", default=3650, show_default=True, help="CA certificate lifetime.")
@click.option("--broker-name", "broker_names", multiple=True, metavar="HOST",
              help="Host name or IP devices use to reach the broker (repeatable; localhost is always included).")
@click.option("--force", is_flag=True, help="Replace an existing PKI (every device must be re-enrolled).")
@json_option
def init_cmd(pki_dir: str, fleet: str, ca_days: int, broker_names: tuple[str, ...], force: bool,
             as_json: bool) -> None:
    """Create the fleet CA, an empty CRL and TLS identities for the broker, the registry and the host CLI.

    \b
    Example:
      edgekit pki init --pki pki --fleet factory-7 --broker-name mqtt.factory-7.example
      edgekit registry serve --identity pki/services/edgekit-registry --broker 127.0.0.1:8883
      edgekit push B.bundle -d pi-01 --identity pki/services/edgekit-host --broker 127.0.0.1:8883
    """
    def body():
        from edgekit.pki import init_pki

        p = init_pki(pki_dir, fleet=fleet, ca_days=ca_days, force=force, broker_names=broker_names)
        info = {"pki": str(p.directory), "ca": str(p.ca_path), "crl": str(p.crl_path),
                "services": {n: str(p.directory / "services" / n) for n in p.index["services"]}}
        if as_json:
            return emit_json(info)
        click.echo(f"created fleet CA for fleet {fleet!r} in {p.directory}")
        click.echo(f"  keep {p.directory}/private/ca.key on the enrolling host only; back it up")
        for name, path in info["services"].items():
            click.echo(f"  identity {name:17} {path}")
    run_guarded(body, as_json)


@pki.command("broker-config")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for mosquitto.conf and acl (regenerate after enroll/revoke, then SIGHUP mosquitto).")
@click.option("--port", default=8883, show_default=True, help="TLS listener port.")
@pki_option
@json_option
def broker_config_cmd(out: Path, port: int, pki_dir: str, as_json: bool) -> None:
    """Write a mosquitto config for your own broker: MQTT 5 mTLS listener, CRL, per-device ACL.

    \b
    Example:
      edgekit pki broker-config --out /etc/mosquitto/edgekit --pki pki
      mosquitto -c /etc/mosquitto/edgekit/mosquitto.conf
    """
    def body():
        from edgekit.broker import ManagedBroker
        from edgekit.pki import load_pki

        broker = ManagedBroker(out, port=port, pki=load_pki(pki_dir))
        out.mkdir(parents=True, exist_ok=True)
        broker.write_acl()
        conf = out / "mosquitto.conf"
        text = broker.config_text().replace(f"listener {port} 127.0.0.1", f"listener {port}")
        conf.write_text(text.replace("user root\n", ""))  # a system mosquitto keeps its own user
        info = {"config": str(conf), "acl": str(out / "acl"), "devices": sorted(broker.pki.active_devices())}
        if as_json:
            return emit_json(info)
        click.echo(f"wrote {conf} and {out / 'acl'} ({len(info['devices'])} devices)")
    run_guarded(body, as_json)


@click.group("device")
def device() -> None:
    """Device identities: enroll (certificate + provisioning folder), revoke, list expiry."""


@device.command("enroll")
@click.argument("device_id")
@click.option("--profile", "-p", required=True, help="Hardware profile id of the device (e.g. raspberry-pi-4).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Provisioning folder to write [default: provision/DEVICE_ID].")
@click.option("--broker", default="127.0.0.1:8883", show_default=True, help="Broker HOST:PORT the agent uses.")
@click.option("--days", default=365, show_default=True, help="Certificate lifetime.")
@click.option("--force", is_flag=True, help="Re-enroll: a new certificate; the old one is revoked.")
@click.option("--freshness", type=click.Choice(["auto", "require", "off"]), default="auto", show_default=True,
              help="[install] freshness of the agent: require = every install from the registry (HTTP or broker) "
                   "must find the bundle in its hosted TUF metadata, fresh (for registries run with `serve --trust`); auto = once "
                   "the device has seen such metadata.")
@pki_option
@keys_option
@json_option
def enroll_cmd(device_id: str, profile: str, out: Path | None, broker: str, days: int, force: bool, freshness: str,
               pki_dir: str, keys_dir: str, as_json: bool) -> None:
    """Issue DEVICE_ID's certificate (CN = device id) and write its provisioning folder.

    \b
    The folder holds: cert.pem, key.pem (TLS), ca.pem, enc.key (X25519, for encrypted models),
    root.json (trust root from --keys) and agent.toml using them. Copy it to the device, then:
      edgekit-agent run --config agent.toml
    Example:
      edgekit device enroll pi-01 --profile raspberry-pi-4 --broker mqtt.example:8883
      edgekit device enroll pi-02 -p raspberry-pi-4 --freshness require   # registry serves --trust
    """
    def body():
        from edgekit.deploy import parse_broker
        from edgekit.keys import load_keystore
        from edgekit.pki import enroll_device, load_pki

        host, port = parse_broker(broker)
        p = load_pki(pki_dir)
        root = load_keystore(keys_dir).root_path
        folder = out or Path("provision") / device_id
        cfg = enroll_device(p, device_id, profile, folder, root, broker_host=host, broker_port=port, days=days,
                            force=force, freshness=freshness)
        row = next(r for r in p.devices() if r["device"] == device_id)
        if as_json:
            return emit_json({**row, "folder": str(folder), "config": str(cfg)})
        click.echo(f"enrolled {device_id}: certificate {row['serial'][:16]}…, valid until {row['not_after']}")
        click.echo(f"  provisioning folder: {folder} (contains private keys: copy it to the device, then delete)")
        click.echo("  if the broker is running, reload it so its ACL includes the device (SIGHUP)")
    run_guarded(body, as_json)


@device.command("revoke")
@click.argument("device_id")
@pki_option
@json_option
def revoke_cmd(device_id: str, pki_dir: str, as_json: bool) -> None:
    """Revoke DEVICE_ID's certificate: it goes into the CRL (pki/crl.pem) the broker checks.

    Reload the broker afterwards (SIGHUP) so it re-reads the CRL and the ACL.
    """
    def body():
        from edgekit.pki import load_pki

        entry = load_pki(pki_dir).revoke(device_id)
        if as_json:
            return emit_json({"device": device_id, **entry})
        click.echo(f"revoked {device_id} (serial {entry['serial'][:16]}…); CRL updated: reload the broker")
    run_guarded(body, as_json)


@device.command("ls")
@click.option("--warn-days", default=30, show_default=True, help="Warn about certificates expiring this soon.")
@pki_option
@json_option
def ls_cmd(warn_days: int, pki_dir: str, as_json: bool) -> None:
    """Enrolled devices with certificate state and expiry; warns before certificates expire."""
    def body():
        from edgekit.pki import load_pki

        rows = load_pki(pki_dir).devices(warn_days)
        if as_json:
            return emit_json(rows)
        click.echo(table(rows, ["device", "state", "not_after", "days_left"]))
        for r in rows:
            if r["warning"] and r["state"] != "revoked":
                click.secho(f"warning: {r['device']}: {r['warning']}", fg="yellow", err=True)
    run_guarded(body, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(pki)
    cli.add_command(device)
