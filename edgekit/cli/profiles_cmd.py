"""``edgekit profiles list|show|validate``."""

from __future__ import annotations

import json

import click

from edgekit.core import profiles as prof
from edgekit.core.errors import ProfileError

from .common import emit_json, json_option, run_guarded, table


@click.group("profiles")
def profiles() -> None:
    """Hardware profiles: what each device can run and the budgets a model must meet."""


@profiles.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List the bundled hardware profiles."""
    def body():
        rows = [p.summary() for p in prof.list_profiles()]
        if as_json:
            return emit_json(rows)
        for r in rows:
            r["precisions"] = ",".join(r["precisions"])
            r["ram"] = _human(r["ram_bytes"])
        click.echo(table(rows, ["id", "class", "arch", "engine", "precisions", "ram", "name"]))
    run_guarded(body, as_json)


@profiles.command("show")
@click.argument("profile")
@json_option
def show_cmd(profile: str, as_json: bool) -> None:
    """Show every field of PROFILE (an id from `profiles list`, or a path to a .toml file)."""
    def body():
        p = prof.load_profile(profile)
        if as_json:
            return emit_json(p.raw)
        click.echo(f"{p.id}: {p.name} ({p.device_class}) — {p.path}")
        for section, values in p.raw.items():
            if isinstance(values, dict):
                click.echo(f"[{section}]")
                for k, v in values.items():
                    click.echo(f"  {k:28} {json.dumps(v)}")
            elif isinstance(values, list) and values and isinstance(values[0], dict):
                for item in values:
                    click.echo(f"[[{section}]] " + ", ".join(f"{k}={json.dumps(v)}" for k, v in item.items()))
    run_guarded(body, as_json)


@profiles.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
def validate_cmd(files: tuple[str, ...], as_json: bool) -> None:
    """Check profile FILES against the schema; exit 3 if any is invalid."""
    results = []
    for f in files:
        try:
            prof.load_profile_file(f)
            results.append({"file": f, "valid": True, "errors": []})
        except ProfileError as exc:
            results.append({"file": f, "valid": False, "errors": exc.details.get("errors") or [exc.message]})
    if as_json:
        emit_json(results)
    else:
        for r in results:
            click.echo(f"{'ok     ' if r['valid'] else 'INVALID'} {r['file']}")
            for e in r["errors"]:
                click.echo(f"  - {e}")
    if not all(r["valid"] for r in results):
        raise SystemExit(ProfileError.exit_code)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} PiB"


def register(cli: click.Group) -> None:
    cli.add_command(profiles)
