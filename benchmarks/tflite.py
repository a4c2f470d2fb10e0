"""TFLite benchmark: ONNX -> TFLite conversion (no TensorFlow) per model and precision, against
onnxruntime fp32 and the fp32 TFLite model measured in the same run; mediapipe inspect/run counts.

What is measured, per model (digits sample, nudenet 320n = YOLOv8n, PP-OCRv4 det, PP-OCR cls):

* each precision goes through the product pipeline ``converters.tflite_pipeline.convert_tflite``
  (the same parity gate and report as ``edgekit convert``): fp32 / fp16 / int8-static for the
  ``pixel-8`` profile, int8-dynamic (weight-only int8), int16x8 and int8-mixed (float stem + int8) too,
  int8-full (int8 I/O) for ``coral-dev-board``; each model with its declared task (``TASKS``);
* conversion time (the writer, incl. calibration for int8), artifact size, latency (median of 50
  single-sample runs, ai-edge-litert with XNNPACK, 1 thread) vs fp32 TFLite and vs onnxruntime
  fp32 (1 thread), both measured in the same process; parity vs onnxruntime on the validation
  inputs (max abs diff, max abs diff / output scale, cosine, top-1) and the gate's verdict.
* mediapipe 0.10.21: how many bundled .tflite files ``edgekit inspect`` reads, and how many run in
  the agent's ``TfliteRunner`` (random input of the declared shape/dtype, finite outputs).

Inputs are synthetic: drawn-face scenes for nudenet (``converters.synthetic.people_scene``, as the
ONNX real-model tests use), rendered text for PP-OCR (``text_scene`` pages for det, normalised like
RapidOCR; ``text_crops`` line crops *with orientation labels* for cls, ADR 0014); the digits sample
ships its own data. ``data_study`` shows why the earlier stroke-row data (``text_lines``) made both
PP-OCR models look unquantizable: fp32 itself is unsure on it (cls probabilities scatter around 0.5,
det maps sit near the 0.3 threshold), and int8-static judged on it fails where on rendered text it
passes.

Optional, outside CI: ``onnx2tf`` (ONNX -> TensorFlow -> TFLite) on the same four models, when a
throwaway venv exists at ``$ONNX2TF_VENV`` (default ``/tmp/o2tvenv``; see benchmarks/README.md):
conversion time and fp32 parity with onnxruntime. Without the venv the section is marked skipped
with the reason and keeps the numbers (and command) of the last run that measured them.

Reproduce::

    .venv/bin/python benchmarks/tflite.py               # writes benchmarks/results/tflite.json
    .venv/bin/python benchmarks/tflite.py --models digits ppocr-cls --skip onnx2tf study --out /tmp/tflite.json
    ONNX2TF_VENV=/tmp/o2tvenv .venv/bin/python benchmarks/tflite.py    # + onnx2tf (venv: see benchmarks/README.md)

Needs the wheels in .cache/wheels (scripts/setup.sh). Takes a few minutes on a 2-core VM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# This file is named tflite.py: its folder must not shadow the `tflite` schema package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from converters.data import Dataset, load_dataset  # noqa: E402
from converters.wheel_models import extract, wheel_cache  # noqa: E402
from converters.tflite_pipeline import convert_tflite  # noqa: E402
from edgekit.core.errors import ModelError, ParityError  # noqa: E402
from edgekit.core.profiles import load_profile  # noqa: E402
from converters.synthetic import people_scene, text_crops, text_lines, text_scene, to_nchw  # noqa: E402

RUNS = [("pixel-8", "fp32"), ("pixel-8", "fp16"), ("pixel-8", "int8-dynamic"), ("pixel-8", "int8-static"),
        ("coral-dev-board", "int8-full"), ("pixel-8", "int16x8"), ("pixel-8", "int8-mixed")]


# The task each model is declared with, as a user would run `edgekit convert --task ...` (ADR 0007).
TASKS = {"digits": "classification", "nudenet-320n": "detection-yolo", "ppocrv4-det": "text-mask",
         "ppocr-cls": "classification"}


def faces(n: int, seed: int) -> np.ndarray:
    """Drawn-face scenes nudenet detects (FACE_*, scores 0.4-0.7), as [n, 3, 320, 320] in [0, 1]:
    the detection-yolo metric needs images where fp32 finds a box (blobs give weak, flaky ones)."""
    return np.stack([people_scene(seed + i).transpose(2, 0, 1) for i in range(n)]).astype(np.float32) / 255.0


def scenes(n: int, seed: int) -> np.ndarray:
    """Rendered text pages for PP-OCRv4 det, normalised as RapidOCR's det config (mean = std = 0.5)."""
    return to_nchw([text_scene(seed + i) for i in range(n)], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def models(work: Path) -> dict[str, tuple[Path, Dataset, Dataset]]:
    digits = ROOT / "edgekit" / "samples" / "digits"
    crops, labels = text_crops(64, 2)
    return {
        "digits": (digits / "digits_cnn.onnx", load_dataset(digits / "calibration.npz", ["input"]),
                   load_dataset(digits / "validation.npz", ["input"])),
        "nudenet-320n": (extract("nudenet-320n", work),
                         Dataset({"images": faces(16, 100)}), Dataset({"images": faces(24, 0)})),
        "ppocrv4-det": (extract("ppocr-v4-det", work), Dataset({"x": scenes(16, 100)}), Dataset({"x": scenes(8, 0)})),
        "ppocr-cls": (extract("ppocr-cls", work), Dataset({"x": text_crops(32, 1)[0]}), Dataset({"x": crops}, labels)),
    }


def stroke_rows(name: str) -> tuple[Dataset, Dataset]:
    """The earlier PP-OCR data (``text_lines`` stroke rows, every other one flipped), for ``data_study``."""
    if name == "ppocrv4-det":
        return Dataset({"x": text_lines(16, 320, 320, 1, True)}), Dataset({"x": text_lines(8, 320, 320, 2, True)})
    return (Dataset({"x": text_lines(32, 48, 192, 1, True)}),
            Dataset({"x": text_lines(16, 48, 192, 2, True)}, np.arange(16) % 2))


def _fp32_confidence(name: str, src: Path, val: Dataset) -> dict:
    from converters.tflite.verify import run_onnx

    (ref,) = run_onnx(src, val.inputs).values()
    if name == "ppocr-cls":    # 180-degree probability: how far from a coin flip, and right vs the flip labels
        return {"median_abs_p180_minus_half": round(float(np.median(np.abs(ref[:, 1] - 0.5))), 4),
                "fp32_accuracy_vs_labels": round(float(np.mean(ref.argmax(1) == val.labels)), 4)}
    text = ref > 0.3           # det: share of text pixels within 0.2 of the 0.3 threshold
    return {"text_fraction": round(float(text.mean()), 4),
            "text_pixels_near_threshold": round(float(((ref > 0.1) & (ref < 0.5)).sum() / max(text.sum(), 1)), 4)}


def data_study(all_models: dict, work: Path) -> list[dict]:
    """PP-OCR det/cls: fp32 confidence and the int8-static gate on stroke rows vs rendered text."""
    rows = []
    for name in ("ppocrv4-det", "ppocr-cls"):
        src, cal, val = all_models[name]
        for kind, (c, v) in (("stroke rows (text_lines)", stroke_rows(name)), ("rendered text", (cal, val))):
            try:
                entry = convert_tflite(src, load_profile("pixel-8"), work / "study", precision="int8-static",
                                       calibration=c, validation=v, task=TASKS[name])["candidates"][-1]
            except ParityError as exc:
                entry = exc.details["report"][-1]
            row = {"model": name, "data": kind, "samples": len(v), **_fp32_confidence(name, src, v),
                   "int8_static_passed": entry["passed"], "task": entry.get("task"), "reasons": entry["reasons"]}
            rows.append(row)
            print(f"study {name:12s} {kind:26s} pass={row['int8_static_passed']!s:5s} "
                  f"score={(row['task'] or {}).get('score')} {_fp32_confidence(name, src, v)}", flush=True)
    return rows


def _summary(entry: dict) -> dict:
    outs = entry["outputs"]
    return {
        "precision": entry["precision"], "passed": entry["passed"], "reasons": entry["reasons"],
        "convert_s": entry["convert_s"], "bytes": entry["bytes"], "latency_ms": entry["latency_ms"],
        "tflite_fp32_latency_ms": entry["tflite_fp32_latency_ms"], "ort_fp32_latency_ms": entry["reference_latency_ms"],
        "speedup_vs_tflite_fp32": entry["speedup_vs_tflite_fp32"], "speedup_vs_ort_fp32": entry["speedup"],
        "max_abs_diff": max(m["max_abs_diff"] for m in outs.values()),
        "max_rel_diff": max(m["relative_max_diff"] for m in outs.values()),
        "min_cosine": min(m["cosine"] for m in outs.values()),
        "top1_agreement": next((m["top1_agreement"] for m in outs.values() if m["top1_agreement"] is not None), None),
        **({"accuracy_drop": entry["accuracy_drop"]} if "accuracy_drop" in entry else {}),
        "task": entry.get("task"), "criteria": entry.get("criteria"),
        **({"mixed": entry["mixed"]} if "mixed" in entry else {}),
    }


def _deciders(row: dict) -> str:
    """Which criterion decided, per output, with the task score where the task metric decided."""
    parts = []
    for out, c in (row.get("criteria") or {}).items():
        score = f" {c['task']}" if c.get("decided_by") == "task metric" and c.get("task") else ""
        parts.append(f"{out}:{c['decided_by']}{score}")
    return "; ".join(parts) or "-"


def bench_model(name: str, src: Path, cal: Dataset, val: Dataset, work: Path) -> dict:
    result = {"model": name, "task": TASKS[name], "source_bytes": src.stat().st_size, "precisions": []}
    for profile_id, precision in RUNS:
        profile = load_profile(profile_id)
        t0 = time.perf_counter()
        try:
            report = convert_tflite(src, profile, work / name, precision=precision, calibration=cal, validation=val,
                                    task=TASKS[name])
            entry = report["candidates"][-1]
        except ParityError as exc:       # the gate refused it: still record what was measured
            entry = exc.details["report"][-1]
        except ModelError as exc:
            result["precisions"].append({"precision": precision, "profile": profile_id, "error": exc.message})
            continue
        row = {"profile": profile_id, **_summary(entry), "pipeline_s": round(time.perf_counter() - t0, 2)}
        result["precisions"].append(row)
        print(f"{name:14s} {precision:12s} pass={row['passed']!s:5s} convert={row['convert_s']:.2f}s "
              f"size={row['bytes']:>9d} lat={row['latency_ms']:.3f}ms (fp32 tflite {row['tflite_fp32_latency_ms']:.3f}, "
              f"ort {row['ort_fp32_latency_ms']:.3f}) rel={row['max_rel_diff']:.2e} cos={row['min_cosine']:.5f} "
              f"decided={_deciders(row)}",
              flush=True)
    return result


ONNX2TF_VENV = Path(os.environ.get("ONNX2TF_VENV", "/tmp/o2tvenv"))
ONNX2TF_INSTALL = ("python3.11 -m venv /tmp/o2tvenv && /tmp/o2tvenv/bin/pip install onnx2tf tensorflow-cpu tf-keras "
                   "onnx-graphsurgeon sng4onnx psutil onnxruntime onnx ai-edge-litert")


def _align(got: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """onnx2tf's output in the ONNX layout when a layout change explains the shape (NHWC, or 3-D swapped)."""
    if got.shape == ref.shape:
        return got
    for perm in ((0, 3, 1, 2), (0, 2, 1)):
        if got.ndim == len(perm) and got.transpose(perm).shape == ref.shape:
            return got.transpose(perm)
    return None


def _onnx2tf_one(name: str, src: Path, val: Dataset, work: Path) -> dict:
    import subprocess

    from converters.tasks import resolve, score
    from converters.tflite.runtime import interpreter
    from converters.tflite.verify import run_onnx

    out = work / "onnx2tf" / name
    out.mkdir(parents=True, exist_ok=True)
    src = Path(shutil.copy(src, out / src.name))     # onnx2tf's onnxsim step rewrites its input file in place
    (iname,) = list(val.inputs)
    shape = ",".join(str(d) for d in (1, *val.inputs[iname].shape[1:]))
    cmd = [str(ONNX2TF_VENV / "bin" / "onnx2tf"), "-i", str(src), "-o", str(out), "-ois", f"{iname}:{shape}"]
    # onnx2tf fetches sample images from GitHub for its self-check of 4-D 3-channel inputs unless this
    # file is in the working directory: give it ours (drawn scenes, no network at run time).
    sample = work / "calibration_image_sample_data_20x128x128x3_float32.npy"
    if not sample.exists():
        np.save(sample, np.stack([people_scene(i, 128) for i in range(20)]).astype(np.float32) / 255.0)
    env = {**os.environ, "PATH": f"{ONNX2TF_VENV / 'bin'}:{os.environ.get('PATH', '')}"}   # it runs `onnxsim`
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=work, env=env)
    row = {"model": name, "convert_s": round(time.perf_counter() - t0, 2), "exit_code": proc.returncode,
           "command": " ".join(["onnx2tf", "-i", src.name, "-o", "OUT", "-ois", f"{iname}:{shape}"])}
    files = sorted(out.glob("*_float32.tflite"))
    if proc.returncode or not files:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr).splitlines()
        row.update(ok=False, error=[ln for ln in lines if "ERROR" in ln or ln.startswith("ValueError")][:4]
                   or lines[-3:])
        return row
    ref = run_onnx(src, val.inputs)
    interp = interpreter(files[0].read_bytes(), "auto", threads=1)
    (inp,) = interp.get_input_details()
    outs = interp.get_output_details()
    x = val.inputs[iname]
    x = x.transpose(0, 2, 3, 1) if list(inp["shape"]) != [1, *x.shape[1:]] and x.ndim == 4 else x
    rows: dict[str, list] = {d["name"]: [] for d in outs}
    for i in range(len(x)):
        interp.set_tensor(inp["index"], np.ascontiguousarray(x[i:i + 1], dtype=np.float32))
        interp.invoke()
        for d in outs:
            rows[d["name"]].append(interp.get_tensor(d["index"]).copy())
    got = [np.concatenate(v) for v in rows.values()]
    matched = {}
    for rname, r in ref.items():       # onnx2tf renames outputs: match by shape (after layout changes)
        for g in got:
            a = _align(g, r)
            if a is not None:
                matched[rname] = a
                break
    if len(matched) != len(ref):
        row.update(ok=False, error=f"outputs {[list(g.shape) for g in got]} do not match {[list(r.shape) for r in ref.values()]}")
        return row
    rel = max(float(np.abs(matched[k] - r).max() / max(np.abs(r).max(), 1e-12)) for k, r in ref.items())
    spec = resolve(TASKS[name], ref, val.labels is not None)
    task = score(spec, matched, ref, 0.9, labels=val.labels)
    row.update(ok=True, bytes=files[0].stat().st_size, max_rel_diff=float(f"{rel:.3g}"),
               fp32_parity_1e4=rel <= 1e-4, task=task and {k: task[k] for k in ("metric", "score", "passed")})
    return row


def bench_onnx2tf(all_models: dict, work: Path, previous: dict | None) -> dict:
    """onnx2tf on the same models (fp32 .tflite), or a skip that keeps the last measured numbers."""
    if not (ONNX2TF_VENV / "bin" / "onnx2tf").exists():
        kept = {k: v for k, v in (previous or {}).items() if k not in ("status", "skipped_reason")}
        return {"status": "skipped", "skipped_reason": f"no onnx2tf venv at {ONNX2TF_VENV} (optional, outside CI)",
                "install": ONNX2TF_INSTALL, **kept}
    import subprocess

    versions = subprocess.run([str(ONNX2TF_VENV / "bin" / "python"), "-c",
                               "import onnx2tf, tensorflow as tf; print(onnx2tf.__version__, tf.__version__)"],
                              capture_output=True, text=True).stdout.split()
    rows = []
    for name, (src, _, val) in all_models.items():
        row = _onnx2tf_one(name, src, val, work)
        rows.append(row)
        print(f"onnx2tf {name:14s} ok={row['ok']!s:5s} convert={row['convert_s']:.1f}s "
              f"rel={row.get('max_rel_diff')} task={row.get('task')} {row.get('error', '')}", flush=True)
    return {"status": "measured", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": dict(zip(("onnx2tf", "tensorflow"), versions)), "install": ONNX2TF_INSTALL,
            "venv_bytes": sum(f.stat().st_size for f in ONNX2TF_VENV.rglob("*") if f.is_file()), "models": rows}


def bench_mediapipe(work: Path) -> dict:
    from agent.runtime import TfliteRunner
    from converters.model_inspect import inspect_file

    wheel = wheel_cache() / "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
    rows = []
    with zipfile.ZipFile(wheel) as zf:
        names = [i.filename for i in zf.infolist() if i.filename.endswith(".tflite")]
        for member in names:
            path = work / Path(member).name
            path.write_bytes(zf.read(member))
            row = {"file": Path(member).name, "bytes": path.stat().st_size}
            try:
                t0 = time.perf_counter()
                rep = inspect_file(path)
                row.update(inspect_ok=True, inspect_ms=round((time.perf_counter() - t0) * 1000, 2),
                           ops=sum(o["count"] for o in rep["ops"]), arena_bytes=rep["memory"]["arena_bytes"])
            except ModelError as exc:
                row.update(inspect_ok=False, inspect_error=exc.message)
            try:
                runner = TfliteRunner(path, 1)
                x = {d["name"]: np.random.default_rng(0).random(d["shape"]).astype(d["dtype"]) for d in runner._in}
                t0 = time.perf_counter()
                out = runner.run(x)
                row.update(run_ok=all(np.isfinite(v).all() for v in out.values() if v.dtype.kind == "f"),
                           run_ms=round((time.perf_counter() - t0) * 1000, 2))
            except ModelError as exc:
                row.update(run_ok=False, run_error=exc.message.splitlines()[0][:200])
            rows.append(row)
    return {"files": len(rows), "inspect_passed": sum(r["inspect_ok"] for r in rows),
            "run_passed": sum(r["run_ok"] for r in rows), "models": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tflite.json")
    ap.add_argument("--models", nargs="*", default=["digits", "nudenet-320n", "ppocrv4-det", "ppocr-cls"])
    ap.add_argument("--skip", nargs="*", default=[], choices=["study", "onnx2tf", "mediapipe"])
    args = ap.parse_args()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-tflite-") as tmp:
        work = Path(tmp)
        all_models = models(work)
        results = [bench_model(n, *all_models[n], work) for n in args.models]
        study = previous.get("data_study") if "study" in args.skip else data_study(all_models, work)
        o2t = (previous.get("onnx2tf") if "onnx2tf" in args.skip
               else bench_onnx2tf({n: all_models[n] for n in args.models}, work, previous.get("onnx2tf")))
        mediapipe = previous.get("mediapipe") if "mediapipe" in args.skip else bench_mediapipe(work)
    print(f"mediapipe: inspect {mediapipe['inspect_passed']}/{mediapipe['files']}, "
          f"run {mediapipe['run_passed']}/{mediapipe['files']}")
    import ai_edge_litert
    import onnxruntime

    out = {"benchmark": "tflite", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "onnxruntime": onnxruntime.__version__,
                       "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?")},
           "threads": 1, "models": results, "data_study": study, "onnx2tf": o2t, "mediapipe": mediapipe,
           "elapsed_s": round(time.perf_counter() - t_start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
