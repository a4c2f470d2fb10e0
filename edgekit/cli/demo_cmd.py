"""``edgekit demo``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit_json, json_option, run_guarded, table


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep all files (keys, bundles, device data, logs) here instead of a temp dir.")
@click.option("--insecure-plain-mqtt", "plain", is_flag=True,
              help="Use an anonymous plain-MQTT broker instead of mTLS with per-device ACLs (not recommended).")
@json_option
def demo(workdir: Path | None, plain: bool, as_json: bool) -> None:
    """Run the whole flow on this machine with real parts: mosquitto, registry, three agents.

    Converts the bundled sample model for three profiles, signs and uploads the bundles, releases
    the version and lets the registry roll it out in waves (34%,100%; aborts on a failed install
    or a parity failure), runs one inference per device and prints a table. Stops everything it started. Exit 0 only if every
    step succeeded.

    Secure by default: a fleet CA, one enrolled certificate per device, mosquitto with an mTLS
    listener and per-device ACLs, signed, expiring deployment notices, and a registry that hosts
    TUF metadata so each device checks the release is current before downloading it.
    """
    def body():
        from edgekit.demo import run_demo

        rows = run_demo(workdir, log=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)),
                        secure=not plain)
        if as_json:
            return emit_json(rows)
        click.echo(table(rows, ["device", "profile", "precision", "model", "parity", "device_ms", "round_trip_ms",
                                "registry"]))
    run_guarded(body, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(demo)
