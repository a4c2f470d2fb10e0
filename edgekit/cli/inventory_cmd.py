"""``edgekit fleet show|watch|tag|group``: inventory commands over the registry HTTP API."""

from __future__ import annotations

import time

import click

from edgekit.registry_client import api

from .common import emit_json, json_option, registry_option, run_guarded, table

COLUMNS = ["id", "fleet", "state", "profile", "model", "agent", "seen", "p95_ms", "tags", "groups"]


def device_rows(devices: list[dict]) -> list[dict]:
    now = time.time()
    return [{**d, "state": "online" if d["online"] else "offline", "agent": d.get("agent_version"),
             "model": f"{d['model']}@{d['version']}" if d.get("model") else None,
             "seen": f"{now - d['last_seen']:.0f}s ago" if d.get("last_seen") else None,
             "p95_ms": (d.get("inference") or {}).get("p95_ms"),
             "tags": ",".join(d.get("tags", [])) or None, "groups": ",".join(d.get("groups", [])) or None}
            for d in devices]


@click.command("show")
@click.argument("device")
@registry_option
@json_option
def fleet_show(device: str, registry: str, as_json: bool) -> None:
    """One device: inventory, health, inference stats and its recent deployment events.

    Example: edgekit fleet show pi-01"""
    def body():
        d = api(registry, "GET", f"/api/v1/devices/{device}")
        labels = api(registry, "GET", "/api/v1/fleet", params={"selector": f"id={device}"})["devices"]
        d.update({k: labels[0][k] for k in ("tags", "groups")} if labels else {})
        d["events"] = api(registry, "GET", "/api/v1/events", params={"device": device, "limit": 20})["events"]
        if as_json:
            return emit_json(d)
        row = device_rows([d])[0]
        for k in COLUMNS + ["status_reason"]:
            click.echo(f"{k:>14}: {row.get(k) if row.get(k) is not None else '-'}")
        click.echo(f"{'health':>14}: {d.get('health')}")
        click.echo(f"{'inference':>14}: {d.get('inference')}")
        click.echo(table([{"state": e["state"], "ok": e["ok"], "deployment": e.get("deployment_id"),
                           "version": e.get("version"), "error": (e.get("error") or {}).get("code")}
                          for e in d["events"]], ["state", "ok", "deployment", "version", "error"]))
    run_guarded(body, as_json)


@click.command("watch")
@click.option("--to", "selector", default="all", show_default=True, help="Device selector.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--count", default=0, help="Stop after N refreshes (0 = until Ctrl-C).")
@registry_option
@json_option
def fleet_watch(selector: str, interval: float, count: int, registry: str, as_json: bool) -> None:
    """Refresh the device table (or print one JSON line per refresh with --json).

    Example: edgekit fleet watch --to tag=kitchen --interval 5"""
    def body():
        n = 0
        while True:
            devices = api(registry, "GET", "/api/v1/fleet", params={"selector": selector})["devices"]
            if as_json:
                import json

                click.echo(json.dumps({"ts": time.time(), "devices": devices}, default=str))
            else:
                online = sum(d["online"] for d in devices)
                click.clear()
                click.echo(f"{len(devices)} device(s), {online} online — {time.strftime('%H:%M:%S')}")
                click.echo(table(device_rows(devices), COLUMNS))
            n += 1
            if count and n >= count:
                return
            time.sleep(interval)
    run_guarded(body, as_json)


@click.command("tag")
@click.argument("devices", nargs=-1, required=True)
@click.option("--add", "add", multiple=True, help="Tag to add (repeatable).")
@click.option("--remove", "remove", multiple=True, help="Tag to remove (repeatable).")
@registry_option
@json_option
def fleet_tag(devices: tuple[str, ...], add: tuple[str, ...], remove: tuple[str, ...], registry: str,
              as_json: bool) -> None:
    """Add or remove tags on DEVICES; select them later with --to tag=NAME.

    Example: edgekit fleet tag pi-01 pi-02 --add kitchen --remove lab"""
    def body():
        from edgekit.core.errors import UsageError

        if not add and not remove:
            raise UsageError("nothing to do", hint="Pass --add TAG and/or --remove TAG.")
        api(registry, "POST", "/api/v1/tags", body={"devices": list(devices), "add": list(add), "remove": list(remove)})
        out = api(registry, "GET", "/api/v1/fleet", params={"selector": "all"})["devices"]
        tags = {d["id"]: d["tags"] for d in out if d["id"] in devices}
        emit_json(tags) if as_json else click.echo("\n".join(f"{d}: {', '.join(t) or '-'}" for d, t in tags.items()))
    run_guarded(body, as_json)


@click.command("group")
@click.argument("name")
@click.argument("devices", nargs=-1)
@click.option("--remove", is_flag=True, help="Remove DEVICES from the group instead of adding them.")
@registry_option
@json_option
def fleet_group(name: str, devices: tuple[str, ...], remove: bool, registry: str, as_json: bool) -> None:
    """Add DEVICES to group NAME (or --remove them); select the group with --to group:NAME.

    \b
    Examples:
      edgekit fleet group canary pi-01 pi-07
      edgekit fleet group canary pi-07 --remove
    """
    def body():
        out = api(registry, "POST", f"/api/v1/groups/{name}",
                  body={"add": [] if remove else list(devices), "remove": list(devices) if remove else []})
        emit_json(out) if as_json else click.echo(f"group {name}: {', '.join(out['devices']) or '(empty)'}")
    run_guarded(body, as_json)


def attach(group: click.Group) -> None:
    for cmd in (fleet_show, fleet_watch, fleet_tag, fleet_group):
        group.add_command(cmd)
