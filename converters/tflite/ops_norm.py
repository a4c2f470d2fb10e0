"""Translators for normalization layers and GELU: LayerNormalization, InstanceNormalization, Gelu.

What it does: decomposes Layer/InstanceNormalization into MEAN, SUB, MUL, ADD and RSQRT over the
normalized axes (remapped to the stored layout, so NHWC activations are not transposed), with
the scale and bias constants broadcast into that layout; ONNX Gelu (opset 20) becomes GELU
(``approximate`` for the tanh form).

What it does not do: the ``Erf``-based GELU pattern of older exports (Erf has no TFLite builtin),
LayerNormalization's optional mean / inverse-std outputs, GroupNormalization.
"""

from __future__ import annotations

import numpy as np

from .context import NotConvertible, handler
from .ops_elementwise import binary


def normalize(ctx, x: str, out: str, axes: list[int], eps: float, scale: np.ndarray | None,
              bias: np.ndarray | None) -> None:
    """out = (x - mean) / sqrt(var + eps) * scale + bias, statistics over ONNX ``axes``."""
    perm = ctx.perm(x)
    shape = ctx.shape(x)
    stats_shape = tuple(1 if a in axes else d for a, d in enumerate(shape))
    stored_axes = [perm.index(a) for a in axes]

    def mean(src: str, name: str) -> None:
        ctx.emit("MEAN", [ctx.tensor(src), ctx.int32(f"{name}/axes", stored_axes)], name, perm, keep_dims=True)

    mu = ctx.scratch(out, "mean", x, stats_shape)
    mean(x, mu)
    centered = ctx.scratch(out, "centered", x)
    binary(ctx, "SUB", x, mu, centered)
    square = ctx.scratch(out, "square", x)
    binary(ctx, "MUL", centered, centered, square)
    var = ctx.scratch(out, "variance", x, stats_shape)
    mean(square, var)
    var_eps = ctx.scratch(out, "variance_eps", x, stats_shape)
    binary(ctx, "ADD", var, "", var_eps, np.array(eps, np.float32))
    inv = ctx.scratch(out, "inv_std", x, stats_shape)
    ctx.emit("RSQRT", [ctx.tensor(var_eps)], inv, perm)
    steps = [("MUL", inv, None)]
    if scale is not None:
        steps.append(("MUL", "", scale))
    if bias is not None:
        steps.append(("ADD", "", bias))
    src = centered
    for k, (op, other, const) in enumerate(steps):
        dst = out if k == len(steps) - 1 else ctx.scratch(out, f"affine{k}", x)
        binary(ctx, op, src, other, dst, const)
        src = dst


@handler("LayerNormalization")
def layer_norm(ctx, node):
    if len([o for o in node.output if o]) > 1:
        raise NotConvertible("LayerNormalization mean / inv-std outputs")
    x = node.input[0]
    rank = len(ctx.shape(x))
    axis = int(ctx.attr(node, "axis", -1)) % rank
    scale = ctx.need_const(node, 1, "LayerNormalization scale").astype(np.float32)
    bias = ctx.need_const(node, 2, "LayerNormalization bias").astype(np.float32) \
        if len(node.input) > 2 and node.input[2] else None
    normalize(ctx, x, node.output[0], list(range(axis, rank)), float(ctx.attr(node, "epsilon", 1e-5)), scale, bias)


@handler("InstanceNormalization")
def instance_norm(ctx, node):
    x = node.input[0]
    rank = len(ctx.shape(x))
    per_channel = (-1,) + (1,) * (rank - 2)
    scale = ctx.need_const(node, 1, "InstanceNormalization scale").astype(np.float32).reshape(per_channel)
    bias = ctx.need_const(node, 2, "InstanceNormalization bias").astype(np.float32).reshape(per_channel)
    normalize(ctx, x, node.output[0], list(range(2, rank)), float(ctx.attr(node, "epsilon", 1e-5)), scale, bias)


@handler("Gelu")
def gelu(ctx, node):
    approx = ctx.attr(node, "approximate", "none")
    if approx not in ("none", "tanh"):
        raise NotConvertible(f"Gelu approximate={approx!r}")
    x = node.input[0]
    ctx.emit("GELU", [ctx.tensor(x)], node.output[0], ctx.perm(x), approximate=approx == "tanh")
