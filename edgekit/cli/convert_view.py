"""Readable tables for ``edgekit convert`` reports (the JSON report is the source of truth)."""

from __future__ import annotations

from .common import table

MB = 1024 * 1024


def _mb(n) -> str:
    return "-" if n is None else f"{n / MB:.2f}"


def _peak(c: dict) -> str:
    """Estimated peak memory vs budget: ONNX reports carry budgets.peak_memory, TFLite ones memory."""
    mem = c.get("budgets", {}).get("peak_memory")
    if mem:
        return f"{_mb(mem['peak_bytes'])}/{_mb(mem['budget'])}" + ("" if mem["complete"] else "?")
    return _mb(c.get("memory", {}).get("peak_memory_bytes"))


def _chosen(c: dict, report: dict) -> bool:
    """``kept`` is False on a calibration method the default static int8 path built and dropped."""
    return c["precision"] == report.get("precision") and c.get("kept", True)


def _name(c: dict) -> str:
    return f"{c['precision']}/{c['calibration_method']}" if "kept" in c else c["precision"]


def candidates_table(report: dict) -> str:
    rows = []
    for c in report["candidates"]:
        if c.get("skipped"):
            rows.append({"precision": c["precision"], "verdict": "skipped", "why": "; ".join(c["reasons"])})
            continue
        outs = list(c["outputs"].values())
        ratio = c.get("size_ratio", report["source_bytes"] / max(c["bytes"], 1))
        ideal = f" / {c['ideal_size_ratio']:.0f}" if "ideal_size_ratio" in c else ""
        rows.append({
            "precision": _name(c), "MB": _mb(c["bytes"]),
            "x_smaller": f"{ratio:.2f}{ideal}",
            "ms": f"{c['latency_ms']:.2f}", "x_faster": f"{c['speedup']:.2f}",
            "cosine": f"{min(o['cosine'] for o in outs):.4f}",
            "rel_err": f"{max(o['relative_max_diff'] for o in outs):.3g}",
            "acc_drop": c.get("accuracy_drop"),
            "task": _task(c),
            "peak_MB": _peak(c),
            "verdict": "chosen" if _chosen(c, report) else ("ok" if c["passed"] else "dropped"),
            "why": "; ".join(c["reasons"]),
        })
    return table(rows, ["precision", "MB", "x_smaller", "ms", "x_faster", "cosine", "rel_err", "acc_drop",
                        "task", "peak_MB", "verdict", "why"])


def _task(c: dict) -> str:
    t = c.get("task")
    if not t:
        return "-"
    return "n/a" if t["score"] is None else f"{t['score']:.3f}" + ("*" if t.get("decides") else "")


def criteria_lines(report: dict) -> list[str]:
    """Which criterion decided each output of the chosen (else last) candidate."""
    chosen = next((c for c in report["candidates"] if _chosen(c, report)),
                  report["candidates"][-1] if report["candidates"] else {})
    lines = []
    for name, crit in chosen.get("criteria", {}).items():
        line = f"  {name}: decided by {crit['decided_by']}"
        if crit.get("task"):
            line += f" [{crit['task']}]"
        if crit.get("elementwise_not_deciding"):
            line += f"; element-wise (reported, not deciding): {'; '.join(crit['elementwise_not_deciding'])}"
        lines.append(line)
    return lines


def steps_table(report: dict) -> str:
    rows = [{"step": s["step"], "seconds": s["seconds"], "peak_rss_MB": _mb(s["peak_rss_bytes"]),
             "status": s.get("status", "")} for s in report.get("steps", [])]
    return table(rows, ["step", "seconds", "peak_rss_MB", "status"])


def render(report: dict) -> str:
    ref_ms = report.get("reference_latency_ms", report["candidates"][0].get("reference_latency_ms", 0.0))
    head = (f"== {report['profile']}: {report['precision']} → {report['artifact']} "
            f"({_mb(report['artifact_bytes'])} MB, {report['size_ratio']:.2f}x smaller than the source; "
            f"fp32 reference {ref_ms:.2f} ms, 1 thread)")
    fixed = report.get("fixed_input_shapes")
    extra = f"\nfixed input shapes: {fixed}" if fixed else ""
    if report.get("task"):
        t = report["task"]
        extra += f"\ntask: {t['task']} ({t['reason']})" + ("; * = the task metric decides" if t["output"] else "")
    for name, lay in (report.get("output_layout") or {}).items():     # int8 I/O split head (ADR 0014)
        pieces = ", ".join(f"{p['name']} [{p['size']}]" for p in lay["parts"])
        extra += (f"\noutput {name} is split into int8 parts with their own scales: {pieces} on axis {lay['axis']} "
                  "(manifest outputs[].part_of; join with edgekit.core.outputs.join_parts)")
    parts = [head + extra, candidates_table(report)]
    crit = criteria_lines(report)
    if crit:
        parts += ["parity criteria (" + report["precision"] + "):", *crit]
    if report.get("steps"):
        parts += ["", steps_table(report)]
    return "\n".join(parts)
