"""``edgekit convert`` and ``edgekit release``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import emit_json, json_option, keys_option, pki_option, registry_option, run_guarded, table


CONVERT_HELP = """Convert MODEL (.onnx, or .pt/.pth with the torch extra) for each --profile, prove parity, write OUT/<profile>/.

\b
Each folder holds the artifact, golden vectors and report.json: size and its ratio to the
ideal (4x for int8), latency vs fp32 (same run, 1 thread), parity (cosine, max error, top-1,
accuracy drop with labels), budget verdicts (size, estimated peak memory, ops) and the time
and peak memory of each step. An artifact that fails the profile's budgets is never written.
Profiles whose engine is tflite / tflite-micro get a .tflite written without TensorFlow
(fp32, fp16, int8-dynamic, int8-static = integer kernels with float I/O, int8-full = int8 I/O,
int16x8 = int16 activations + int8 weights, int8-mixed = float stem + int8 rest, both only when asked
for; --dynamic-batch for a resizable batch).

\b
Examples:
  edgekit convert model.onnx -p raspberry-pi-4 --calibration cal.npz --validation val.npz
  edgekit convert yolo.onnx -p x86-64-gateway --input-shape images:1,3,320,320 \\
      --calibration imgs/ --validation val_imgs/ --preprocess resize=320x320,scale=1/255,layout=NCHW
  edgekit convert model.onnx -p jetson-orin-nano --precision fp16 --calibration cal.npz --validation val.npz
  edgekit convert model.onnx -p x86-64-gateway --precision int8-static --calibration-method percentile ...
  edgekit convert 320n.onnx -p x86-64-gateway --task detection-yolo --calibration imgs/ --validation val_imgs/ \\
      --preprocess resize=320x320,scale=1/255,layout=NCHW

\b
--task decides how a detection/text head is judged: the task metric vs fp32 (box IoU of the top
detection, text-mask IoU at 0.3) must reach the profile's validation.min_task_score; the
element-wise figures of that output are still reported. auto = classification for [N, C] scores
or labelled data (element-wise + top-1 checks), else raw (element-wise only). A declared
--task classification on validation data with a 'label' array is decided by accuracy vs the
labels (drop <= the profile's max_accuracy_drop) plus top-1 agreement (ADR 0014).
"""


@click.command("convert", help=CONVERT_HELP)
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--profile", "-p", "profile_ids", multiple=True, required=True,
              help="Target hardware profile id or TOML file (repeatable). See `edgekit profiles list`.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), required=True,
              help="Calibration data: .npz (arrays named after the inputs, or 'input'), .npy, a folder of .npy, "
                   "or a folder of images (with --preprocess).")
@click.option("--validation", type=click.Path(exists=True, path_type=Path), required=True,
              help="Validation data (same formats; an optional 'label' array enables the accuracy check).")
@click.option("--precision", default="auto", show_default=True,
              type=click.Choice(["auto", "fp32", "fp16", "int8-dynamic", "int8-static", "int8-full", "int16x8",
                                 "int8-mixed"]),
              help="auto = the profile's preferred precision that passes the parity gate and is not slower than "
                   "fp32; a forced precision that fails exits non-zero with the numbers.")
@click.option("--calibration-method", default="auto", show_default=True,
              type=click.Choice(["auto", "minmax", "entropy", "percentile"]),
              help="Activation range calibration (int8-static). auto = MinMax; if its answers fail the gate or miss "
                   "the profile's min_cosine on the validation data, Percentile too, keeping the better on validation "
                   "(report.json lists both). A named method builds exactly that one.")
@click.option("--task", default="auto", show_default=True,
              type=click.Choice(["auto", "classification", "detection-yolo", "text-mask", "raw"]),
              help="What the model's output is for; the parity gate judges detection/text heads by their task "
                   "metric (see above). The chosen task and why are printed and stored in report.json.")
@click.option("--input-shape", "input_shape_specs", multiple=True, metavar="NAME:D1,D2,...",
              help="Fix a dynamic input shape, e.g. images:1,3,640,640 (repeatable). Profiles that need static "
                   "shapes get them from the validation data otherwise.")
@click.option("--preprocess", default=None, metavar="SPEC",
              help="How to turn image folders into inputs: resize=WxH,scale=1/255,mean=a/b/c,std=a/b/c,"
                   "layout=NCHW|NHWC,color=RGB|BGR|L.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True)
@click.option("--max-samples", default=1000, show_default=True, help="Cap on calibration/validation samples.")
@click.option("--dynamic-batch", is_flag=True,
              help="TFLite: make the batch axis resizable inside the artifact "
                   "(checked; kept at 1 if the graph cannot).")
@json_option
def convert(model: Path, profile_ids: tuple[str, ...], calibration: Path, validation: Path, precision: str,
            calibration_method: str, task: str, input_shape_specs: tuple[str, ...], preprocess: str | None, out: Path,
            max_samples: int, dynamic_batch: bool, as_json: bool) -> None:
    def body():
        import tempfile

        from converters.data import load_dataset
        from converters.onnx_pipeline import convert_onnx, inspect_onnx
        from converters.tflite_pipeline import TFLITE_ENGINES, check_calibration_method, convert_tflite
        from converters.preprocess import parse_input_shapes
        from converters.torch_export import export_torch, is_torch_file
        from edgekit.core.profiles import load_profile

        from .convert_view import render

        profiles = [load_profile(p) for p in profile_ids]
        shapes = parse_input_shapes(input_shape_specs)
        def say(msg: str) -> None:  # step names on their own line; "calibrating i/n" redrawn in place
            if as_json:
                return
            done, _, total = msg.rpartition(" ")[2].partition("/")
            if "calibrating" in msg and done.isdigit():
                if sys.stderr.isatty():      # redraw in place on a terminal; logs get the final count only
                    click.echo(f"\r  {msg}", nl=done == total, err=True)
                elif done == total:
                    click.echo(f"  {msg}", err=True)
            else:
                click.echo(f"  {msg}", err=True)
        for p in profiles:  # before any work: a run must not stop half-way on a TFLite profile
            if p.engine in TFLITE_ENGINES:
                check_calibration_method(p, calibration_method)
        with tempfile.TemporaryDirectory(prefix="edgekit-export-") as tmp:
            src = export_torch(model, Path(tmp), shapes) if is_torch_file(model) else model
            names = [i["name"] for i in inspect_onnx(src)["inputs"]]
            cal = load_dataset(calibration, names, max_samples, preprocess)
            val = load_dataset(validation, names, max_samples, preprocess)
            reports = []
            with click.progressbar(profiles, label="converting", hidden=as_json, file=sys.stderr,
                                   item_show_func=lambda p: p.id if p else "") as bar:
                for p in bar:
                    if p.engine in TFLITE_ENGINES:
                        reports.append(convert_tflite(src, p, out, precision=precision, calibration=cal,
                                                      validation=val, progress=say, task=task,
                                                      dynamic_batch=dynamic_batch,
                                                      calibration_method=calibration_method))
                    else:
                        reports.append(convert_onnx(src, p, out, precision=precision, calibration=cal,
                                                    validation=val, progress=say, input_shapes=shapes,
                                                    calibration_method=calibration_method, task=task))
        if as_json:
            return emit_json(reports)
        for r in reports:
            click.echo(render(r) + "\n")
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

        if upload:  # refuse before signing anything when the upload cannot be authorised
            from edgekit.registry_client import auth_headers, raise_for_auth

            if not auth_headers():
                raise_for_auth(401, {}, registry, token_sent=False)
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
