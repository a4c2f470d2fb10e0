"""Rollout plan parsing: waves, abort rules and rate limits (pure functions, no I/O).

Abort rules are ``METRIC>THRESHOLD``:

    failure_rate>5%        failed + timed-out devices / finished devices of the rollout, in percent
    parity_failures>0      devices whose on-device health check (golden vectors) failed
    p95_latency>1.2x       median telemetry p95 of updated devices / their median p95 before the rollout
    drift>0.3              highest ``inference.drift_score`` reported by an updated device

Used by the CLI (to fail early on a typo) and by the rollout engine (to evaluate).
"""

from __future__ import annotations

import math
import re

from edgekit.core.errors import UsageError

METRICS = {"failure_rate": "%", "parity_failures": "", "p95_latency": "x", "drift": ""}
_RULE = re.compile(r"^\s*([a-z0-9_]+)\s*>\s*([0-9]*\.?[0-9]+)\s*(%|x)?\s*$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|min|m|h)\s*$")


def parse_rule(text: str) -> dict:
    m = _RULE.match(text)
    if not m or m.group(1) not in METRICS:
        raise UsageError(f"bad --abort-if {text!r}",
                         hint="Use METRIC>VALUE with METRIC one of failure_rate (e.g. 5%), parity_failures (e.g. 0), "
                              "p95_latency (e.g. 1.2x, vs the previous version) or drift (e.g. 0.3).")
    metric, value, unit = m.group(1), float(m.group(2)), m.group(3) or ""
    if unit != METRICS[metric] and not (metric == "failure_rate" and unit == ""):
        raise UsageError(f"bad --abort-if {text!r}: {metric} takes {METRICS[metric] or 'a plain number'}",
                          hint="e.g. failure_rate>5%, parity_failures>0, p95_latency>1.2x, drift>0.3.")
    return {"metric": metric, "threshold": value, "text": text.strip()}


def parse_waves(text: str) -> list[float]:
    try:
        waves = [float(w.strip().rstrip("%")) for w in text.split(",") if w.strip()]
    except ValueError:
        waves = []
    if not waves or any(not 0 < w <= 100 for w in waves) or waves != sorted(waves) or waves[-1] != 100:
        raise UsageError(f"bad --waves {text!r}",
                         hint="Give increasing cumulative percentages ending at 100, e.g. 1%,10%,50%,100%.")
    return waves


def parse_rate(text: str | None) -> float | None:
    """Notices per minute, or None for no limit."""
    if not text:
        return None
    m = _RATE.match(text)
    if not m or int(m.group(1)) <= 0:
        raise UsageError(f"bad --rate {text!r}", hint="Use N/min, N/s or N/h, e.g. 600/min.")
    return int(m.group(1)) * {"s": 60, "sec": 60, "min": 1, "m": 1, "h": 1 / 60}[m.group(2)]


def wave_sizes(n: int, waves: list[float]) -> list[int]:
    """Cumulative device counts per wave; every wave has at least one new device while any remain."""
    out, prev = [], 0
    for pct in waves:
        k = min(n, max(prev + 1, math.ceil(n * pct / 100)))
        out.append(k)
        prev = k
    return out


def evaluate(rules: list[dict], metrics: dict) -> str | None:
    """The first tripped rule as a sentence, or None. A metric that is None (no data yet) never trips."""
    for r in rules:
        value = metrics.get(r["metric"])
        if value is not None and value > r["threshold"]:
            shown = f"{value:.1f}%" if r["metric"] == "failure_rate" else \
                f"{value:.2f}x" if r["metric"] == "p95_latency" else f"{value:g}"
            return f"{r['text']} tripped: {r['metric']} = {shown}"
    return None
