"""Operator -> minimum kernel version, modelled on TensorFlow Lite's ``op_version.cc``.

What it does: returns the version an operator must declare for the kernel variant it needs
(int8 kernels, ``half_pixel_centers``, ``keep_num_dims``, a TRANSPOSE_CONV bias, float16
DEQUANTIZE ...), so older runtimes and TFLite Micro refuse what they cannot run instead of
running it wrong. The runtime used here (ai-edge-litert 2.3) does not check versions itself.

int16 activations (16x8) take the versions in ``_INT16`` (op_version.cc: ADD 3 and SUB 5 with
``pot_scale_int16 = false``; FULLY_CONNECTED 7 as the int16 kernel's first version).

What it does not do: hybrid or sparse kernels, >4-D broadcasting variants
(the converter emits none of them). Ops absent here (HARD_SWISH, PRELU, LEAKY_RELU with int8,
RESHAPE, QUANTIZE float->int8 ...) are version 1 for every type the converter writes.
"""

from __future__ import annotations

# Ops whose int8 kernel is version 2 (and float version 1), as in TensorFlow's op_version.cc.
_INT8_V2 = {
    "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "SOFTMAX", "LOGISTIC", "TANH", "RELU",
    "RELU6", "PAD", "PADV2", "TRANSPOSE", "SPLIT_V", "STRIDED_SLICE", "SLICE", "MEAN", "SUM",
    "REDUCE_MAX", "REDUCE_MIN", "MAXIMUM", "MINIMUM", "GATHER", "BATCH_MATMUL", "MIRROR_PAD", "SUB",
    "RSQRT", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "GELU", "LOG_SOFTMAX", "EXP", "LOG",
}
# Version of each op's int16-activation kernel (op_version.cc).
_INT16 = {
    "CONV_2D": 4, "DEPTHWISE_CONV_2D": 5, "FULLY_CONNECTED": 7, "TRANSPOSE_CONV": 3, "MUL": 4, "ADD": 3,
    "SUB": 5, "AVERAGE_POOL_2D": 3, "MAX_POOL_2D": 3, "TRANSPOSE": 5, "SPLIT": 4, "RESIZE_BILINEAR": 4,
    "RESIZE_NEAREST_NEIGHBOR": 4, "MAXIMUM": 4, "MINIMUM": 4, "LOGISTIC": 3, "TANH": 3, "PAD": 3,
    "PADV2": 3, "CONCATENATION": 3, "SOFTMAX": 3, "MEAN": 3, "REDUCE_MAX": 3, "REDUCE_MIN": 3,
    "RELU6": 3, "RELU": 3, "LEAKY_RELU": 2, "GATHER": 4, "BATCH_MATMUL": 3, "DEQUANTIZE": 3,
}
# Ops whose rank > 4 needs a newer kernel: op -> version.
_RANK5 = {"TRANSPOSE": 4, "STRIDED_SLICE": 4, "SLICE": 5, "PAD": 4, "PADV2": 4}


def op_version(model, op) -> int:
    """The version ``op`` (a schema_writer.Operator inside ``model``) must declare."""
    t = model.tensors

    def dtype(idx: int) -> str | None:
        return t[idx].dtype if 0 <= idx < len(t) else None

    in0 = dtype(op.inputs[0]) if op.inputs else None
    name, opts = op.op, op.options
    data = dtype(op.inputs[1]) if name == "SPLIT" else in0
    if data == "int16" and name in _INT16:
        return _INT16[name]
    if name == "QUANTIZE" and op.outputs and dtype(op.outputs[0]) == "int16":
        return 2
    if name == "CONV_2D":
        return 3 if in0 == "int8" else 1
    if name == "DEPTHWISE_CONV_2D":
        if in0 == "int8":
            return 3
        dilated = opts.get("dilation_w_factor", 1) != 1 or opts.get("dilation_h_factor", 1) != 1
        return 2 if dilated else 1
    if name == "FULLY_CONNECTED":
        if opts.get("keep_num_dims"):
            return 5
        return 4 if in0 == "int8" else 1
    if name == "TRANSPOSE_CONV":
        if opts.get("fused_activation_function", 0):
            return 4
        if len(op.inputs) == 4 and op.inputs[3] >= 0:
            return 3
        return 2 if dtype(op.inputs[1]) == "int8" else 1
    if name == "DEQUANTIZE":
        if in0 == "int8" and t[op.inputs[0]].quant is not None and t[op.inputs[0]].quant.scale.size > 1:
            return 5                         # per-channel int8 (op_version.cc)
        return {"float16": 3, "int8": 2}.get(in0, 1)
    if name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        if opts.get("half_pixel_centers") or (name == "RESIZE_NEAREST_NEIGHBOR" and opts.get("align_corners")):
            return 3
        return 2 if in0 == "int8" else 1
    if name == "MUL" and in0 == "int8":
        s1, s2, so = (t[i].quant.scale[0] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
        return 3 if s1 * s2 / so >= 1.0 else 2
    if name in _RANK5 and len(t[op.inputs[0]].shape) > 4:
        return 6 if name == "TRANSPOSE" and len(t[op.inputs[0]].shape) > 5 else _RANK5[name]
    if name == "SPLIT":                      # SPLIT(axis, input): the data is input 1
        return 2 if dtype(op.inputs[1]) == "int8" else 1
    if name == "TILE":
        return 3 if in0 == "int8" else 1
    if name in _INT8_V2:
        return 2 if in0 == "int8" else 1
    return 1
