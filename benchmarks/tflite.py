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
ONNX real-model tests use), text-like stroke rows for
PP-OCR; the digits sample ships its own data.

Reproduce::

    .venv/bin/python benchmarks/tflite.py               # writes benchmarks/results/tflite.json
    .venv/bin/python benchmarks/tflite.py --models digits cls --out /tmp/tflite.json

Needs the wheels in .cache/wheels (scripts/setup.sh). Takes a few minutes on a 2-core VM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from converters.synthetic import people_scene, text_lines  # noqa: E402

RUNS = [("pixel-8", "fp32"), ("pixel-8", "fp16"), ("pixel-8", "int8-dynamic"), ("pixel-8", "int8-static"),
        ("coral-dev-board", "int8-full"), ("pixel-8", "int16x8"), ("pixel-8", "int8-mixed")]


# The task each model is declared with, as a user would run `edgekit convert --task ...` (ADR 0007).
TASKS = {"digits": "classification", "nudenet-320n": "detection-yolo", "ppocrv4-det": "text-mask",
         "ppocr-cls": "classification"}


def faces(n: int, seed: int) -> np.ndarray:
    """Drawn-face scenes nudenet detects (FACE_*, scores 0.4-0.7), as [n, 3, 320, 320] in [0, 1]:
    the detection-yolo metric needs images where fp32 finds a box (blobs give weak, flaky ones)."""
    return np.stack([people_scene(seed + i).transpose(2, 0, 1) for i in range(n)]).astype(np.float32) / 255.0


def models(work: Path) -> dict[str, tuple[Path, Dataset, Dataset]]:
    digits = ROOT / "edgekit" / "samples" / "digits"
    return {
        "digits": (digits / "digits_cnn.onnx", load_dataset(digits / "calibration.npz", ["input"]),
                   load_dataset(digits / "validation.npz", ["input"])),
        "nudenet-320n": (extract("nudenet-320n", work),
                         Dataset({"images": faces(16, 100)}), Dataset({"images": faces(24, 0)})),
        "ppocrv4-det": (extract("ppocr-v4-det", work),
                        Dataset({"x": text_lines(16, 320, 320, 1, True)}),
                        Dataset({"x": text_lines(8, 320, 320, 2, True)})),
        "ppocr-cls": (extract("ppocr-cls", work),
                      Dataset({"x": text_lines(32, 48, 192, 1, True)}),
                      Dataset({"x": text_lines(16, 48, 192, 2, True)})),
    }


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
    args = ap.parse_args()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-tflite-") as tmp:
        work = Path(tmp)
        all_models = models(work)
        results = [bench_model(n, *all_models[n], work) for n in args.models]
        mediapipe = bench_mediapipe(work)
    print(f"mediapipe: inspect {mediapipe['inspect_passed']}/{mediapipe['files']}, "
          f"run {mediapipe['run_passed']}/{mediapipe['files']}")
    import ai_edge_litert
    import onnxruntime

    out = {"benchmark": "tflite", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "onnxruntime": onnxruntime.__version__,
                       "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?")},
           "threads": 1, "models": results, "mediapipe": mediapipe,
           "elapsed_s": round(time.perf_counter() - t_start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
