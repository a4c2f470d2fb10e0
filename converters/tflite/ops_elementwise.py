"""Translators for elementwise ONNX ops: arithmetic, activations, Softmax, BatchNormalization.

What it does: binary ops (Add, Sub, Mul, Div, Max, Min, Pow, Sum, PRelu) in the layout of their
non-constant operand, broadcasting constants and lower-rank inputs into that layout; Div by a
constant becomes MUL by its reciprocal; activations (Relu, Clip, Sigmoid, Tanh, HardSwish,
HardSigmoid, LeakyRelu, Elu, Exp, Log, Sqrt, Abs, Neg, Floor, Ceil, Sin, Cos, Reciprocal) are fused
into the producing op when possible; Softmax/LogSoftmax run with ``beta = 1`` on a layout whose
last axis is the ONNX axis; a BatchNormalization left unfolded becomes MUL + ADD.

What it does not do: integer arithmetic semantics (Div/Mod on ints), Erf/Gelu, comparison and
logical ops, opset < 13 Softmax over more than one trailing non-unit axis.
"""

from __future__ import annotations

import numpy as np

from .context import NotConvertible, handler, identity

_BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Max": "MAXIMUM", "Min": "MINIMUM",
           "Pow": "POW", "Sum": "ADD"}
_UNARY = {"Sigmoid": "LOGISTIC", "Tanh": "TANH", "HardSwish": "HARD_SWISH", "Exp": "EXP", "Log": "LOG",
          "Sqrt": "SQRT", "Abs": "ABS", "Neg": "NEG", "Floor": "FLOOR", "Ceil": "CEIL", "Sin": "SIN",
          "Cos": "COS", "Relu": "RELU"}


def layout_of(ctx, names, rank: int) -> tuple[int, ...]:
    """Layout for an op over ``names``: that of the first non-constant input of full rank."""
    for n in names:
        if n and ctx.const(n) is None and len(ctx.shape(n)) == rank:
            return ctx.perm(n)
    return identity(rank)


def binary(ctx, op: str, a: str, b: str, out: str, b_const: np.ndarray | None = None) -> int:
    """Emit ``op(a, b)`` for ONNX output ``out``; ``b_const`` replaces input ``b`` by a constant."""
    rank = len(ctx.shape(out))
    perm = layout_of(ctx, [a, b], rank)
    ta = ctx.broadcast(a, rank, perm)
    if b_const is not None:
        full = b_const.reshape((1,) * (rank - b_const.ndim) + b_const.shape)
        tb = ctx.const_tensor(f"{out}/operand", np.transpose(full, perm).astype(np.float32))
    else:
        tb = ctx.broadcast(b, rank, perm)
    return ctx.emit(op, [ta, tb], out, perm)


@handler(*_BINARY)
def arith(ctx, node):
    if np.dtype(ctx.dtype(node.output[0])).kind != "f":
        raise NotConvertible("only float arithmetic is supported")
    names = list(node.input)
    if len(names) == 1:
        return _alias(ctx, node)
    if len(names) > 2:
        if node.op_type not in ("Sum", "Max", "Min"):
            raise NotConvertible("more than two inputs")
        return _variadic(ctx, node)
    a, b = names
    op, const_b, const_a = _BINARY[node.op_type], ctx.const(b), ctx.const(a)
    if const_a is not None and const_b is None and node.op_type in ("Add", "Mul", "Max", "Min", "Sum"):
        a, b, const_b = b, a, const_a          # commutative: keep the live operand first
    if op == "DIV" and const_b is not None:
        return binary(ctx, "MUL", a, b, node.output[0], (1.0 / const_b.astype(np.float64)).astype(np.float32))
    if op == "POW" and const_b is not None and const_b.size == 1:
        e = float(const_b.ravel()[0])
        if e == 2.0:
            return binary(ctx, "MUL", a, a, node.output[0])
        if e == 0.5:
            return ctx.emit("SQRT", [ctx.tensor(a)], node.output[0], ctx.perm(a))
        if e == 1.0:
            return _alias(ctx, node)
    binary(ctx, op, a, b, node.output[0])


def _variadic(ctx, node):
    acc = node.input[0]
    for k, name in enumerate(node.input[1:], 1):
        out = node.output[0] if k == len(node.input) - 1 else f"{node.output[0]}/partial{k}"
        if out != node.output[0]:
            ctx.g.shapes[out] = tuple(np.broadcast_shapes(ctx.shape(acc), ctx.shape(name)))
            ctx.g.dtypes[out] = ctx.dtype(node.output[0])
        binary(ctx, _BINARY[node.op_type], acc, name, out)
        acc = out


def _alias(ctx, node):
    v = ctx.values.get(node.input[0])
    if v is None or v.flat_src is not None:
        t = ctx.tensor(node.input[0], identity(len(ctx.shape(node.input[0]))))
        ctx.define(node.output[0], t, identity(len(ctx.shape(node.output[0]))))
    else:
        ctx.define(node.output[0], v.tensor, v.perm)


@handler("Identity", "Dropout")
def identity_op(ctx, node):
    if node.op_type == "Dropout" and len([o for o in node.output if o]) > 1:
        raise NotConvertible("the Dropout mask output has no TFLite equivalent")
    _alias(ctx, node)


def unary(ctx, node, op: str, **options):
    x = node.input[0]
    ctx.emit(op, [ctx.tensor(x)], node.output[0], ctx.perm(x), **options)


@handler(*(set(_UNARY) | {"Relu"}))
def simple_unary(ctx, node):
    if node.op_type == "Relu" and ctx.fuse_activation(node, "RELU"):
        return
    unary(ctx, node, _UNARY[node.op_type])


@handler("Clip")
def clip(ctx, node):
    if len(node.input) > 1:   # opset >= 11: min/max are (optional) inputs
        lo = ctx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if (len(node.input) > 1 and node.input[1] and lo is None) or (len(node.input) > 2 and node.input[2] and hi is None):
            raise NotConvertible("Clip bounds must be constants")
        lo = float(lo) if lo is not None else -np.inf
        hi = float(hi) if hi is not None else np.inf
    else:
        lo, hi = float(ctx.attr(node, "min", -3.4e38)), float(ctx.attr(node, "max", 3.4e38))
    for (want_lo, want_hi), act in {(0.0, 6.0): "RELU6", (0.0, np.inf): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}.items():
        if lo == want_lo and (hi == want_hi or (want_hi == np.inf and hi >= 3.4e38)):
            if ctx.fuse_activation(node, act):
                return
            return unary(ctx, node, act)
    x, out = node.input[0], node.output[0]
    if lo > -3.4e38 and hi < 3.4e38:
        mid = f"{out}/lower"
        ctx.g.shapes[mid], ctx.g.dtypes[mid] = ctx.shape(out), ctx.dtype(out)
        binary(ctx, "MAXIMUM", x, "", mid, np.array(lo, np.float32))
        binary(ctx, "MINIMUM", mid, "", out, np.array(hi, np.float32))
    elif lo > -3.4e38:
        binary(ctx, "MAXIMUM", x, "", out, np.array(lo, np.float32))
    else:
        binary(ctx, "MINIMUM", x, "", out, np.array(hi, np.float32))


@handler("LeakyRelu")
def leaky_relu(ctx, node):
    unary(ctx, node, "LEAKY_RELU", alpha=float(ctx.attr(node, "alpha", 0.01)))


@handler("Elu")
def elu(ctx, node):
    if float(ctx.attr(node, "alpha", 1.0)) != 1.0:
        raise NotConvertible("TFLite ELU has alpha = 1 only")
    unary(ctx, node, "ELU")


@handler("Reciprocal")
def reciprocal(ctx, node):
    x, out = node.input[0], node.output[0]
    rank = len(ctx.shape(out))
    one = ctx.const_tensor(f"{out}/one", np.ones((1,) * rank, np.float32))
    ctx.emit("DIV", [one, ctx.tensor(x)], out, ctx.perm(x))


@handler("HardSigmoid")
def hard_sigmoid(ctx, node):
    # max(0, min(1, alpha*x + beta)) == relu6(6*alpha*x + 6*beta) / 6
    alpha, beta = float(ctx.attr(node, "alpha", 0.2)), float(ctx.attr(node, "beta", 0.5))
    x, out = node.input[0], node.output[0]
    shape, dt = ctx.shape(out), ctx.dtype(out)
    steps = [f"{out}/scaled", f"{out}/shifted", f"{out}/relu6"]
    for s in steps:
        ctx.g.shapes[s], ctx.g.dtypes[s] = shape, dt
    binary(ctx, "MUL", x, "", steps[0], np.array(6 * alpha, np.float32))
    binary(ctx, "ADD", steps[0], "", steps[1], np.array(6 * beta, np.float32))
    ctx.emit("RELU6", [ctx.tensor(steps[1])], steps[2], ctx.perm(steps[1]))
    binary(ctx, "MUL", steps[2], "", out, np.array(1 / 6, np.float32))


@handler("PRelu")
def prelu(ctx, node):
    x, out = node.input[0], node.output[0]
    slope = ctx.need_const(node, 1, "PRelu slope")
    rank, perm = len(ctx.shape(x)), ctx.perm(x)
    full = np.broadcast_to(slope.reshape((1,) * (rank - slope.ndim) + slope.shape), (1, *ctx.shape(x)[1:]))
    alpha = np.ascontiguousarray(np.transpose(full, perm)[0]).astype(np.float32)
    ctx.emit("PRELU", [ctx.tensor(x), ctx.const_tensor(f"{out}/alpha", alpha)], out, perm)


@handler("Softmax", "LogSoftmax")
def softmax(ctx, node):
    x, out = node.input[0], node.output[0]
    shape = ctx.shape(x)
    rank = len(shape)
    axis = int(ctx.attr(node, "axis", -1 if ctx.g.opset >= 13 else 1)) % rank
    if ctx.g.opset < 13 and any(d != 1 for d in shape[axis + 1:]):
        if int(np.prod(shape[axis:])) != shape[axis]:
            raise NotConvertible("opset < 13 Softmax over several trailing axes")
    perm = tuple(p for p in ctx.perm(x) if p != axis) + (axis,)
    if node.op_type == "Softmax":
        ctx.emit("SOFTMAX", [ctx.tensor(x, perm)], out, perm, beta=1.0)
    else:
        ctx.emit("LOG_SOFTMAX", [ctx.tensor(x, perm)], out, perm)


@handler("BatchNormalization")
def batchnorm(ctx, node):
    if len([o for o in node.output if o]) > 1:
        raise NotConvertible("training-mode BatchNormalization")
    gamma, beta, mean, var = (ctx.need_const(node, k, "BatchNormalization statistics").astype(np.float64)
                              for k in range(1, 5))
    scale = gamma / np.sqrt(var + float(ctx.attr(node, "epsilon", 1e-5)))
    shift = beta - mean * scale
    x, out = node.input[0], node.output[0]
    rank = len(ctx.shape(x))
    shape_c = (-1,) + (1,) * (rank - 2)
    mid = f"{out}/scaled"
    ctx.g.shapes[mid], ctx.g.dtypes[mid] = ctx.shape(out), ctx.dtype(out)
    binary(ctx, "MUL", x, "", mid, scale.reshape(shape_c).astype(np.float32))
    binary(ctx, "ADD", mid, "", out, shift.reshape(shape_c).astype(np.float32))
