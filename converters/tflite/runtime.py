"""Run TFLite flatbuffers with ai-edge-litert (host side): build interpreters, feed named inputs.

What it does: creates an ``Interpreter`` from bytes with a chosen op resolver ("auto" = default
with XNNPACK, "ref" = reference kernels, "builtin" = optimized kernels without delegates),
optionally preserving all intermediate tensors (for calibration), and runs it on a dict of
named arrays (one invocation; the converted models have batch 1).

What it does not do: resize inputs, run on devices (the agent has its own runner), or compare
outputs (that is :mod:`edgekit.core.parity`).
"""

from __future__ import annotations

import numpy as np

from edgekit.core.errors import ModelError

RESOLVERS = ("auto", "ref", "builtin")


def interpreter(model: bytes, resolver: str = "auto", preserve_all: bool = False, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = {"auto": OpResolverType.AUTO, "ref": OpResolverType.BUILTIN_REF,
            "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[resolver]
    try:
        interp = Interpreter(model_content=model, experimental_op_resolver_type=kind,
                             experimental_preserve_all_tensors=preserve_all, num_threads=threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"the TFLite runtime refused the converted model: {exc}") from None
    return interp


def run(interp, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One invocation; ``inputs`` maps input tensor names to arrays of the exact input shape."""
    for d in interp.get_input_details():
        if d["name"] not in inputs:
            raise ModelError(f"no value given for model input {d['name']!r}")
        interp.set_tensor(d["index"], np.asarray(inputs[d["name"]], dtype=d["dtype"]).reshape(d["shape"]))
    interp.invoke()
    return {d["name"]: interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()}
