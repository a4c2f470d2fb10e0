"""Parity metrics between an artifact's outputs and reference outputs (numpy only).

Shared by the host's parity gate (``converters``) and the agent's install-time health check,
so "still answers correctly" means the same thing on both sides. Also reads and writes golden
vector files (``golden.npz``: ``in:<name>`` / ``out:<name>`` arrays).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors, flattened, in float64; two all-zero tensors agree (1.0), one
    all-zero tensor against a non-zero one does not (0.0)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den else float(not a.any() and not b.any())


@dataclass
class ParityMetrics:
    max_abs_diff: float
    relative_max_diff: float       # max_abs_diff / max |expected|: comparable across output scales
    mean_abs_diff: float
    cosine: float
    top1_agreement: float | None   # only for outputs that look like class scores [N, C]
    within_tolerance: float        # fraction of elements with |a-b| <= atol + rtol*|b|
    count: int

    def as_dict(self) -> dict:
        return {k: (round(v, 7) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def compare(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> ParityMetrics:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise BundleError(f"output shape {a.shape} differs from the reference {b.shape}")
    diff = np.abs(a - b)
    if diff.size == 0:
        return ParityMetrics(0.0, 0.0, 0.0, 1.0, None, 1.0, 0)
    af, bf = a.reshape(len(a) if a.ndim > 1 else 1, -1), b.reshape(len(b) if b.ndim > 1 else 1, -1)
    norms = np.linalg.norm(af, axis=1) * np.linalg.norm(bf, axis=1)
    cos_rows = np.where(norms > 0, np.sum(af * bf, axis=1) / np.maximum(norms, 1e-30),
                        np.where(np.allclose(af, bf), 1.0, 0.0))
    top1 = None
    if a.ndim == 2 and a.shape[1] > 1:
        top1 = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    return ParityMetrics(
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        relative_max_diff=float(diff.max() / max(float(np.abs(b).max()), 1e-12)) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        cosine=float(cos_rows.min()) if cos_rows.size else 1.0,
        top1_agreement=top1,
        within_tolerance=float(np.mean(diff <= atol + rtol * np.abs(b))) if diff.size else 1.0,
        count=int(a.shape[0]) if a.ndim else 1,
    )


def passes(m: ParityMetrics, *, min_cosine: float, min_top1_agreement: float,
           max_rel_error: float | None) -> list[str]:
    """The reasons ``m`` fails the thresholds (empty list = pass)."""
    reasons = []
    if m.cosine < min_cosine:
        reasons.append(f"cosine {m.cosine:.4f} < {min_cosine}")
    if m.top1_agreement is not None and m.top1_agreement < min_top1_agreement:
        reasons.append(f"top-1 agreement {m.top1_agreement:.4f} < {min_top1_agreement}")
    if max_rel_error is not None and m.relative_max_diff > max_rel_error:
        reasons.append(f"max abs diff {m.max_abs_diff:.4g} is {m.relative_max_diff:.3g} of the output range "
                       f"(budget {max_rel_error})")
    return reasons


def save_golden(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    arrays = {f"in:{k}": v for k, v in inputs.items()} | {f"out:{k}": v for k, v in outputs.items()}
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_golden(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            ins = {k[3:]: data[k] for k in data.files if k.startswith("in:")}
            outs = {k[4:]: data[k] for k in data.files if k.startswith("out:")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"golden vectors {path} are unreadable: {exc}") from None
    if not ins or not outs:
        raise BundleError(f"golden vectors {path} hold no inputs or no outputs")
    return ins, outs
