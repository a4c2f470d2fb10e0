"""Drift statistics: a reference distribution made at convert time, a compact on-device sketch,
and the Population Stability Index (PSI) between them. numpy only; no I/O.

Reference (``drift.json`` in the bundle, schema ``edgekit.drift/1``), from the validation data::

    {"schema": "edgekit.drift/1", "samples": N,
     "inputs":  {name: {"edges": [...9 inner decile edges...], "ref": [10 proportions],
                        "mean": m, "std": s, "min": lo, "max": hi}},
     "outputs": {name: {"classes": K, "ref": [K proportions of the argmax class]}}}

The sketch keeps, per input, count/sum/sum of squares/min/max and counts per reference bin (the
values of a sample are strided down to at most ``max_values``), and per output a histogram of the
argmax class over the last axis. ``snapshot()`` gives summary statistics and PSI per tensor
(PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant drift: the usual reading).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .errors import BundleError

SCHEMA = "edgekit.drift/1"
MEMBER = "drift.json"
BINS = 10
EPS = 1e-4


def psi(ref: np.ndarray | list, counts: np.ndarray | list) -> float | None:
    """PSI of observed ``counts`` against reference proportions ``ref`` (None without data)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    p = np.clip(np.asarray(ref, dtype=np.float64), EPS, None)
    q = np.clip(counts / total, EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _flat(values: np.ndarray, max_values: int) -> np.ndarray:
    flat = np.asarray(values).reshape(-1)
    if flat.size > max_values:
        flat = flat[:: math.ceil(flat.size / max_values)]
    return flat.astype(np.float64, copy=False)


def reference(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], bins: int = BINS) -> dict:
    """The reference distribution of validation ``inputs`` and the model's ``outputs`` on them."""
    ref: dict = {"schema": SCHEMA, "samples": int(min(len(v) for v in inputs.values())), "inputs": {},
                 "outputs": {}}
    for name, arr in inputs.items():
        flat = np.asarray(arr, dtype=np.float64).reshape(-1)
        edges = np.unique(np.quantile(flat, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, flat, side="right"), minlength=len(edges) + 1)
        ref["inputs"][name] = {"edges": edges.tolist(), "ref": (counts / counts.sum()).tolist(),
                               "mean": float(flat.mean()), "std": float(flat.std()), "min": float(flat.min()),
                               "max": float(flat.max())}
    for name, arr in outputs.items():
        arr = np.asarray(arr)
        if arr.ndim < 2 or arr.shape[-1] < 2:
            continue  # not a class score vector: no class histogram
        k = arr.shape[-1]
        counts = np.bincount(arr.reshape(-1, k).argmax(axis=1), minlength=k)
        ref["outputs"][name] = {"classes": int(k), "ref": (counts / counts.sum()).tolist()}
    return ref


def validate_reference(obj) -> dict:
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise BundleError(f"drift reference is not {SCHEMA}")
    try:
        for spec in obj["inputs"].values():
            if len(spec["ref"]) != len(spec["edges"]) + 1:
                raise ValueError("ref must have one more entry than edges")
        for spec in obj["outputs"].values():
            if len(spec["ref"]) != spec["classes"]:
                raise ValueError("ref must have one entry per class")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BundleError(f"drift reference is malformed: {exc}") from None
    return obj


class Sketch:
    """Running per-input statistics and per-output class histograms against a reference."""

    def __init__(self, ref: dict, max_values: int = 1024) -> None:
        self.ref, self.max_values = validate_reference(ref), max_values
        self._edges = {n: np.asarray(s["edges"], dtype=np.float64) for n, s in ref["inputs"].items()}
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.samples = 0
        self._in = {n: {"n": 0, "sum": 0.0, "sumsq": 0.0, "min": math.inf, "max": -math.inf,
                        "counts": np.zeros(len(e) + 1, np.int64)} for n, e in self._edges.items()}
        self._out = {n: np.zeros(s["classes"], np.int64) for n, s in self.ref["outputs"].items()}

    def update(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        with self._lock:
            self.samples += 1
            for name, st in self._in.items():
                if name not in inputs:
                    continue
                flat = _flat(inputs[name], self.max_values)
                if not flat.size:
                    continue
                st["n"] += flat.size
                st["sum"] += float(flat.sum())
                st["sumsq"] += float(np.dot(flat, flat))
                st["min"], st["max"] = min(st["min"], float(flat.min())), max(st["max"], float(flat.max()))
                st["counts"] += np.bincount(np.searchsorted(self._edges[name], flat, side="right"),
                                            minlength=len(st["counts"]))
            for name, hist in self._out.items():
                arr = outputs.get(name)
                if arr is not None and arr.shape[-1:] == (len(hist),):
                    hist += np.bincount(np.asarray(arr).reshape(-1, len(hist)).argmax(axis=1), minlength=len(hist))

    def snapshot(self, reset: bool = True) -> dict:
        """Telemetry's ``drift`` field: summary statistics, histograms and PSI since the last snapshot."""
        with self._lock:
            out: dict = {"samples": self.samples, "inputs": {}, "outputs": {}}
            for name, st in self._in.items():
                if st["n"]:
                    mean = st["sum"] / st["n"]
                    std = math.sqrt(max(st["sumsq"] / st["n"] - mean * mean, 0.0))
                    out["inputs"][name] = {"mean": round(mean, 6), "std": round(std, 6), "min": st["min"],
                                           "max": st["max"], "hist": st["counts"].tolist(),
                                           "psi": round(psi(self.ref["inputs"][name]["ref"], st["counts"]), 6)}
            for name, hist in self._out.items():
                if hist.sum():
                    out["outputs"][name] = {"hist": hist.tolist(),
                                            "psi": round(psi(self.ref["outputs"][name]["ref"], hist), 6)}
            if reset:
                self._reset()
            return out
