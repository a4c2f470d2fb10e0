"""Synthetic inputs for the third-party models used by tests and benchmarks (no photos ship here).

What it does: ``blobs`` makes smooth colour blobs in [0, 1] (detector inputs such as nudenet's
YOLOv8n); ``text_lines`` makes dark stroke rows on a white page, normalised like PaddleOCR
(``(x - 0.5) / 0.5``), optionally every other image rotated 180 degrees (for the direction
classifier). Deterministic for a given seed.

What it does not do: stand in for accuracy data sets; they only exercise realistic value ranges.
"""

from __future__ import annotations

import numpy as np


def blobs(n: int, seed: int, size: int = 320) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    out = np.zeros((n, 3, size, size), np.float32)
    for k in range(n):
        for _ in range(8):
            cx, cy, s = rng.random(3)
            out[k] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.1 * s))[None] * rng.random(3)[:, None, None]
    return np.clip(out, 0, 1)


def text_lines(n: int, height: int, width: int, seed: int, flip_every_other: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.ones((n, 3, height, width), np.float32)
    rows = max(1, height // 50)
    for k in range(n):
        for _ in range(rows):
            th = int(rng.integers(height // 6, height // 3)) if height < 100 else int(rng.integers(6, 14))
            y = int(rng.integers(0, height - th))
            x0 = int(rng.integers(0, width // 3))
            length = int(rng.integers(width // 3, width - x0))
            step = int(rng.integers(5, 9))
            for c in range(x0, min(width, x0 + length), step):
                out[k, :, y:y + th, c:c + 3] = rng.random() * 0.3
        if flip_every_other and k % 2:
            out[k] = out[k, :, ::-1, ::-1]
    return ((out - 0.5) / 0.5).astype(np.float32)
