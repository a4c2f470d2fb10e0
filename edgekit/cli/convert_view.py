"""Readable tables for ``edgekit convert`` reports (the JSON report is the source of truth)."""

from __future__ import annotations

from .common import table

MB = 1024 * 1024


def _mb(n) -> str:
    return "-" if n is None else f"{n / MB:.2f}"


def candidates_table(report: dict) -> str:
    rows = []
    for c in report["candidates"]:
        if c.get("skipped"):
            rows.append({"precision": c["precision"], "verdict": "skipped", "why": "; ".join(c["reasons"])})
            continue
        outs = list(c["outputs"].values())
        mem = c["budgets"]["peak_memory"]
        rows.append({
            "precision": c["precision"], "MB": _mb(c["bytes"]),
            "x_smaller": f"{c['size_ratio']:.2f} / {c['ideal_size_ratio']:.0f}",
            "ms": f"{c['latency_ms']:.2f}", "x_faster": f"{c['speedup']:.2f}",
            "cosine": f"{min(o['cosine'] for o in outs):.4f}",
            "rel_err": f"{max(o['relative_max_diff'] for o in outs):.3g}",
            "acc_drop": c.get("accuracy_drop"),
            "peak_MB": f"{_mb(mem['peak_bytes'])}/{_mb(mem['budget'])}" + ("" if mem["complete"] else "?"),
            "verdict": "chosen" if c["precision"] == report.get("precision") else ("ok" if c["passed"] else "dropped"),
            "why": "; ".join(c["reasons"]),
        })
    return table(rows, ["precision", "MB", "x_smaller", "ms", "x_faster", "cosine", "rel_err", "acc_drop",
                        "peak_MB", "verdict", "why"])


def steps_table(report: dict) -> str:
    rows = [{"step": s["step"], "seconds": s["seconds"], "peak_rss_MB": _mb(s["peak_rss_bytes"]),
             "status": s.get("status", "")} for s in report.get("steps", [])]
    return table(rows, ["step", "seconds", "peak_rss_MB", "status"])


def render(report: dict) -> str:
    head = (f"== {report['profile']}: {report['precision']} → {report['artifact']} "
            f"({_mb(report['artifact_bytes'])} MB, {report['size_ratio']:.2f}x smaller than the source; "
            f"fp32 reference {report['reference_latency_ms']:.2f} ms, 1 thread)")
    fixed = report.get("fixed_input_shapes")
    extra = f"\nfixed input shapes: {fixed}" if fixed else ""
    return "\n".join([head + extra, candidates_table(report), "", steps_table(report)])
