"""The parity gate: run a candidate artifact and its fp32 reference on the same validation data
(onnxruntime, one thread, same process) and decide whether the candidate may be released.

Measures output parity (``edgekit.core.parity``), the task metric of a declared task
(``converters.tasks``), task accuracy when labels are given, single-sample latency, and size;
thresholds come from the hardware profile's budgets/validation.

Decision rule (ADR 0007): for the output a detection/text task is declared on, the task metric
against ``validation.min_task_score`` decides and the element-wise figures are reported only;
every other output, and that one too when the validation data cannot exercise the task, is
judged element-wise. ``entry["criteria"]`` says which criterion decided for each output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core import parity
from edgekit.core.errors import ModelError, UsageError
from edgekit.core.profiles import Profile

from .data import Dataset
from .tasks import DEFAULT_MIN_TASK_SCORE, TaskSpec, score

LATENCY_RUNS = 50
# A candidate counts as slower than fp32 only beyond measurement noise: medians of 50 single-sample
# runs on a busy machine move by ~10 % between back-to-back measurements of the same model.
SLOWER_MARGIN = 1.10


def slower(latency_ms: float, fp32_ms: float) -> bool:
    return latency_ms > fp32_ms * SLOWER_MARGIN


@dataclass
class Candidate:
    name: str
    path: Path
    session: object
    latency_ms: float
    outputs: dict[str, np.ndarray]   # on the validation data, computed once at load

    @classmethod
    def load(cls, name: str, path: Path, data: Dataset) -> "Candidate":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the {name} artifact: {exc}") from None
        cand = cls(name, path, sess, 0.0, {})
        cand.latency_ms = cand.measure_latency(data)
        cand.outputs = cand.run_all(data)
        return cand

    def run_all(self, data: Dataset) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        rows: dict[str, list] = {n: [] for n in names}
        for i in range(len(data)):
            outs = self.session.run(names, {k: v[i:i + 1] for k, v in data.inputs.items()})
            for n, o in zip(names, outs):
                rows[n].append(o)
        return {n: np.concatenate(v, axis=0) for n, v in rows.items()}

    def measure_latency(self, data: Dataset) -> float:
        sample = {k: v[:1] for k, v in data.inputs.items()}
        for _ in range(5):
            self.session.run(None, sample)
        times = []
        for _ in range(LATENCY_RUNS):
            t0 = time.perf_counter()
            self.session.run(None, sample)
            times.append((time.perf_counter() - t0) * 1000)
        return float(np.median(times))


def min_task_score(profile: Profile) -> float:
    return float(profile.validation.get("min_task_score", DEFAULT_MIN_TASK_SCORE))


def evaluate(cand: Candidate, reference: Candidate, data: Dataset, profile: Profile,
             task: TaskSpec | None = None) -> dict:
    v = profile.validation
    got, ref = cand.outputs, reference.outputs
    outputs = {name: parity.compare(got[name], ref[name], v["atol"], v["rtol"]).as_dict() for name in ref}
    entry = {"precision": cand.name, "bytes": cand.path.stat().st_size, "latency_ms": round(cand.latency_ms, 4),
             "reference_latency_ms": round(reference.latency_ms, 4),
             "speedup": round(reference.latency_ms / max(cand.latency_ms, 1e-9), 3), "outputs": outputs}
    if data.labels is not None:
        first = next(iter(ref))
        acc = float(np.mean(np.argmax(got[first], axis=-1) == data.labels))
        ref_acc = float(np.mean(np.argmax(ref[first], axis=-1) == data.labels))
        entry.update(accuracy=round(acc, 5), reference_accuracy=round(ref_acc, 5),
                     accuracy_drop=round(ref_acc - acc, 5))
    if task is not None:
        threshold = v["min_top1_agreement"] if task.name == "classification" else min_task_score(profile)
        metric = score(task, got, ref, threshold, labels=data.labels,
                       max_accuracy_drop=profile.budgets["max_accuracy_drop"])
        if metric is not None:
            metric["decides"] = task.decides_alone and metric["decidable"]
            entry["task"] = metric
    return entry


def _task_note(t: dict) -> str:
    got = "n/a" if t["score"] is None else f"{t['score']:.4f}"
    note = f"{t['task']}: {t['metric']} {got} vs min {t['threshold']} over {t['samples']} samples"
    if "accuracy_drop" in t:       # labelled classification (ADR 0014)
        note += f", accuracy drop {t['accuracy_drop']:.4f} vs max {t['max_accuracy_drop']}"
    return note


def gate_reasons(entry: dict, profile: Profile, *, allow_slower: bool) -> list[str]:
    """Why ``entry`` may not be released (empty = it may): :func:`fidelity_reasons`, then size and
    speed (which no calibration changes)."""
    b = profile.budgets
    reasons = fidelity_reasons(entry, profile)
    if entry["bytes"] > b["max_model_bytes"]:
        reasons.append(f"size {entry['bytes']} bytes > budget {b['max_model_bytes']}")
    if not allow_slower and slower(entry["latency_ms"], entry["reference_latency_ms"]):
        reasons.append(f"slower than fp32 ({entry['latency_ms']:.3f} ms vs {entry['reference_latency_ms']:.3f} ms)")
    return reasons


def fidelity_reasons(entry: dict, profile: Profile) -> list[str]:
    """How ``entry``'s answers differ from fp32 beyond the budgets (outputs, task metric, accuracy);
    also records ``entry["criteria"]``: per output, which criterion decided and the element-wise
    failures that did not."""
    b, v = profile.budgets, profile.validation
    task = entry.get("task")
    reasons: list[str] = []
    criteria: dict[str, dict] = {}
    for name, m in entry["outputs"].items():
        pm = parity.ParityMetrics(**m)
        elementwise = parity.passes(pm, min_cosine=v["min_cosine"], min_top1_agreement=v["min_top1_agreement"],
                                    max_rel_error=b["max_output_rel_error"])
        on_task = task is not None and task["output"] == name
        if on_task and task["decides"]:
            criteria[name] = {"decided_by": "task metric", "task": _task_note(task), "passed": task["passed"],
                              "elementwise_not_deciding": elementwise}
            if not task["passed"]:
                reasons.append(f"{name}: {_task_note(task)}")
            continue
        decided = "element-wise"
        if on_task and not task["decidable"]:
            decided += f" (task metric undecidable on this data: {_task_note(task)})"
        elif on_task:
            decided += f" + {_task_note(task)}"
        criteria[name] = {"decided_by": decided, "passed": not elementwise}
        reasons += [f"{name}: {r}" for r in elementwise]
    entry["criteria"] = criteria
    judged = task is not None and "accuracy_drop" in task and task["output"] == next(iter(entry["outputs"]))
    if entry.get("accuracy_drop", 0) > b["max_accuracy_drop"] and not judged:  # else the task note says it
        reasons.append(f"accuracy drop {entry['accuracy_drop']:.4f} > budget {b['max_accuracy_drop']}")
    return reasons


def choose_precisions(profile: Profile, precision: str, available, kind: str, *, fp32_fallback: bool,
                      explicit_only=()) -> list[str]:
    """Candidates to try, in order: ``auto`` = the profile's preferred precisions this pipeline can
    build, except ``explicit_only`` ones (plus fp32 last when ``fp32_fallback``); a forced precision
    must be buildable and allowed by the profile."""
    if precision == "auto":
        cands = [p for p in profile.precisions if p in available and p not in explicit_only]
        if fp32_fallback and "fp32" not in cands:
            cands.append("fp32")
        return cands or ["fp32"]
    if precision not in available:
        raise UsageError(f"precision {precision!r} is not available for {kind} profiles; use one of "
                         f"{', '.join(available)} or auto")
    if precision not in profile.precisions:
        raise UsageError(f"profile {profile.id} does not allow precision {precision!r}; it allows "
                         f"{', '.join(profile.precisions)}")
    return [precision]
