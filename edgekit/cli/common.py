"""Shared CLI plumbing: output as tables or JSON, error reporting, common options."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from edgekit.core.errors import EdgekitError

broker_option = click.option("--broker", envvar="EDGEKIT_BROKER", default="127.0.0.1:1883", show_default=True,
                             help="MQTT broker HOST:PORT (env EDGEKIT_BROKER).")
registry_option = click.option("--registry", envvar="EDGEKIT_REGISTRY", default="http://127.0.0.1:8080",
                               show_default=True, help="Registry base URL (env EDGEKIT_REGISTRY).")
fleet_option = click.option("--fleet", envvar="EDGEKIT_FLEET", default="default", show_default=True,
                            help="Fleet id (env EDGEKIT_FLEET).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
keys_option = click.option("--keys", "keys_dir", envvar="EDGEKIT_KEYS", default="keys", show_default=True,
                           type=click.Path(file_okay=False), help="Key store directory (env EDGEKIT_KEYS).")

identity_option = click.option("--identity", envvar="EDGEKIT_IDENTITY", default=None,
                               type=click.Path(file_okay=False, exists=True),
                               help="TLS identity folder (cert.pem, key.pem, ca.pem) for an mTLS broker, e.g. "
                                    "PKI/services/edgekit-host (env EDGEKIT_IDENTITY). Omit for a plain broker.")

pki_option = click.option("--pki", "pki_dir", envvar="EDGEKIT_PKI", default="pki", show_default=True,
                          type=click.Path(file_okay=False), help="Fleet PKI directory (env EDGEKIT_PKI).")


def tls_files(identity: str | None):
    """The MqttConnection ``tls`` argument for an ``--identity`` folder (None: plain MQTT)."""
    from edgekit.core.mqtt import TlsFiles

    return TlsFiles.from_dir(identity) if identity else None


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line([c.upper() for c in columns]), line(["-" * w for w in widths])] + [line(r) for r in cells])


def run_guarded(fn: Callable[[], Any], as_json: bool = False) -> Any:
    """Run a command body; turn an EdgekitError into a message + hint and its exit code."""
    try:
        return fn()
    except EdgekitError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": exc.to_dict()}, indent=2), err=True)
        else:
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
