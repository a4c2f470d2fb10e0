"""``edgekit-agent``: run the agent, flash a bundle from a file, show what is installed.

argparse only (the device does not carry click). Exit codes follow the edgekit error tree.
"""

from __future__ import annotations

import argparse
import json
import sys

from edgekit.core.errors import EdgekitError, exit_code_for

from .config import load_config

EPILOG = """examples:
  edgekit-agent run --config /etc/edgekit/agent.toml
  edgekit-agent install model-1.0.0-raspberry-pi-4.bundle --config agent.toml   # bench flashing, no network
  edgekit-agent status --config agent.toml
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgekit-agent", description="On-device agent: verifies, installs and serves "
                                "models, reports telemetry over MQTT.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="connect to the broker and serve until stopped (SIGTERM/SIGINT)")
    inst = sub.add_parser("install", help="verify and install a bundle file (same checks as over the air)")
    inst.add_argument("bundle", help="path to a .bundle file made by `edgekit release`")
    inst.add_argument("--allow-expired", action="store_true",
                      help="accept expired release metadata (bench flashing of old releases)")
    inst.add_argument("--allow-downgrade", action="store_true", help="accept a release older than the installed one")
    status = sub.add_parser("status", help="print the installed model and the last install record as JSON")
    for sp in (run, inst, status):
        sp.add_argument("--config", "-c", required=True, help="agent config TOML")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.command == "run":
            from .service import Agent

            Agent(cfg).run_forever()
            return 0
        from edgekit.core.profiles import load_profile

        from .installer import InstallRequest, Installer
        from .service import new_deployment_id

        profile = load_profile(cfg.profile)
        events: list[dict] = []
        inst = Installer(cfg.data_dir, profile, cfg.trusted_root,
                         lambda s, ok, d, e, dep: events.append({"state": s, "ok": ok, **({"error": e.to_dict()} if e else {})}),
                         threads=cfg.threads, allow_expired=cfg.allow_expired or getattr(args, "allow_expired", False),
                         health_runs=cfg.health_runs, device_id=cfg.device_id, device_key=cfg.device_key)
        if args.command == "status":
            rec = inst.load_record()
            print(json.dumps({"installed": inst.slots.installed(), "last_install": rec and rec.state,
                              "error": rec and rec.error}, indent=2))
            return 0
        rec = inst.install(InstallRequest(deployment_id=f"local-{new_deployment_id()}", bundle_path=args.bundle,
                                          allow_downgrade=args.allow_downgrade))
        out = {"state": rec.state, "installed": inst.slots.installed(), "health": rec.details.get("health"),
               "error": rec.error, "transitions": [e["state"] for e in events]}
        print(json.dumps(out, indent=2))
        if rec.state in ("committed", "already_installed"):
            return 0
        print(f"error: {rec.error['message']}" + (f"\n  hint: {rec.error['hint']}" if rec.error.get("hint") else ""),
              file=sys.stderr)
        return exit_code_for(rec.error["code"])
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
