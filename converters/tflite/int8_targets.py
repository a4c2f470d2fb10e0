"""Graph rewrites for integer-only targets (Edge TPU, microcontrollers) on the in-memory TFLite model.

What it does:

* ``split_output_concats``: graph surgery *before* quantization for int8 outputs. A graph output
  written by a CONCATENATION whose inputs have very different calibrated ranges (YOLOv8's head:
  box pixels 0..320 next to class scores 0..1) would share one int8 scale (~1.25 px per step, so
  every score rounds to one of a few levels). The concat is dropped and its inputs become graph
  outputs, each with its own scale. The returned layout (``{output: {"axis", "parts": [{"name",
  "size"}]}}``, axis in the ONNX layout) is recorded in the report and the bundle manifest;
  ``edgekit.core.outputs.join_parts`` puts the original tensor back together after dequantizing.
* ``split_v_as_slices``: SPLIT_V (absent from the Edge TPU op list) becomes one STRIDED_SLICE per
  output (present there); same output tensors, so calibration ranges still apply.
* ``hard_swish_as_muls``: HARD_SWISH (absent there too) becomes ``x * (relu6(x + 3) * 1/6)``:
  ADD with a fused RELU6, MUL by 1/6, MUL by ``x``. The hard-sigmoid factor (range [0, 1]) is
  quantized before the product, not the product ``x * relu6(x + 3)`` (up to 6x the input's
  range), which is what cost PP-OCRv4 det its accuracy in the paddle2onnx decomposition.

What it does not do: decide when to apply them (``convert``: int8 I/O, and the profile's op
allowlist), or touch float/int8-static models (their outputs are float: one concat is harmless).
"""

from __future__ import annotations

import numpy as np

from .options import ACTIVATION
from .quantize import SHARE_MAX_SPREAD
from .schema_writer import Model, Operator

# Split an output concat when its inputs' ranges differ by more than this factor: the factor past
# which the int8 concat stops sharing one scale (the same rule, so one constant).
SPLIT_MIN_SPREAD = SHARE_MAX_SPREAD
NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)     # stored NHWC axis k is ONNX (NCHW) axis NHWC_TO_NCHW_AXIS[k]


def _width(r: tuple[float, float]) -> float:
    return max(r[1], 0.0) - min(r[0], 0.0)


def split_output_concats(model: Model, ranges: dict[int, tuple[float, float]], io_layout: str,
                         min_spread: float = SPLIT_MIN_SPREAD) -> dict[str, dict]:
    """Replace each qualifying output CONCATENATION by its inputs as graph outputs (in place)."""
    producer = {t: op for op in model.operators for t in op.outputs}
    consumers = model.consumers()
    layout: dict[str, dict] = {}
    outputs: list[int] = []
    for idx in model.outputs:
        op = producer.get(idx)
        parts = op.inputs if op is not None and op.op == "CONCATENATION" else []
        ok = (parts and not consumers.get(idx) and not op.options.get("fused_activation_function")
              and all(p >= 0 and not model.tensors[p].is_const and p not in model.outputs and p in ranges
                      for p in parts) and len(set(parts)) == len(parts))
        widths = [_width(ranges[p]) for p in parts] if ok else []
        if not ok or max(widths) <= min_spread * max(min(widths), 1e-9):
            outputs.append(idx)
            continue
        out = model.tensors[idx]
        axis = int(op.options.get("axis", 0)) % len(out.shape)
        onnx_axis = NHWC_TO_NCHW_AXIS[axis] if io_layout == "nhwc" and len(out.shape) == 4 else axis
        entry = {"axis": onnx_axis, "parts": []}
        for k, p in enumerate(parts):
            t = model.tensors[p]
            t.name = f"{out.name}.part{k}"
            entry["parts"].append({"name": t.name, "size": int(t.shape[axis])})
            outputs.append(p)
        layout[out.name] = entry
        model.operators = [o for o in model.operators if o is not op]
    model.outputs = outputs      # no prune here: tensor indices (the keys of ``ranges``) stay valid
    return layout


def split_v_as_slices(model: Model) -> int:
    """Rewrite every SPLIT_V into STRIDED_SLICEs (in place); returns how many were rewritten."""
    done, ops = 0, []
    for op in model.operators:
        if op.op != "SPLIT_V" or not (model.tensors[op.inputs[1]].is_const and model.tensors[op.inputs[2]].is_const):
            ops.append(op)
            continue
        x = op.inputs[0]
        shape = model.tensors[x].shape
        axis = int(model.tensors[op.inputs[2]].data.reshape(-1)[0]) % len(shape)
        start = 0
        for out in op.outputs:
            size = int(model.tensors[out].shape[axis])
            begin, end = np.zeros(len(shape), np.int32), np.asarray(shape, np.int32).copy()
            begin[axis], end[axis] = start, start + size
            name = model.tensors[out].name
            ins = [x, model.add_const(f"{name}/begin", begin), model.add_const(f"{name}/end", end),
                   model.add_const(f"{name}/strides", np.ones(len(shape), np.int32))]
            ops.append(Operator("STRIDED_SLICE", ins, [out], {"begin_mask": 0, "end_mask": 0, "ellipsis_mask": 0,
                                                               "new_axis_mask": 0, "shrink_axis_mask": 0}))
            start += size
        done += 1
    model.operators = ops
    if done:
        model.prune()
    return done


def hard_swish_as_muls(model: Model) -> int:
    """Rewrite every HARD_SWISH into ADD(+3, fused RELU6) -> MUL(1/6) -> MUL(x) (in place)."""
    done, ops = 0, []
    for op in model.operators:
        if op.op != "HARD_SWISH":
            ops.append(op)
            continue
        (x,), (y,) = op.inputs, op.outputs
        name, shape = model.tensors[y].name, model.tensors[x].shape
        relu6 = model.add_tensor(f"{name}/relu6", shape)
        gate = model.add_tensor(f"{name}/hardsigmoid", shape)
        ops += [Operator("ADD", [x, model.add_const(f"{name}/three", np.array([3.0], np.float32))], [relu6],
                         {"fused_activation_function": ACTIVATION["RELU6"]}),
                Operator("MUL", [relu6, model.add_const(f"{name}/sixth", np.array([1 / 6], np.float32))], [gate], {}),
                Operator("MUL", [x, gate], [y], {})]
        done += 1
    model.operators = ops
    return done
