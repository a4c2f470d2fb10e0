"""Mixed precision for full-integer models: keep a float prefix, int8 for the rest (``int8-mixed``).

Why a prefix: on PP-OCRv4 det the int8 loss is in the high-resolution stem (per-tensor int8
activations with outlier channels, compounding over the first depthwise blocks; measured with
:mod:`.layerwise` and by quantizing one operator at a time). Keeping single "worst" operators float
did not help there, because every float->int8 boundary quantizes a new tensor and the choice of
that tensor matters more than the operator: the float prefix ends at a block boundary.

How the cut is chosen (calibration data only; the parity gate judges on validation data):
candidate cuts are the operators that start a block (PAD, CONV_2D, DEPTHWISE_CONV_2D) within the
first ``max_float_fraction`` of the graph; each is scored by the mean cosine of the model outputs
against the float model on a few calibration samples; the smallest cut whose score reaches
``min_cosine`` wins, else the best-scoring one. The trials are returned for the report.
"""

from __future__ import annotations

import numpy as np

from edgekit.core.parity import cosine

from . import quantize
from .runtime import interpreter, run
from .schema_writer import Model, serialize

CUT_OPS = ("PAD", "CONV_2D", "DEPTHWISE_CONV_2D")
MIN_COSINE = 0.975          # measured knee on PP-OCRv4 det (calibration cosine 0.73 -> 0.979 at op 37)
MAX_FLOAT_FRACTION = 0.35
SCORE_SAMPLES = 6


def _outputs(data: bytes, samples: list[dict]) -> list[np.ndarray]:
    interp = interpreter(data, "auto")
    return [np.concatenate([v.ravel() for v in run(interp, s).values()]).astype(np.float64) for s in samples]


def float_prefix(model: Model, ranges: dict, means: dict, samples: list[dict], *, min_cosine: float = MIN_COSINE,
                 max_float_fraction: float = MAX_FLOAT_FRACTION) -> tuple[list[int], dict]:
    """Operator indices to keep float and ``{"cut", "score", "trials": [[cut, score], ...]}``."""
    scored = samples[:SCORE_SAMPLES]
    ref = _outputs(serialize(model), scored)
    limit = int(len(model.operators) * max_float_fraction)
    cuts = [0] + [k for k in range(1, limit) if model.operators[k].op in CUT_OPS]
    trials: list[list] = []
    best = (-2.0, 0)
    for cut in cuts:
        got = _outputs(serialize(quantize.to_int8(model, ranges, means=means, keep_float=range(cut))), scored)
        score = float(np.mean([cosine(a, b) for a, b in zip(ref, got)]))
        trials.append([cut, round(score, 5)])
        best = max(best, (score, -cut))
        if score >= min_cosine:
            break
    score, cut = best[0], -best[1]
    return list(range(cut)), {"cut": cut, "float_ops": cut, "of_ops": len(model.operators),
                              "score": round(score, 5), "min_cosine": min_cosine, "trials": trials}
