"""Batch mode: run the installed model over a folder of ``.npy`` / ``.npz`` files, write one ``.npz``.

Input files, read in name order:

* ``x.npy``  — one array for a single-input model; axis 0 is the sample axis;
* ``x.npz``  — one array per model input name (all with the same number of samples).

Samples are fed in batches the model accepts: the whole file when the input's batch dimension
is symbolic, else chunks of the fixed batch size (a remainder that does not fit is an error).
The output file holds ``<file stem>/<output name>`` arrays with the samples of that file,
written atomically (nothing half-written on any error). Does not touch MQTT or installs.
"""

from __future__ import annotations

import io
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core.atomic import atomic_writer
from edgekit.core.errors import ModelError, UsageError

from .runtime import Runner


@dataclass
class BatchSummary:
    files: int = 0
    samples: int = 0
    seconds: float = 0.0
    inference_seconds: float = 0.0
    outputs: dict[str, list[int]] = field(default_factory=dict)

    def as_dict(self, out: Path, model: dict) -> dict:
        return {"out": str(out), **model, "files": self.files, "samples": self.samples,
                "seconds": round(self.seconds, 4), "inference_seconds": round(self.inference_seconds, 4),
                "throughput_per_s": round(self.samples / self.seconds, 2) if self.seconds else None,
                "outputs": self.outputs}


def list_inputs(in_dir: Path) -> list[Path]:
    if not in_dir.is_dir():
        raise UsageError(f"input folder {in_dir} does not exist", hint="Pass a folder of .npy/.npz files.")
    files = sorted(p for p in in_dir.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise UsageError(f"{in_dir} holds no .npy or .npz files",
                         hint="Save inputs with numpy.save (one input) or numpy.savez (by input name).")
    return files


def load_inputs(path: Path, manifest: dict) -> dict[str, np.ndarray]:
    names = [t["name"] for t in manifest["inputs"]]
    try:
        if path.suffix == ".npy":
            if len(names) != 1:
                raise UsageError(f"{path.name}: the model has inputs {names}; use an .npz keyed by input name")
            return {names[0]: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path.name} is not a readable numpy file: {exc}") from None
    if missing := [n for n in names if n not in arrays]:
        raise UsageError(f"{path.name} lacks model input(s) {missing}; it holds {sorted(arrays)}")
    return {n: arrays[n] for n in names}


def _batch_size(manifest: dict) -> int | None:
    dims = [t["shape"][0] if t["shape"] else None for t in manifest["inputs"]]
    fixed = [d for d in dims if isinstance(d, int) and d > 0]
    return min(fixed) if fixed else None


def run_batch(runner: Runner, manifest: dict, in_dir: Path, out_file: Path,
              progress: Callable[[int, int, str], None] | None = None) -> BatchSummary:
    files = list_inputs(Path(in_dir))
    fixed = _batch_size(manifest)
    want = {t["name"]: np.dtype(t["dtype"]) for t in manifest["inputs"]}
    summary, results = BatchSummary(), {}
    t_start = time.perf_counter()
    for i, path in enumerate(files):
        inputs = load_inputs(path, manifest)
        counts = {len(a) if a.ndim else 0 for a in inputs.values()}
        if len(counts) != 1 or 0 in counts:
            raise UsageError(f"{path.name}: every input needs the same, non-zero number of samples on axis 0")
        n = counts.pop()
        step = fixed or n
        if n % step:
            raise UsageError(f"{path.name}: {n} samples do not split into the model's fixed batch of {step}")
        inputs = {k: np.ascontiguousarray(a, dtype=want[k]) for k, a in inputs.items()}
        chunks: dict[str, list[np.ndarray]] = {}
        for s in range(0, n, step):
            t0 = time.perf_counter()
            try:
                out = runner.run({k: a[s:s + step] for k, a in inputs.items()})
            except ModelError as exc:
                raise ModelError(f"{path.name}, samples {s}-{s + step - 1}: {exc.message}") from None
            summary.inference_seconds += time.perf_counter() - t0
            for k, v in out.items():
                chunks.setdefault(k, []).append(v)
        for k, parts in chunks.items():
            results[f"{path.stem}/{k}"] = np.concatenate(parts, axis=0)
        summary.files, summary.samples = summary.files + 1, summary.samples + n
        if progress:
            progress(i + 1, len(files), path.name)
    buf = io.BytesIO()
    np.savez(buf, **results)
    with atomic_writer(out_file) as fh:
        fh.write(buf.getbuffer())
    summary.seconds = time.perf_counter() - t_start
    summary.outputs = {k: list(v.shape) for k, v in results.items()}
    return summary


def stderr_progress(done: int, total: int, name: str) -> None:
    """A one-line progress bar on stderr (the device has no click/tqdm)."""
    width = 30
    filled = width * done // total
    end = "\n" if done == total else ""
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name[:40]:40}{end}")
    sys.stderr.flush()
