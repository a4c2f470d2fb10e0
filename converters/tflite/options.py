"""Builtin-options tables for the TFLite operators this converter emits, and their writer.

What it does: lists, per operator, the options table of the TFLite schema and every field with
the value written when the caller gives none (``None`` = the caller must give it: schema defaults
such as ``stride = 0`` or ``Softmax beta = 0`` are silently wrong), and serializes the options with
the ``tflite`` package's prefixed builder functions.

What it does not do: vector-valued options (``ReshapeOptions.new_shape``, ``SqueezeOptions``):
the converter passes shapes as operator inputs instead. Operators not listed take no options.
"""

from __future__ import annotations

from edgekit.core.errors import ModelError

# Enum values of the TFLite schema, used by the op translators.
PADDING = {"SAME": 0, "VALID": 1}
ACTIVATION = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3, "TANH": 4}
MIRROR_PAD_MODE = {"REFLECT": 0, "SYMMETRIC": 1}

_ACT = {"fused_activation_function": 0}
_POOL = {"padding": None, "stride_w": None, "stride_h": None, "filter_width": None,
         "filter_height": None, **_ACT}
_RESIZE = {"align_corners": False, "half_pixel_centers": False}
_REDUCE = ("ReducerOptions", {"keep_dims": None})

OPTIONS: dict[str, tuple[str, dict]] = {
    "CONV_2D": ("Conv2DOptions", {"padding": None, "stride_w": None, "stride_h": None, **_ACT,
                                  "dilation_w_factor": 1, "dilation_h_factor": 1}),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2DOptions", {
        "padding": None, "stride_w": None, "stride_h": None, "depth_multiplier": None, **_ACT,
        "dilation_w_factor": 1, "dilation_h_factor": 1}),
    "TRANSPOSE_CONV": ("TransposeConvOptions", {"padding": None, "stride_w": None, "stride_h": None,
                                                **_ACT}),
    "FULLY_CONNECTED": ("FullyConnectedOptions", {**_ACT, "weights_format": 0, "keep_num_dims": False,
                                                  "asymmetric_quantize_inputs": False}),
    "AVERAGE_POOL_2D": ("Pool2DOptions", _POOL),
    "MAX_POOL_2D": ("Pool2DOptions", _POOL),
    "SOFTMAX": ("SoftmaxOptions", {"beta": None}),
    "CONCATENATION": ("ConcatenationOptions", {"axis": None, **_ACT}),
    "ADD": ("AddOptions", {**_ACT, "pot_scale_int16": True}),     # schema default; int16 models write False
    "SUB": ("SubOptions", {**_ACT, "pot_scale_int16": True}),
    "MUL": ("MulOptions", dict(_ACT)),
    "DIV": ("DivOptions", dict(_ACT)),
    "RESIZE_BILINEAR": ("ResizeBilinearOptions", _RESIZE),
    "RESIZE_NEAREST_NEIGHBOR": ("ResizeNearestNeighborOptions", _RESIZE),
    "SPLIT": ("SplitOptions", {"num_splits": None}),
    "SPLIT_V": ("SplitVOptions", {"num_splits": None}),
    "STRIDED_SLICE": ("StridedSliceOptions", {"begin_mask": 0, "end_mask": 0, "ellipsis_mask": 0,
                                              "new_axis_mask": 0, "shrink_axis_mask": 0,
                                              "offset": False}),
    "LEAKY_RELU": ("LeakyReluOptions", {"alpha": None}),
    "MEAN": _REDUCE, "SUM": _REDUCE, "REDUCE_MAX": _REDUCE, "REDUCE_MIN": _REDUCE,
    "BATCH_MATMUL": ("BatchMatMulOptions", {"adj_x": False, "adj_y": False,
                                            "asymmetric_quantize_inputs": False}),
    "MIRROR_PAD": ("MirrorPadOptions", {"mode": None}),
    "GATHER": ("GatherOptions", {"axis": None, "batch_dims": 0}),
    "CAST": ("CastOptions", {"in_data_type": None, "out_data_type": None}),
    "DEPTH_TO_SPACE": ("DepthToSpaceOptions", {"block_size": None}),
    "SPACE_TO_DEPTH": ("SpaceToDepthOptions", {"block_size": None}),
    "GELU": ("GeluOptions", {"approximate": False}),
}


def resolved(op: str, given: dict) -> dict:
    """``given`` completed with the table's values; raises on unknown or missing fields."""
    if op not in OPTIONS:
        if given:
            raise ModelError(f"{op} takes no builtin options, got {sorted(given)}")
        return {}
    _, fields = OPTIONS[op]
    unknown = set(given) - set(fields)
    if unknown:
        raise ModelError(f"{op}: unknown options {sorted(unknown)}")
    out = {k: given.get(k, v) for k, v in fields.items()}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ModelError(f"{op}: options {missing} must be given explicitly")
    return out


def _camel(field: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in field.split("_"))


def write_options(builder, op: str, given: dict) -> tuple[int, int | None]:
    """Write the options table of ``op``: (BuiltinOptions type, offset or None)."""
    import tflite as tfl
    from tflite.BuiltinOptions import BuiltinOptions

    values = resolved(op, given)
    if op not in OPTIONS:
        return 0, None
    cls, _ = OPTIONS[op]
    getattr(tfl, f"{cls}Start")(builder)
    for key, value in values.items():
        getattr(tfl, f"{cls}Add{_camel(key)}")(builder, value)
    return getattr(BuiltinOptions, cls), getattr(tfl, f"{cls}End")(builder)
