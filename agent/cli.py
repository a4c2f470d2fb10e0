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
  edgekit-agent run --config agent.toml --stream cam0      # also infer on .../sensors/cam0
  edgekit-agent install model-1.0.0-raspberry-pi-4.bundle --config agent.toml   # bench flashing, no network
  edgekit-agent status --config agent.toml
  edgekit-agent batch inputs/ predictions.npz --config agent.toml --json   # offline, installed model
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgekit-agent", description="On-device agent: verifies, installs and serves "
                                "models, reports telemetry over MQTT.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="connect to the broker and serve until stopped (SIGTERM/SIGINT)")
    run.add_argument("--stream", action="append", default=[], metavar="NAME",
                     help="streaming mode: infer on .../sensors/NAME, publish .../predictions/NAME "
                          "(repeatable; adds to [streaming] streams)")
    inst = sub.add_parser("install", help="verify and install a bundle file (same checks as over the air)")
    inst.add_argument("bundle", help="path to a .bundle file made by `edgekit release`")
    inst.add_argument("--allow-expired", action="store_true",
                      help="accept expired release metadata (bench flashing of old releases)")
    inst.add_argument("--allow-downgrade", action="store_true", help="accept a release older than the installed one")
    status = sub.add_parser("status", help="print the installed model and the last install record as JSON")
    batch = sub.add_parser("batch", help="run the installed model over a folder of .npy/.npz files into one .npz",
                           description="Each IN_DIR/x.npy (single-input models) or x.npz (arrays keyed by input "
                           "name) is run in batches along axis 0 (axis 0 = samples); OUT_FILE gets x/<output> arrays. "
                           "No network needed.", epilog="example:\n  edgekit-agent batch frames/ out.npz "
                           "--config agent.toml --json", formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("in_dir", help="folder of .npy / .npz input files (read in name order)")
    batch.add_argument("out_file", help="the .npz file to write (atomically)")
    batch.add_argument("--json", action="store_true", help="print a JSON summary (files, samples, throughput)")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    for sp in (run, inst, status, batch):
        sp.add_argument("--config", "-c", required=True, help="agent config TOML")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.command == "run":
            from edgekit.core.topics import check_name

            from .service import Agent

            cfg.streams = list(dict.fromkeys(cfg.streams + [check_name(s, "stream name") for s in args.stream]))
            Agent(cfg).run_forever()
            return 0
        from edgekit.core.profiles import load_profile

        if args.command == "batch":
            return _batch(cfg, args, load_profile(cfg.profile))
        from .installer import InstallRequest, Installer
        from .service import new_deployment_id

        profile = load_profile(cfg.profile)
        events: list[dict] = []
        inst = Installer(cfg.data_dir, profile, cfg.trusted_root,
                         lambda s, ok, d, e, dep: events.append({"state": s, "ok": ok, **({"error": e.to_dict()} if e else {})}),
                         threads=cfg.threads, allow_expired=cfg.allow_expired or getattr(args, "allow_expired", False),
                         health_runs=cfg.health_runs, health_timeout_s=cfg.health_timeout_s,
                         device_id=cfg.device_id, device_key=cfg.device_key, spin=cfg.spin)
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


def _batch(cfg, args, profile) -> int:
    from pathlib import Path

    from edgekit.core.errors import ModelError

    from .batch import run_batch, stderr_progress
    from .runtime import load_runner, serving_threads
    from .slots import Slots

    slots = Slots(cfg.data_dir)
    slot = slots.current()
    if slot is None:
        raise ModelError("no model installed yet", hint="Install one with `edgekit-agent install FILE` first.")
    manifest = slots.manifest(slot)
    runner = load_runner(slots.path(slot) / manifest["artifact"], manifest["engine"],
                         serving_threads(cfg.threads, profile.threads), cfg.spin)
    summary = run_batch(runner, manifest, Path(args.in_dir), Path(args.out_file),
                        None if args.no_progress or args.json else stderr_progress)
    info = summary.as_dict(Path(args.out_file), {"model": manifest["model"]["name"],
                                                 "version": manifest["model"]["version"]})
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['samples']} samples from {info['files']} files -> {info['out']} in {info['seconds']:.2f} s "
              f"({info['throughput_per_s']} samples/s, model {info['model']} {info['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
