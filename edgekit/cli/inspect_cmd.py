"""``edgekit inspect`` (describe a .tflite / .onnx file) and ``edgekit export`` (microcontroller C array)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit_json, json_option, run_guarded, table


@click.command("inspect")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--profile", "-p", "profile_id", default=None,
              help="Flag what this hardware profile's runtime cannot run (op versions, ops, types, shapes, budgets).")
@click.option("--runtime", default=None, metavar="VERSION",
              help="Flag op versions a TF Lite runtime of this version cannot run, e.g. 2.14 (tflite-runtime).")
@click.option("--tensors", "show_tensors", is_flag=True, help="List every tensor (table output).")
@click.option("--layerwise", "layerwise_data", type=click.Path(exists=True, path_type=Path), default=None,
              metavar="CAL.npz", help="ONNX only: quantize with this calibration data and compare every layer "
              "of the quantized TFLite model with the float one (where accuracy is lost).")
@click.option("--precision", type=click.Choice(["int8-static", "int16x8"]), default="int8-static", show_default=True,
              help="Quantization compared by --layerwise.")
@click.option("--sample", "sample_data", type=click.Path(exists=True, path_type=Path), default=None,
              help="With --layerwise: the input compared (first row; default: the first calibration row).")
@json_option
def inspect(model: Path, profile_id: str | None, runtime: str | None, show_tensors: bool,
            layerwise_data: Path | None, precision: str, sample_data: Path | None, as_json: bool) -> None:
    """Describe MODEL (.tflite or .onnx): ops and versions, tensors, quantization, size, memory.

    With --profile or --runtime, every problem that target has with the model is listed and the
    command exits non-zero (4), so it can gate a CI job.

    \b
    Examples:
      edgekit inspect out/pixel-8/model.tflite
      edgekit inspect pose_landmark_full.tflite --runtime 2.14 --json
      edgekit inspect model.tflite --profile arduino-nano-33-ble-sense
      edgekit inspect model.onnx --profile pixel-8      # ops the TFLite writer cannot translate
      edgekit inspect det.onnx --layerwise cal.npz      # which layer loses accuracy in int8
    """
    if layerwise_data is not None:
        return run_guarded(lambda: _layerwise(model, layerwise_data, sample_data, precision, as_json), as_json)

    def body():
        from converters.model_inspect import inspect_file, issues_error
        from edgekit.core.profiles import load_profile

        profile = load_profile(profile_id) if profile_id else None
        report = inspect_file(model, profile, runtime)
        if as_json:
            emit_json(report)
        else:
            _print(report, show_tensors)
        if report["issues"]:
            raise issues_error(report)
    run_guarded(body, as_json)


def _layerwise(model: Path, cal_path: Path, sample_path: Path | None, precision: str, as_json: bool) -> None:
    from converters.data import load_dataset
    from converters.onnx_pipeline import inspect_onnx
    from converters.tflite.layerwise import compare_layers, first_drops
    from edgekit.core.errors import UsageError

    if model.suffix.lower() != ".onnx":
        raise UsageError("--layerwise needs the ONNX source model (it quantizes it and compares layers)",
                         hint="Pass the .onnx file the .tflite was converted from.")
    names = [i["name"] for i in inspect_onnx(model)["inputs"]]
    cal = load_dataset(cal_path, names, 200).inputs
    sample = load_dataset(sample_path, names, 1).inputs if sample_path else {k: v[:1] for k, v in cal.items()}
    shapes = {k: [1, *v.shape[1:]] for k, v in cal.items()}
    kind = "int16x8" if precision == "int16x8" else "int8-full"
    rows = compare_layers(model, cal, sample, precision=kind, input_shapes=shapes)
    drops = first_drops(rows, below=0.99)
    if as_json:
        return emit_json({"model": str(model), "precision": precision, "layers": rows, "first_drops": drops})
    shown = [{**r, "cosine": f"{r['cosine']:.5f}", "rel_max_diff": f"{r['rel_max_diff']:.4f}",
              "range": f"{r['range'][0]:.3g}..{r['range'][1]:.3g}"} for r in rows]
    click.echo(table(shown, ["index", "op", "tensor", "cosine", "rel_max_diff", "range"]))
    click.echo(f"{len(rows)} layers compared ({precision}); first below cosine 0.99: "
               + (", ".join(f"#{r['index']} {r['op']} {r['tensor']}" for r in drops[:3]) or "none"))


def _print(r: dict, show_tensors: bool) -> None:
    click.echo(f"{r['name']}: {r['format']}, {r['size_bytes']} bytes, weights {r['weights_bytes']} bytes")
    click.echo(table(r["ops"], ["op", "version", "count"] if r["format"] == "tflite" else ["op", "count"]))
    io = [{"io": kind, **t, "quantization": _q(t.get("quantization"))}
          for kind in ("inputs", "outputs") for t in r[kind]]
    click.echo(table(io, ["io", "name", "shape", "dtype", "quantization"]))
    if r["format"] == "tflite":
        m = r["memory"]
        click.echo(f"memory ({m['word_bits']}-bit): tensor arena ~{m['arena_bytes']} bytes "
                   f"(activations {m['activations_bytes']}, bookkeeping {m['persistent_bytes']}), "
                   f"peak ~{m['peak_memory_bytes']} bytes with the model in memory")
        if r["custom_ops"]:
            click.echo(f"custom ops: {', '.join(r['custom_ops'])}")
        if show_tensors:
            rows = [{**t, "quantization": _q(t.get("quantization"))} for t in r["tensors"]]
            click.echo(table(rows, ["index", "name", "shape", "dtype", "bytes", "constant", "quantization"]))
    for i in r["issues"]:
        click.secho(f"problem: {i['where']}: {i['reason']}", fg="yellow")


def _q(q: dict | None) -> str:
    if not q:
        return ""
    if "axis" in q:
        return f"per-axis {q['axis']} x{q['channels']} scale {q['scale_min']:.3g}..{q['scale_max']:.3g}"
    return f"scale {q['scale']:.4g} zp {q['zero_point']}"


@click.command("export")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["c-array"]), default="c-array", show_default=True)
@click.option("--profile", "-p", "profile_id", required=True, help="A tflite-micro profile, e.g. arduino-nano-33-ble-sense.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("export"), show_default=True)
@click.option("--name", default=None, help="C identifier prefix (default: the file name).")
@json_option
def export(model: Path, fmt: str, profile_id: str, out: Path, name: str | None, as_json: bool) -> None:
    """Export MODEL.tflite for TensorFlow Lite Micro: NAME_model_data.{h,c}.

    The source holds the model as a 16-byte aligned C array; the header declares it, defines
    NAME_TENSOR_ARENA_SIZE (a 32-bit estimate with margin, checked against the profile's RAM
    budget) and an inline NAME_register_ops() adding exactly the ops the model uses to a
    tflite::MicroMutableOpResolver. Nothing is written if the model does not fit the profile.

    \b
    Examples:
      edgekit convert model.onnx -p arduino-nano-33-ble-sense --calibration cal.npz --validation val.npz
      edgekit export out/arduino-nano-33-ble-sense/model.tflite -p arduino-nano-33-ble-sense --name kws
    """
    def body():
        from converters.tflite.micro import export_c_array
        from edgekit.core.profiles import load_profile

        result = export_c_array(model, load_profile(profile_id), out, name)
        if as_json:
            return emit_json(result)
        click.echo(f"wrote {result['header']} and {result['source']} ({result['model_bytes']} model bytes)")
        click.echo(f"ops: {', '.join(o['op'] for o in result['ops'])}")
        click.echo(f"tensor arena: ~{result['arena']['arena_bytes']} bytes estimated, "
                   f"{result['recommended_arena_bytes']} recommended, budget {result['ram_budget_bytes']}")
    run_guarded(body, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(inspect)
    cli.add_command(export)
