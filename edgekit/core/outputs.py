"""Decoding artifact outputs that were split for integer-only targets (host and agent clients).

An int8-I/O TFLite artifact may return one source output as several parts, each with its own
int8 scale (``converters.tflite.int8_targets.split_output_concats``: YOLOv8's boxes and class
scores). The report and bundle manifest then carry ``output_layout``::

    {"output0": {"axis": 1, "parts": [{"name": "output0.part0", "size": 4},
                                      {"name": "output0.part1", "size": 18}]}}

``axis`` is in the source (ONNX) layout. ``join_parts`` concatenates the dequantized parts back
into the source output, so task metrics and clients decode the model as before. numpy only.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelError


def join_parts(outputs: dict[str, np.ndarray], layout: dict[str, dict] | None) -> dict[str, np.ndarray]:
    """``outputs`` (float, source layout) with each split output's parts replaced by the joined output."""
    if not layout:
        return dict(outputs)
    joined = dict(outputs)
    for name, entry in layout.items():
        parts = [p["name"] for p in entry["parts"]]
        missing = [p for p in parts if p not in outputs]
        if missing:
            raise ModelError(f"output {name!r} is split into {parts}, but {missing} are not among the outputs "
                             f"{sorted(outputs)}", hint="Decode with the manifest of the bundle that produced them.")
        for p in entry["parts"]:
            if outputs[p["name"]].shape[entry["axis"]] != p["size"]:
                raise ModelError(f"output part {p['name']!r} has {outputs[p['name']].shape[entry['axis']]} entries on "
                                 f"axis {entry['axis']}, the layout says {p['size']}")
        joined[name] = np.concatenate([outputs[p] for p in parts], axis=entry["axis"])
        for p in parts:
            del joined[p]
    return joined
