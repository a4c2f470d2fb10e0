"""TensorFlow Lite Micro export: a C array of the model, its op-resolver list and arena size.

What it does: checks a .tflite against a ``tflite-micro`` profile (:mod:`.compat`: ops, types,
static shapes, tensor arena vs ``memory.model_ram_budget_bytes``, size vs the flash budget) and
writes ``<name>_model_data.h`` / ``<name>_model_data.c``: a 16-byte aligned ``const unsigned char``
array with its length, ``<NAME>_TENSOR_ARENA_SIZE`` (estimate + margin, 32-bit target), and an
inline C++ function that registers exactly the builtin ops the model uses on a
``tflite::MicroMutableOpResolver<N>``. Nothing is written when a check fails.

What it does not do: compile firmware, pick CMSIS-NN / vendor kernels, or support custom ops.
The op -> ``MicroMutableOpResolver`` method table below is the ``AddBuiltin`` list of TFLite Micro's
``micro_mutable_op_resolver.h`` (tensorflow/tflite-micro @ 90b983c2, Apache-2.0).
"""

from __future__ import annotations

import re
from pathlib import Path

from edgekit.core.atomic import atomic_write_bytes
from edgekit.core.errors import ModelError, TargetFitError, UnsupportedOpError, UsageError

TFLM_RESOLVER: dict[str, str] = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEPTH_TO_SPACE": "AddDepthToSpace", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice", "ELU": "AddElu",
    "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax", "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean", "MINIMUM": "AddMinimum", "MIRROR_PAD": "AddMirrorPad", "MUL": "AddMul",
    "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2",
    "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable",
    "REDUCE_ALL": "AddReduceAll", "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu", "RELU6": "AddRelu6", "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear", "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "REVERSE_V2": "AddReverseV2", "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape", "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth", "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV", "SQRT": "AddSqrt", "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference", "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf",
    "TANH": "AddTanh", "TRANSPOSE": "AddTranspose", "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}
ARENA_MARGIN = 1.10          # TFLM allocates a little more than the planner's view (scratch, alignment)
ARENA_SLACK_BYTES = 1024


def c_name(text: str) -> str:
    name = re.sub(r"[^0-9a-zA-Z_]", "_", text)
    return name if name and not name[0].isdigit() else f"m_{name}"


def recommended_arena(arena_bytes: int) -> int:
    return (int(arena_bytes * ARENA_MARGIN) + ARENA_SLACK_BYTES + 15) // 16 * 16


def check_for_micro(info: dict, profile) -> dict:
    """The arena estimate; raises a specific error when the model cannot run on profile."""
    from .arena import estimate
    from .compat import profile_issues

    if profile.engine != "tflite-micro":
        raise UsageError(f"profile {profile.id} runs {profile.engine}, not TensorFlow Lite Micro",
                         hint="Pick a microcontroller profile, e.g. arduino-nano-33-ble-sense or esp32-s3.")
    issues = profile_issues(info, profile)
    if issues:
        listing = "; ".join(f"{i['where']}: {i['reason']}" for i in issues)
        kinds = {i["what"] for i in issues}
        cls = (UnsupportedOpError if kinds & {"op_not_supported", "dtype", "control_flow"}
               else TargetFitError if kinds & {"ram_budget", "flash_budget", "dynamic_shape"} else ModelError)
        raise cls(f"{info['name']} cannot run on {profile.id}: {listing}", issues=issues)
    return estimate(info, profile.raw["memory"]["word_bits"])


def _array_lines(data: bytes, per_line: int = 16) -> str:
    hexed = [f"0x{b:02x}" for b in data]
    return ",\n".join("  " + ", ".join(hexed[i:i + per_line]) for i in range(0, len(hexed), per_line))


def export_c_array(model_path: Path, profile, out_dir: Path, name: str | None = None) -> dict:
    """Write the C header/source for model_path; return what was written and the estimates."""
    from .reader import read_tflite

    data = Path(model_path).read_bytes() if Path(model_path).exists() else None
    if data is None:
        raise UsageError(f"{model_path} does not exist")
    info = read_tflite(data, Path(model_path).name)
    est = check_for_micro(info, profile)
    ident = c_name(name or Path(model_path).stem)
    macro = ident.upper()
    ops = sorted({o["op"] for o in info["ops"]})
    arena = recommended_arena(est["arena_bytes"])
    header = f"""/* Generated by edgekit export --format c-array from {Path(model_path).name} for {profile.id}.
 * Model: {len(data)} bytes, {sum(o['count'] for o in info['ops'])} operators ({', '.join(ops)}).
 * Tensor arena estimate (32-bit TFLM): {est['arena_bytes']} bytes (activations {est['activations_bytes']},
 * bookkeeping {est['persistent_bytes']}); recommended size with margin: {arena} bytes;
 * RAM budget of {profile.id}: {profile.raw['memory']['model_ram_budget_bytes']} bytes. */
#ifndef {macro}_MODEL_DATA_H_
#define {macro}_MODEL_DATA_H_

#define {macro}_TENSOR_ARENA_SIZE {arena}
#define {macro}_OP_COUNT {len(ops)}

#ifdef __cplusplus
extern "C" {{
#endif
extern const unsigned char {ident}_tflite[];
extern const unsigned int {ident}_tflite_len;
#ifdef __cplusplus
}}

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

/* Registers exactly the builtin ops {ident} uses. */
inline TfLiteStatus {ident}_register_ops(tflite::MicroMutableOpResolver<{macro}_OP_COUNT>& resolver) {{
""" + "".join(f"  if (resolver.{TFLM_RESOLVER[op]}() != kTfLiteOk) return kTfLiteError;\n" for op in ops) + f"""  return kTfLiteOk;
}}
#endif /* __cplusplus */

#endif /* {macro}_MODEL_DATA_H_ */
"""
    source = f"""/* Generated by edgekit export --format c-array from {Path(model_path).name} for {profile.id}. */
#include "{ident}_model_data.h"

/* 16-byte aligned: TFLite Micro reads the flatbuffer in place. */
_Alignas(16) const unsigned char {ident}_tflite[] = {{
{_array_lines(data)}
}};
const unsigned int {ident}_tflite_len = {len(data)};
"""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h, c = out_dir / f"{ident}_model_data.h", out_dir / f"{ident}_model_data.c"
    atomic_write_bytes(h, header.encode())
    atomic_write_bytes(c, source.encode())
    return {"header": str(h), "source": str(c), "symbol": f"{ident}_tflite", "model_bytes": len(data),
            "ops": [{"op": op, "resolver": TFLM_RESOLVER[op]} for op in ops], "arena": est,
            "recommended_arena_bytes": arena, "ram_budget_bytes": profile.raw["memory"]["model_ram_budget_bytes"],
            "profile": profile.id}
