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

\b
One active rollout per device: if selected devices are still in a running or paused rollout, the
deploy is refused (exit 2) and the error names those rollouts and devices. --supersede hands them
over instead: the older rollout stops for those devices (its pending notices are never sent, a later
rollback of it leaves them alone) and ends cancelled if it has no other device left.
  edgekit deploy digits-cnn@2.1.0 --to group:canary --supersede
"""


@click.command("deploy", help=DEPLOY_HELP)
@click.argument("ref", metavar="MODEL@VERSION")
@click.option("--to", "selector", required=True, help="Device selector: all, profile=..., tag=..., group:NAME (AND with ',').")
@click.option("--waves", default="100%", show_default=True, help="Cumulative percentages, e.g. 1%,10%,50%,100%.")
@click.option("--abort-if", "abort_if", multiple=True, help="Abort rule (repeatable), e.g. 'failure_rate>5%'.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds before a silent device counts as failed.")
@click.option("--rate", default=None, help="Notice rate limit, e.g. 600/min (default: unlimited).")
@click.option("--wait/--no-wait", default=False, help="Follow the rollout until it ends (exit 1 unless it succeeds).")
@click.option("--supersede", is_flag=True, help="Take over selected devices that are in another active rollout "
              "(cancels that rollout for them) instead of refusing.")
@registry_option
@json_option
def deploy(ref: str, selector: str, waves: str, abort_if: tuple[str, ...], timeout: float, rate: str | None,
           wait: bool, supersede: bool, registry: str, as_json: bool) -> None:
    def body():
        from edgekit.registry import rules

        model, version = split_ref(ref)
        rules.parse_waves(waves)  # fail before contacting the registry
        for r in abort_if:
            rules.parse_rule(r)
        rules.parse_rate(rate)
        out = api(registry, "POST", "/api/v1/rollouts",
                  body={"model": model, "version": version, "selector": selector, "waves": waves,
                        "abort_if": list(abort_if), "timeout_s": timeout, "rate": rate, "supersede": supersede})
        if not as_json:
            click.echo(f"rollout {out['id']}: {model}@{version} to {out['total']} device(s) in waves "
                       f"{out['wave_sizes']} — follow it with `edgekit rollout status {out['id']}`")
            if out.get("reason"):
                click.echo(f"  {out['reason']}")
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
            + (f" superseded={c['superseded']}" if c.get("superseded") else "")
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
        click.echo(f"{r['model']}@{r['version']} → {r['selector']}  rules: {', '.join(r['rules']) or 'none'}"
                   + (f"  (rolls back {r['rollback_of']})" if r.get("rollback_of") else ""))
        click.echo(_line(r))
        if devices:
            click.echo(table(r["targets"], ["device", "profile", "wave", "state", "error_code", "previous", "rollback",
                                            "superseded_by"]))
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
ROLLBACK_HELP = """Undo rollout ROLLOUT_ID on the devices it updated.

\b
Without --to: every updated device switches back to its previous verified slot (a signed
cmd/rollback: health-checked on the device, no download; the device's anti-rollback floor stays
at the release it rolled back from). That reaches one release back.
\b
With --to MODEL@VERSION: any earlier release. The registry starts a new rollout of it to those
devices (it supersedes this rollout for them; `edgekit rollout status NEW_ID` follows it). Devices
download and verify it like any release, so its release counter must be above every release of
the model they may have run. An older counter is refused (exit 5) unless --keys names the key store
that released it: the CLI then verifies that release's bundles against the key store, signs the
same content again as the next release counter, uploads it, and starts the rollout.

\b
Examples:
  edgekit rollout rollback 3f2a9c01de
  edgekit rollout rollback 3f2a9c01de --to digits-cnn@1.0.0 --keys keys
  edgekit rollout rollback 3f2a9c01de --to digits-cnn@1.0.0 --waves 10%,100% --timeout 120 --json
"""


@rollout.command("rollback", help=ROLLBACK_HELP)
@click.argument("rollout_id")
@click.option("--to", "to_ref", metavar="MODEL@VERSION", default=None, help="Go back to this earlier release.")
@click.option("--keys", "keys_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="With --to: key store to re-sign the release with when its counter is too old.")
@click.option("--waves", default="100%", show_default=True, help="With --to: waves of the new rollout.")
@click.option("--timeout", default=300.0, show_default=True, help="With --to: seconds before a silent device fails.")
@registry_option
@json_option
def rollout_rollback(rollout_id: str, to_ref: str | None, keys_dir: str | None, waves: str, timeout: float,
                     registry: str, as_json: bool) -> None:
    def body():
        if not to_ref:
            if keys_dir:
                from edgekit.core.errors import UsageError

                raise UsageError("--keys only applies with --to", hint="e.g. --to digits-cnn@1.0.0 --keys keys")
            r = api(registry, "POST", f"/api/v1/rollouts/{rollout_id}/rollback")
            return emit_json(r) if as_json else click.echo(_line(r))
        from edgekit.registry import rules

        model, version = split_ref(to_ref)
        rules.parse_waves(waves)
        from edgekit.core.errors import RollbackError

        order = {"to": to_ref, "timeout_s": timeout, "waves": waves}
        resigned: list[dict] = []
        try:
            r = api(registry, "POST", f"/api/v1/rollouts/{rollout_id}/rollback", body=order)
        except RollbackError as exc:  # the registry names the profiles whose counter devices would refuse
            if not keys_dir or not exc.details.get("low"):
                raise
            resigned = _resign(registry, model, version, exc.details["low"], keys_dir, quiet=as_json)
            r = api(registry, "POST", f"/api/v1/rollouts/{rollout_id}/rollback", body=order)
        if as_json:
            return emit_json({**r, "resigned": resigned})
        click.echo(f"rollout {r['id']}: back to {to_ref} on {r['total']} device(s) of rollout {rollout_id} — "
                   f"follow it with `edgekit rollout status {r['id']}`")
    run_guarded(body, as_json)


def _resign(registry: str, model: str, version: str, low: dict, keys_dir: str, quiet: bool) -> list[dict]:
    """Re-release ``model@version`` for the profiles in ``low`` (the registry's RollbackError details:
    profile -> {release, newest}) with a counter above ``newest``; upload the result. Returns what was re-signed."""
    import tempfile
    from pathlib import Path

    import requests

    from edgekit.core.bundle import peek_manifest
    from edgekit.core.errors import TransportError
    from edgekit.deploy import upload
    from edgekit.keys import load_keystore
    from edgekit.release import rerelease_bundle

    store = load_keystore(keys_dir)
    versions = api(registry, "GET", f"/api/v1/models/{model}")["versions"]
    chosen = next(v for v in versions if v["version"] == version)  # the registry just named its artifacts
    newest = max(int(x["newest"]) for x in low.values())
    done = []
    with tempfile.TemporaryDirectory(prefix="edgekit-resign-") as tmp:
        for art in (a for a in chosen["artifacts"] if a["profile"] in low):
            src = Path(tmp) / f"{art['sha256']}.bundle"
            url = f"{registry.rstrip('/')}/artifacts/{art['sha256']}.bundle"  # art["url"] has the server's bind address
            try:
                with requests.get(url, stream=True, timeout=60) as resp:
                    resp.raise_for_status()
                    with open(src, "wb") as fh:
                        for chunk in resp.iter_content(1 << 20):
                            fh.write(chunk)
            except requests.RequestException as exc:
                raise TransportError(f"cannot download {url}: {exc}") from None
            out = rerelease_bundle(src, store, Path(tmp) / art["profile"], above=newest)
            stored = upload(out, registry)
            release = peek_manifest(out)["model"]["release"]
            newest = max(newest, release)
            done.append({"profile": art["profile"], "from_release": art["release"], "release": release,
                         "sha256": stored["sha256"]})
            if not quiet:
                click.echo(f"re-signed {model}@{version} for {art['profile']}: release {art['release']} → {release}")
    return done


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
