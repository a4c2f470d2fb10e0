"""``edgekit deploy``, ``edgekit rollout ...`` and ``edgekit models ...``: talk to the registry's HTTP API.

The registry drives rollouts; these commands create, inspect and steer them and may exit at any time.
"""

from __future__ import annotations

import time

import click

from edgekit.registry_client import api, split_ref

from .common import emit_json, json_option, registry_option, run_guarded, table

DEPLOY_HELP = """Roll MODEL@VERSION out to the devices matching --to, in waves, driven by the registry.

\b
Each wave is a cumulative percentage of the selected devices. A wave starts when every device of
the previous one has finished (committed, failed, or silent past --timeout, which counts as
failed). The rollout aborts as soon as an --abort-if rule trips:
  failure_rate>5%      failed or silent devices / finished devices
  parity_failures>0    devices whose on-device golden-vector check failed
  p95_latency>1.2x     median p95 latency on the new version vs the same devices before
  drift>0.3            highest drift score an updated device reports

\b
Examples:
  edgekit deploy digits-cnn@2.0.0 --to all --waves 1%,10%,50%,100% \\
      --abort-if 'failure_rate>5%' --abort-if 'parity_failures>0' --abort-if 'p95_latency>1.2x'
  edgekit deploy digits-cnn@2.0.0 --to 'profile=raspberry-pi-4,tag=kitchen' --rate 600/min --wait
  edgekit deploy digits-cnn@2.0.0 --to group:canary --timeout 120 --json
"""


@click.command("deploy", help=DEPLOY_HELP)
@click.argument("ref", metavar="MODEL@VERSION")
@click.option("--to", "selector", required=True, help="Device selector: all, profile=..., tag=..., group:NAME (AND with ',').")
@click.option("--waves", default="100%", show_default=True, help="Cumulative percentages, e.g. 1%,10%,50%,100%.")
@click.option("--abort-if", "abort_if", multiple=True, help="Abort rule (repeatable), e.g. 'failure_rate>5%'.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds before a silent device counts as failed.")
@click.option("--rate", default=None, help="Notice rate limit, e.g. 600/min (default: unlimited).")
@click.option("--wait/--no-wait", default=False, help="Follow the rollout until it ends (exit 1 unless it succeeds).")
@registry_option
@json_option
def deploy(ref: str, selector: str, waves: str, abort_if: tuple[str, ...], timeout: float, rate: str | None,
           wait: bool, registry: str, as_json: bool) -> None:
    def body():
        from edgekit.registry import rules

        model, version = split_ref(ref)
        rules.parse_waves(waves)  # fail before contacting the registry
        for r in abort_if:
            rules.parse_rule(r)
        rules.parse_rate(rate)
        out = api(registry, "POST", "/api/v1/rollouts",
                  body={"model": model, "version": version, "selector": selector, "waves": waves,
                        "abort_if": list(abort_if), "timeout_s": timeout, "rate": rate})
        if not as_json:
            click.echo(f"rollout {out['id']}: {model}@{version} to {out['total']} device(s) in waves "
                       f"{out['wave_sizes']} — follow it with `edgekit rollout status {out['id']}`")
        if wait:
            out = _follow(registry, out["id"], as_json)
        if as_json:
            emit_json(out)
        if wait and out["state"] != "succeeded":
            from edgekit.core.errors import EdgekitError

            raise EdgekitError(f"rollout {out['id']} ended {out['state']}: {out.get('reason') or ''}",
                               hint=f"Inspect it: `edgekit rollout status {out['id']}`; undo with "
                                    f"`edgekit rollout rollback {out['id']}`.")
    run_guarded(body, as_json)


def _line(r: dict) -> str:
    c = r["counts"]
    return (f"{r['id']}  {r['state']:<12} wave {r['wave']}/{len(r['waves'])}  "
            + " ".join(f"{k}={c.get(k, 0)}" for k in ("pending", "sent", "succeeded", "failed", "timed_out"))
            + (f"  — {r['reason']}" if r.get("reason") else ""))


def _follow(registry: str, rid: str, quiet: bool, interval: float = 1.0) -> dict:
    last = None
    while True:
        r = api(registry, "GET", f"/api/v1/rollouts/{rid}")
        line = _line(r)
        if not quiet and line != last:
            click.echo(line)
            last = line
        if r["state"] not in ("running", "paused", "rolling_back"):
            return r
        time.sleep(interval)


@click.group("rollout")
def rollout() -> None:
    """Inspect and steer rollouts the registry is driving (see `edgekit deploy`)."""


@rollout.command("status")
@click.argument("rollout_id", required=False)
@click.option("--devices", is_flag=True, help="Also list every target device.")
@registry_option
@json_option
def rollout_status(rollout_id: str | None, devices: bool, registry: str, as_json: bool) -> None:
    """Show one rollout (waves, counts, abort reason), or list all rollouts.

    \b
    Examples:
      edgekit rollout status
      edgekit rollout status 3f2a9c01de --devices
      edgekit rollout status 3f2a9c01de --json
    """
    def body():
        if not rollout_id:
            rows = api(registry, "GET", "/api/v1/rollouts")["rollouts"]
            if as_json:
                return emit_json(rows)
            click.echo(table([{**r, "release": f"{r['model']}@{r['version']}", "wave": f"{r['wave']}/{len(r['waves'])}",
                               "ok": r["counts"].get("succeeded", 0),
                               "failed": r["counts"].get("failed", 0) + r["counts"].get("timed_out", 0)}
                              for r in rows], ["id", "release", "selector", "state", "wave", "total", "ok", "failed",
                                               "reason"]))
            return
        r = api(registry, "GET", f"/api/v1/rollouts/{rollout_id}")
        if as_json:
            return emit_json(r)
        click.echo(f"{r['model']}@{r['version']} → {r['selector']}  rules: {', '.join(r['rules']) or 'none'}")
        click.echo(_line(r))
        if devices:
            click.echo(table(r["targets"], ["device", "profile", "wave", "state", "error_code", "previous", "rollback"]))
    run_guarded(body, as_json)


def _action(name: str, doc: str):
    @rollout.command(name, help=doc)
    @click.argument("rollout_id")
    @registry_option
    @json_option
    def cmd(rollout_id: str, registry: str, as_json: bool) -> None:
        def body():
            r = api(registry, "POST", f"/api/v1/rollouts/{rollout_id}/{name}")
            emit_json(r) if as_json else click.echo(_line(r))
        run_guarded(body, as_json)
    return cmd


_action("pause", "Stop sending notices (answers of devices already notified are still counted).\n\n"
                 "Example: edgekit rollout pause 3f2a9c01de")
_action("resume", "Continue a paused rollout.\n\nExample: edgekit rollout resume 3f2a9c01de")
_action("cancel", "End a rollout: no more notices; devices already updated keep the new version.\n\n"
                  "Example: edgekit rollout cancel 3f2a9c01de")
_action("rollback", "Order every device this rollout updated to switch back to its previous verified slot "
                    "(a signed cmd/rollback: health-checked on the device, no download; the device's "
                    "anti-rollback floor stays at the release it rolled back from).\n\n"
                    "Example: edgekit rollout rollback 3f2a9c01de")


@click.group("models")
def models() -> None:
    """The model registry: models, versions, per-profile artifacts, lineage, stages."""


@models.command("ls")
@registry_option
@json_option
def models_ls(registry: str, as_json: bool) -> None:
    """List models with their versions and stages.  Example: edgekit models ls --json"""
    def body():
        rows = api(registry, "GET", "/api/v1/models")["models"]
        if as_json:
            return emit_json(rows)
        click.echo(table([{"model": m["model"], "released": m["released"],
                           "versions": ", ".join(f"{v['version']} ({v['stage']})" for v in m["versions"])}
                          for m in rows], ["model", "released", "versions"]))
    run_guarded(body, as_json)


@models.command("show")
@click.argument("model")
@registry_option
@json_option
def models_show(model: str, registry: str, as_json: bool) -> None:
    """Versions of MODEL: stage, lineage (source hash → artifact hashes), artifacts per profile with
    their conversion report.  Example: edgekit models show digits-cnn"""
    def body():
        m = api(registry, "GET", f"/api/v1/models/{model}")
        if as_json:
            return emit_json(m)
        for v in m["versions"]:
            click.echo(f"{m['model']}@{v['version']}  [{v['stage']}]  source sha256 {v['lineage']['source_sha256']}")
            click.echo(table([{**a, "sha256": a["sha256"][:16],
                               "parity": ", ".join(f"{k}={v2}" for k, v2 in sorted(a["conversion_report"]["parity"].items())
                                                   if isinstance(v2, (int, float)))[:60]}
                              for a in v["artifacts"]], ["profile", "precision", "engine", "release", "length", "sha256",
                                                          "parity"]))
    run_guarded(body, as_json)


@models.command("stage")
@click.argument("ref", metavar="MODEL@VERSION")
@click.argument("stage", type=click.Choice(["draft", "released", "deprecated"]))
@registry_option
@json_option
def models_stage(ref: str, stage: str, registry: str, as_json: bool) -> None:
    """Move a version to a stage (draft → released → deprecated). Only released versions roll out.

    Example: edgekit models stage digits-cnn@2.0.0 released"""
    def body():
        model, version = split_ref(ref)
        out = api(registry, "POST", f"/api/v1/models/{model}/versions/{version}", body={"stage": stage})
        emit_json(out) if as_json else click.echo(f"{model}@{version} is {out['stage']}")
    run_guarded(body, as_json)


def register(cli: click.Group) -> None:
    for cmd in (deploy, rollout, models):
        cli.add_command(cmd)
