"""``edgekit keys init|show``."""

from __future__ import annotations

import click

from .common import emit_json, json_option, keys_option, run_guarded


@click.group("keys")
def keys() -> None:
    """Signing keys and the fleet's trust root (TUF root.json)."""


@keys.command("init")
@keys_option
@click.option("--root-keys", default=1, show_default=True, help="Number of root keys (keep them offline).")
@click.option("--root-threshold", default=1, show_default=True, help="Root signatures needed (e.g. 2 of 3).")
@click.option("--expires-days", default=365, show_default=True, help="Root metadata lifetime.")
@click.option("--force", is_flag=True, help="Replace an existing key store (devices must be re-provisioned).")
@json_option
def init_cmd(keys_dir: str, root_keys: int, root_threshold: int, expires_days: int, force: bool, as_json: bool) -> None:
    """Create Ed25519 keys for root/targets/snapshot/timestamp and a signed root.json.

    Provision KEYS/root.json on every device (agent config `trusted_root`).
    """
    def body():
        from edgekit.keys import init_keystore

        store = init_keystore(keys_dir, root_keys=root_keys, root_threshold=root_threshold,
                              root_expiry_days=expires_days, force=force)
        info = {"keys": str(store.directory), "root": str(store.root_path), "roles": store.index["roles"]}
        if as_json:
            return emit_json(info)
        click.echo(f"created key store in {store.directory}")
        click.echo(f"  provision this on devices: {store.root_path}")
        click.echo("  keep private/root-*.pem offline; back up the whole directory")
    run_guarded(body, as_json)


@keys.command("show")
@keys_option
@json_option
def show_cmd(keys_dir: str, as_json: bool) -> None:
    """Show the roles, key ids, thresholds and expiry of the trust root."""
    def body():
        from edgekit.core import trust
        from edgekit.keys import load_keystore

        store = load_keystore(keys_dir)
        root = trust.load_root(store.root_bytes()).signed
        info = {"version": root.version, "expires": root.expires.isoformat(),
                "roles": {name: {"keyids": role.keyids, "threshold": role.threshold}
                          for name, role in root.roles.items()}}
        notices = root.unrecognized_fields.get(trust.NOTICES_FIELD)
        if isinstance(notices, dict):  # the online key that signs deployment notices (ADR 0006)
            info["roles"]["notices"] = {"keyids": sorted(notices.get("keys", {})),
                                        "threshold": notices.get("threshold", 1)}
        if as_json:
            return emit_json(info)
        click.echo(f"root v{info['version']}, expires {info['expires']}")
        for name, r in info["roles"].items():
            click.echo(f"  {name:10} threshold {r['threshold']} of {len(r['keyids'])}: "
                       + ", ".join(k[:12] for k in r["keyids"]))
    run_guarded(body, as_json)


@keys.command("rotate")
@click.option("--role", required=True, type=click.Choice(["root", "targets", "notices", "snapshot", "timestamp"]),
              help="Role whose keys are replaced (the old keys are revoked).")
@click.option("--expires-days", default=365, show_default=True, help="Lifetime of the new root version.")
@keys_option
@json_option
def rotate_cmd(role: str, expires_days: int, keys_dir: str, as_json: bool) -> None:
    """Replace a role's keys: writes root version N+1 signed by the current root keys (and the new
    ones for --role root). Devices follow N -> N+1 when a bundle or notice carries it (edgekit
    adds the chain automatically) and from then on refuse anything signed by the revoked keys.

    \b
    Revoke a compromised release key, then re-release what devices should still accept:
      edgekit keys rotate --role targets
    The registry's online TUF keys (then `edgekit registry trust init`: the delegation names them):
      edgekit keys rotate --role snapshot
    Root rotation with 2-of-3 offline root keys: put two of the three private/root-N.pem files
    in place for the ceremony, run `edgekit keys rotate --role root`, take them offline again.
    """
    def body():
        from edgekit.keys import load_keystore, rotate

        info = rotate(load_keystore(keys_dir), role, expiry_days=expires_days)
        if as_json:
            return emit_json(info)
        click.echo(f"rotated {role}: root is now v{info['version']}; revoked key ids: "
                   + (", ".join(k[:12] for k in info["revoked_keyids"]) or "(notices key replaced)"))
        click.echo("  new releases and notices carry the new root; re-release models devices should keep accepting")
    run_guarded(body, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(keys)
