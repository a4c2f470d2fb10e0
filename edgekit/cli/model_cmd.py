"""``edgekit convert`` and ``edgekit release``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit_json, json_option, keys_option, pki_option, registry_option, run_guarded, table


@click.command("convert")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--profile", "-p", "profile_ids", multiple=True, required=True,
              help="Target hardware profile id (repeatable). See `edgekit profiles list`.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), required=True,
              help="Calibration data: .npz (arrays named after the inputs, or 'input'), .npy, or a folder of .npy.")
@click.option("--validation", type=click.Path(exists=True, path_type=Path), required=True,
              help="Validation data (same formats; an optional 'label' array enables the accuracy check).")
@click.option("--precision", default="auto", show_default=True,
              type=click.Choice(["auto", "fp32", "fp16", "int8-dynamic", "int8-static", "int8-full", "int16x8"]),
              help="auto = the profile's preferred precision that passes the parity gate and is not slower.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True)
@click.option("--max-samples", default=1000, show_default=True, help="Cap on calibration/validation samples.")
@click.option("--dynamic-batch", is_flag=True,
              help="TFLite: make the batch axis resizable inside the artifact "
                   "(checked; kept at 1 if the graph cannot).")
@json_option
def convert(model: Path, profile_ids: tuple[str, ...], calibration: Path, validation: Path, precision: str,
            out: Path, max_samples: int, dynamic_batch: bool, as_json: bool) -> None:
    """Convert MODEL (.onnx) for each --profile, prove parity on --validation, write OUT/<profile>/.

    Each folder holds the artifact, golden vectors and report.json (size, latency vs fp32,
    parity, accuracy). An artifact that fails the profile's budgets is never written.
    Profiles whose engine is tflite / tflite-micro get a .tflite written without TensorFlow
    (fp32, fp16, int8-static = integer kernels with float I/O, int8-full = int8 I/O,
    int16x8 = int16 activations + int8 weights, only when asked for).
    """
    def body():
        from converters.data import load_dataset
        from converters.onnx_pipeline import convert_onnx, inspect_onnx
        from converters.tflite_pipeline import TFLITE_ENGINES, convert_tflite
        from edgekit.core.profiles import load_profile

        profiles = [load_profile(p) for p in profile_ids]
        names = [i["name"] for i in inspect_onnx(model)["inputs"]]
        cal, val = load_dataset(calibration, names, max_samples), load_dataset(validation, names, max_samples)
        reports = []
        with click.progressbar(profiles, label="converting", hidden=as_json,
                               item_show_func=lambda p: p.id if p else "") as bar:
            for p in bar:
                pipeline = convert_tflite if p.engine in TFLITE_ENGINES else convert_onnx
                extra = {"dynamic_batch": True} if dynamic_batch and p.engine in TFLITE_ENGINES else {}
                reports.append(pipeline(model, p, out, precision=precision, calibration=cal, validation=val, **extra))
        if as_json:
            return emit_json(reports)
        rows = []
        for r in reports:
            c = next(c for c in r["candidates"] if c["precision"] == r["precision"])
            first = next(iter(c["outputs"].values()))
            rows.append({"profile": r["profile"], "precision": r["precision"], "bytes": r["artifact_bytes"],
                         "x_smaller": r["size_ratio"], "speedup": c["speedup"],
                         "cosine": f"{first['cosine']:.5f}", "top1": first["top1_agreement"],
                         "acc_drop": c.get("accuracy_drop"),
                         "dropped": "; ".join(f"{d['precision']}: {', '.join(d['reasons'])}"
                                              for d in r["candidates"] if not d["passed"])})
        click.echo(table(rows, ["profile", "precision", "bytes", "x_smaller", "speedup", "cosine", "top1",
                                "acc_drop", "dropped"]))
        click.echo(f"artifacts in {out}/<profile>/ — next: edgekit release {out}/{reports[0]['profile']} "
                   f"--name NAME --version X.Y.Z")
    run_guarded(body, as_json)


@click.command("release")
@click.argument("artifact_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (stable across versions).")
@click.option("--version", "version", required=True, help="Human version, e.g. 1.2.0.")
@click.option("--release-number", type=int, default=None,
              help="Anti-rollback counter (default: last + 1 for this model in the key store).")
@click.option("--expires-days", default=180, show_default=True, help="Lifetime of the signed release metadata.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bundles"), show_default=True)
@click.option("--upload", is_flag=True, help="Also upload the bundles to the registry.")
@click.option("--encrypt-for", "encrypt_for", multiple=True, metavar="DEVICE_ID",
              help="Encrypt the model so only these enrolled devices can install it (repeatable).")
@click.option("--encrypt-fleet", is_flag=True, help="Encrypt the model for every device enrolled in --pki now.")
@keys_option
@pki_option
@registry_option
@json_option
def release(artifact_dirs: tuple[Path, ...], name: str, version: str, release_number: int | None, expires_days: int,
            out: Path, upload: bool, encrypt_for: tuple[str, ...], encrypt_fleet: bool, keys_dir: str, pki_dir: str,
            registry: str, as_json: bool) -> None:
    """Sign converted ARTIFACT_DIRS (from `edgekit convert`) into one .bundle file each.

    \b
    Encrypted models (AES-256-GCM, data key wrapped to each device's X25519 key from enrollment):
      edgekit release out/raspberry-pi-4 --name digits --version 1.0.0 --encrypt-for pi-01 --encrypt-for pi-02
      edgekit release out/raspberry-pi-4 --name digits --version 1.0.0 --encrypt-fleet --pki pki
    A stolen bundle then does not reveal the model; devices not listed refuse it with a clear error.
    """
    def body():
        from edgekit.deploy import upload as do_upload
        from edgekit.keys import load_keystore
        from edgekit.release import release_artifact

        recipients = None
        if encrypt_for or encrypt_fleet:
            from edgekit.core.errors import UsageError
            from edgekit.pki import load_pki

            pki = load_pki(pki_dir)
            devices = sorted(pki.active_devices()) if encrypt_fleet else list(encrypt_for)
            if not devices:
                raise UsageError(f"no enrolled devices in {pki_dir} to encrypt for",
                                 hint="Enroll devices first: `edgekit device enroll DEVICE_ID --profile P`.")
            recipients = {d: pki.device_x25519(d) for d in devices}
        store = load_keystore(keys_dir)
        results = []
        for d in artifact_dirs:
            path = release_artifact(d, store, out, name=name, version=version, release=release_number,
                                    expiry_days=expires_days, encrypt_to=recipients)
            entry = {"bundle": str(path), "bytes": path.stat().st_size}
            if upload:
                entry.update(do_upload(path, registry))
            results.append(entry)
        if as_json:
            return emit_json(results)
        click.echo(table(results, ["bundle", "bytes"] + (["url"] if upload else [])))
    run_guarded(body, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(convert)
    cli.add_command(release)
