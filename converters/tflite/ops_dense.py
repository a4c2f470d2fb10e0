"""Translators for ONNX Gemm and MatMul.

What it does: a Gemm or MatMul with a constant 2-D weight becomes FULLY_CONNECTED with weights
``[N, K]`` (Gemm ``B`` transposed unless ``transB``, ``alpha`` and ``beta * C`` folded in; a
bias is always written so int8 gets an int32 bias). When the input is a lazily flattened NHWC
tensor, the flatten order is folded into the weight columns instead of transposing activations.
MatMul with more than 2 dims uses ``keep_num_dims``; a constant left operand is handled by
swapping the last two axes of the layout; two live operands become BATCH_MATMUL.

What it does not do: Gemm with a live B (or a constant A), MatMul with a 1-D operand or a
constant operand of rank > 2, integer MatMul (MatMulInteger). A Gemm bias C that varies along
the batch axis is added with a separate ADD.
"""

from __future__ import annotations

import numpy as np

from .context import NotConvertible, handler, identity
from .ops_elementwise import binary


def fully_connected(ctx, a: str, weights: np.ndarray, bias: np.ndarray, out: str, in_perm=None,
                    out_perm=None, keep_num_dims=False) -> None:
    """FULLY_CONNECTED of ONNX value ``a`` with ``weights`` [N, K] (columns in ONNX order)."""
    v = ctx.values.get(a)
    if v is not None and v.flat_src is not None and in_perm is None:
        x, weights = v.tensor, weights[:, v.flat_perm]
    else:
        x = ctx.tensor(a, in_perm if in_perm is not None else identity(len(ctx.shape(a))))
    ins = [x, ctx.const_tensor(f"{out}/weights", weights.astype(np.float32)),
           ctx.const_tensor(f"{out}/bias", bias.astype(np.float32))]
    ctx.emit("FULLY_CONNECTED", ins, out, out_perm or identity(len(ctx.shape(out))),
             keep_num_dims=keep_num_dims)


@handler("Gemm")
def gemm(ctx, node):
    a, b, out = node.input[0], node.input[1], node.output[0]
    alpha, beta = float(ctx.attr(node, "alpha", 1.0)), float(ctx.attr(node, "beta", 1.0))
    trans_a, trans_b = int(ctx.attr(node, "transA", 0)), int(ctx.attr(node, "transB", 0))
    w = ctx.const(b)
    if w is None or ctx.const(a) is not None:
        raise NotConvertible("Gemm needs a constant B and a live A")
    w = (w if trans_b else w.T).astype(np.float64) * alpha          # [N, K]
    n = w.shape[0]
    c = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and c is None:
        raise NotConvertible("Gemm C must be a constant")
    bias, extra = np.zeros(n), None
    if c is not None:
        c = beta * c.astype(np.float64)
        if c.size in (1, n) and (c.ndim < 2 or c.shape[0] == 1):
            bias = np.broadcast_to(c.reshape(-1), (n,)).copy()
        else:
            extra = c.astype(np.float32)
    target = out if extra is None else f"{out}/matmul"
    if extra is not None:
        ctx.g.shapes[target], ctx.g.dtypes[target] = ctx.shape(out), ctx.dtype(out)
    fully_connected(ctx, a, w.astype(np.float32), bias, target, in_perm=(1, 0) if trans_a else None)
    if extra is not None:
        binary(ctx, "ADD", target, "", out, extra)


@handler("MatMul")
def matmul(ctx, node):
    a, b, out = node.input[0], node.input[1], node.output[0]
    ca, cb = ctx.const(a), ctx.const(b)
    ra = len(ctx.shape(a))
    rb = len(ctx.shape(b))
    if cb is not None and cb.ndim == 2 and ra >= 2:
        w = cb.T.astype(np.float32)
        perm = ctx.perm(a)
        if perm[-1] != ra - 1:
            perm = identity(ra)
        fully_connected(ctx, a, w, np.zeros(w.shape[0], np.float32), out,
                        in_perm=perm if ra > 2 else None, out_perm=perm, keep_num_dims=ra > 2)
        return
    if ca is not None and ca.ndim == 2 and rb >= 2:
        # C @ x == (x^T @ C^T)^T: run FC on x with its last two axes swapped.
        swap = identity(rb)[:-2] + (rb - 1, rb - 2)
        fully_connected(ctx, b, ca.astype(np.float32), np.zeros(ca.shape[0], np.float32), out,
                        in_perm=swap, out_perm=swap, keep_num_dims=rb > 2)
        return
    if ca is not None or cb is not None or ra < 2 or rb < 2:
        raise NotConvertible("MatMul with a 1-D operand or a constant operand of rank > 2")
    ctx.emit("BATCH_MATMUL", [ctx.tensor(a, identity(ra)), ctx.tensor(b, identity(rb))], out,
             identity(len(ctx.shape(out))))
