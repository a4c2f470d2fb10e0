"""Which activation calibration the default static int8 path keeps (ADR 0013, amendment 1).

``edgekit convert`` without ``--calibration-method`` (``auto``) builds static int8 with MinMax
ranges first. When that artifact's answers fail the parity gate (outputs, task metric, accuracy:
``fidelity_passed``; a failure only for size, speed, memory or ops is not one a calibration
changes) or miss the profile's ``validation.min_cosine`` on the validation data (the gate's
figure: the worst output's worst-image cosine), it also builds
the Percentile candidate and keeps the better one on validation: one that passes the gate beats
one that does not, then the higher cosine wins (ties keep MinMax). This is how ``auto`` already
chooses between precisions: on validation data, not on a calibration-time probe. The probe cannot
rank methods (PP-OCRv4 det 640: held-out probe cosine ranked Percentile below MinMax, validation
ranked it above: 0.9938 against 0.9875).

Entropy is not tried: it is a histogram calibration too (56 s against MinMax's 36 s on PP-OCR det
640) and came first on none of the models measured. An explicit ``--calibration-method`` builds exactly that method.
This module only decides; building is ``recipes``, gating is ``gate``.
"""

from __future__ import annotations

AUTO = "auto"
AUTO_SEQUENCE = ("minmax", "percentile")   # tried in this order; the next only when the previous misses


def methods_for(precision: str, requested: str) -> tuple[str, ...]:
    """Calibration methods to build for ``precision``: the sequence for static int8 under ``auto``,
    else the one requested (MinMax when ``auto`` and the precision does not calibrate)."""
    if requested != AUTO:
        return (requested,)
    return AUTO_SEQUENCE if precision == "int8-static" else (AUTO_SEQUENCE[0],)


def output_cosine(entry: dict) -> float:
    """The gate's cosine of a candidate entry: the worst output's (each is already its worst image's)."""
    return min(o["cosine"] for o in entry["outputs"].values())


def good_enough(entry: dict, min_cosine: float) -> bool:
    """True when no further calibration method needs building after ``entry``: its answers pass
    (whatever else failed) and reach ``min_cosine``."""
    fidelity = entry.get("fidelity_passed", entry["passed"])
    return bool(entry.get("skipped")) or (fidelity and output_cosine(entry) >= min_cosine)


def best(entries: list[dict]) -> int:
    """Index of the entry to keep: passing first, then the highest cosine; the earliest on ties."""
    def rank(i: int):
        e = entries[i]
        return (bool(e.get("passed")), -1.0 if e.get("skipped") else output_cosine(e), -i)
    return max(range(len(entries)), key=rank)
