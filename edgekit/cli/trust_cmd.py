"""``edgekit registry trust init|status|resign`` and the ``registry serve --trust`` options (ADR 0010)."""

from __future__ import annotations

import re

import click

from .common import emit_json, json_option, keys_option, registry_option, run_guarded, table

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str, what: str) -> float:
    """``30s``, ``12h``, ``1d`` (a bare number is seconds) → seconds."""
    from edgekit.core.errors import UsageError

    m = _DURATION.match(str(value).strip())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"{what}: {value!r} is not a positive duration", hint="Use e.g. 90s, 30m, 12h or 7d.")
    return float(m.group(1)) * _UNIT[m.group(2)]


def serve_options(fn):
    """Options added to ``registry serve``; the command passes :func:`serve_kwargs` to ``Registry``."""
    fn = click.option("--trust-snapshot", default="7d", show_default=True,
                      help="Lifetime of the hosted snapshot and released-targets metadata.")(fn)
    fn = click.option("--trust-timestamp", default="1d", show_default=True,
                      help="Lifetime of the hosted timestamp: how long a frozen registry can go unnoticed.")(fn)
    fn = click.option("--trust", "trust", is_flag=True,
                      help="Host the TUF repository at /tuf/ and re-sign timestamp/snapshot before they expire, "
                           "with the --keys store's online snapshot + timestamp keys (ADR 0010). With --no-rollouts "
                           "this process only serves /tuf/: the one that runs rollouts signs.")(fn)
    return fn


def serve_kwargs(trust: bool, keys_dir: str | None, timestamp: str, snapshot: str) -> dict:
    from edgekit.core.errors import UsageError

    if not trust:
        return {}
    if not keys_dir:
        raise UsageError("--trust needs --keys (the key store with the snapshot and timestamp keys)",
                         hint="e.g. `edgekit registry serve --trust --keys keys`.")
    snap = parse_duration(snapshot, "--trust-snapshot")
    return {"trust_keys": keys_dir, "trust_lifetimes": {
        "timestamp": parse_duration(timestamp, "--trust-timestamp"), "snapshot": snap, "released": snap}}


@click.group("trust")
def trust_group() -> None:
    """The registry's hosted TUF repository: devices check that a bundle is released and fresh."""


_db_option = click.option("--db", "db_url", default=None,
                          help="Read the registry database directly (the same URL as `registry serve --db`) "
                               "instead of asking a running registry.")


@trust_group.command("init")
@click.option("--db", "db_url", default="sqlite:///registry.db", show_default=True,
              help="The registry's SQLAlchemy database URL.")
@keys_option
@click.option("--days", default=365, show_default=True, help="Lifetime of the operator-signed top-level targets.")
@json_option
def trust_init(db_url: str, keys_dir: str, days: int, as_json: bool) -> None:
    """Operator step (needs the release key): store the root chain and sign the top-level targets that
    delegates every bundle to the registry's online snapshot keys. Run it once, after a rotation of
    the targets/snapshot keys, and before it expires (`trust status` warns).

    \b
    Example (on the release host), then start the registry with only its online keys:
      edgekit registry trust init --db sqlite:///registry.db --keys keys
      edgekit registry serve --db sqlite:///registry.db --keys online-keys --trust
    """
    def body():
        from edgekit.registry import db
        from edgekit.registry.trust_repo import TrustRepo

        out = TrustRepo(db.open_db(db_url), keys_dir).init_targets(days)
        if as_json:
            return emit_json(out)
        click.echo(f"signed top-level targets v{out['version']} (expires {out['expires']}): bundles delegated to "
                   f"'{out['delegates_to']}' (snapshot keys {', '.join(k[:12] for k in out['keyids'])})")
    run_guarded(body, as_json)


def _show(out: dict, as_json: bool) -> None:
    if as_json:
        return emit_json(out)
    rows = [{"role": role, **r} for role, r in out["roles"].items()]
    click.echo(table(rows, ["role", "version", "expires", "expires_in_s", "next_resign", "targets"]))
    if not out["hosted"]:
        click.secho(f"not hosted yet: {out.get('hint', '')}", fg="yellow", err=True)
    for p in out["problems"]:
        click.secho(f"problem: {p}", fg="red", err=True)


@trust_group.command("status")
@_db_option
@registry_option
@json_option
def trust_status(db_url: str | None, registry: str, as_json: bool) -> None:
    """Versions, expiries and next re-sign of every hosted role; exits 1 when something expired
    or a re-sign is overdue (a stopped re-signer), so it works as a monitoring check.

    \b
    Examples:
      edgekit registry trust status --registry http://127.0.0.1:8080
      edgekit registry trust status --db sqlite:///registry.db --json
    """
    def body():
        from edgekit.core.errors import EdgekitError

        if db_url:
            from edgekit.registry import db, trust_repo

            out = trust_repo.status(db.open_existing_db(db_url))
        else:
            from edgekit.registry_client import api

            out = api(registry, "GET", "/api/v1/trust")
        _show(out, as_json)
        if not out["ok"]:
            raise EdgekitError("the hosted trust metadata needs attention: " + ("; ".join(out["problems"])
                                                                                 or "not hosted"),
                               hint=out.get("hint") or "Is `edgekit registry serve --trust --keys DIR` running?")
    run_guarded(body, as_json)


@trust_group.command("resign")
@registry_option
@json_option
def trust_resign(registry: str, as_json: bool) -> None:
    """Ask the running registry to re-sign released/snapshot/timestamp now (needs an operator token in
    EDGEKIT_REGISTRY_TOKEN), e.g. after restoring its database from a backup.

    \b
    Example:
      edgekit registry trust resign --registry http://127.0.0.1:8080 --json
    """
    def body():
        from edgekit.registry_client import api

        out = api(registry, "POST", "/api/v1/trust/resign", body={})
        if as_json:
            return emit_json(out)
        click.echo("signed: " + ", ".join(f"{r} v{v}" for r, v in out["signed"].items()))
        _show(out, False)
    run_guarded(body, as_json)


def attach(registry_group: click.Group) -> None:
    registry_group.add_command(trust_group)
