"""Translators for ONNX 2-D convolutions and pooling: Conv, ConvTranspose, MaxPool, AveragePool,
GlobalAveragePool, GlobalMaxPool.

What it does: reads NHWC activations; writes CONV_2D (OIHW -> OHWI weights), DEPTHWISE_CONV_2D
(``[C*M, 1, KH, KW] -> [1, KH, KW, C*M]`` with ``depth_multiplier = M``), grouped convolutions
as SPLIT + CONV_2D per group + CONCATENATION, TRANSPOSE_CONV (``[Cin, Cout, KH, KW] -> [Cout,
KH, KW, Cin]``, cropping or padding when ONNX pads are not SAME), and the pools. ONNX explicit pads
become ``SAME`` when they equal TensorFlow's SAME split, otherwise an explicit PAD/PADV2 before a
``VALID`` op; AveragePool windows that TFLite would count differently are rescaled exactly.

What it does not do: 3-D convolutions/pools (1-D ones arrive here lifted to 2-D by
:mod:`.onnx_prep`), dilated or grouped ConvTranspose, LpPool,
MaxPool's second (indices) output, ``auto_pad = SAME_LOWER`` with odd padding (falls back to PAD).
"""

from __future__ import annotations

import math

import numpy as np

from .context import NHWC, NotConvertible, handler
from .options import PADDING


def _spatial(ctx, node, kernel):
    """(strides, dilations, pads_begin, pads_end) of a 2-D node, auto_pad resolved."""
    x_shape, y_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if len(x_shape) != 4:
        raise NotConvertible(f"only 2-D (4-D tensor) {node.op_type} is supported, input rank is {len(x_shape)}")
    strides = list(ctx.attr(node, "strides", [1, 1]))
    dil = list(ctx.attr(node, "dilations", [1, 1]))
    pads = list(ctx.attr(node, "pads", [0, 0, 0, 0]))
    auto = ctx.attr(node, "auto_pad", "NOTSET")
    begin, end = pads[:2], pads[2:]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(2):
            b, e, _ = same_pads(x_shape[2 + i], kernel[i], strides[i], dil[i])
            begin.append(e if auto == "SAME_LOWER" else b)
            end.append(b if auto == "SAME_LOWER" else e)
    elif auto == "VALID":
        begin, end = [0, 0], [0, 0]
    # ceil_mode (pools): extend the end padding so that floor arithmetic gives ONNX's output size.
    for i in range(2):
        eff = (kernel[i] - 1) * dil[i] + 1
        need = (y_shape[2 + i] - 1) * strides[i] + eff - x_shape[2 + i] - begin[i]
        if need < 0 or need > end[i] + strides[i]:
            raise NotConvertible(f"cannot reproduce the output size {y_shape[2 + i]} with TFLite padding")
        end[i] = need
    return strides, dil, begin, end


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int, int]:
    """TensorFlow SAME padding (before, after, output size) along one axis."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2, out


def _padding_mode(x_shape, y_shape, kernel, strides, dil, begin, end) -> str | None:
    """'VALID', 'SAME', or None when only an explicit PAD reproduces ONNX's pads."""
    if not any(begin) and not any(end):
        return "VALID"
    for i in range(2):
        b, e, out = same_pads(x_shape[2 + i], kernel[i], strides[i], dil[i])
        if (b, e) != (begin[i], end[i]) or out != y_shape[2 + i]:
            return None
    return "SAME"


def _pad_nhwc(ctx, node, begin, end, value: float = 0.0) -> int:
    x = ctx.tensor(node.input[0], NHWC)
    n, c, h, w = ctx.shape(node.input[0])
    shape = [n, h + begin[0] + end[0], w + begin[1] + end[1], c]
    out = ctx.new_tensor(f"{node.output[0]}/pad", shape, ctx.dtype(node.input[0]))
    pads = ctx.int32(f"{node.output[0]}/pads", [[0, 0], [begin[0], end[0]], [begin[1], end[1]], [0, 0]])
    if value == 0.0:
        ctx.add_op("PAD", [x, pads], [out])
    else:
        ctx.add_op("PADV2", [x, pads, ctx.const_tensor(f"{node.output[0]}/pad_value",
                                                        np.array([value], np.float32))], [out])
    return out


def _conv_input(ctx, node, kernel, pad_value=0.0):
    x_shape, y_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    strides, dil, begin, end = _spatial(ctx, node, kernel)
    mode = _padding_mode(x_shape, y_shape, kernel, strides, dil, begin, end)
    if mode is None:
        return _pad_nhwc(ctx, node, begin, end, pad_value), "VALID", strides, dil, (begin, end)
    return ctx.tensor(node.input[0], NHWC), mode, strides, dil, None


@handler("Conv")
def conv(ctx, node):
    w = ctx.need_const(node, 1, "Conv weights").astype(np.float32)
    if w.ndim != 4:
        raise NotConvertible(f"only 2-D convolutions are supported (weight rank {w.ndim})")
    c_in = ctx.shape(node.input[0])[1]
    c_out = w.shape[0]
    group = int(ctx.attr(node, "group", 1))
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.need_const(node, 2, "Conv bias").astype(np.float32)
    else:
        bias = np.zeros(c_out, np.float32)
    x, mode, strides, dil, _ = _conv_input(ctx, node, w.shape[2:])
    opts = dict(padding=PADDING[mode], stride_h=strides[0], stride_w=strides[1],
                dilation_h_factor=dil[0], dilation_w_factor=dil[1])
    name = node.output[0]
    if group == 1:
        ins = [x, ctx.const_tensor(f"{name}/weights", w.transpose(0, 2, 3, 1)),
               ctx.const_tensor(f"{name}/bias", bias)]
        ctx.emit("CONV_2D", ins, name, NHWC, **opts)
    elif group == c_in and w.shape[1] == 1:
        ins = [x, ctx.const_tensor(f"{name}/weights", w.transpose(1, 2, 3, 0)),
               ctx.const_tensor(f"{name}/bias", bias)]
        ctx.emit("DEPTHWISE_CONV_2D", ins, name, NHWC, depth_multiplier=c_out // c_in, **opts)
    else:
        _grouped(ctx, node, x, w, bias, group, opts)


def _grouped(ctx, node, x, w, bias, group, opts):
    name, (n, _, ho, wo) = node.output[0], ctx.shape(node.output[0])
    t_in = ctx.m.tensors[x]
    parts = [ctx.new_tensor(f"{name}/group{g}_in", [*t_in.shape[:3], t_in.shape[3] // group])
             for g in range(group)]
    ctx.add_op("SPLIT", [ctx.int32(f"{name}/split_axis", 3), x], parts, num_splits=group)
    co = w.shape[0] // group
    outs = []
    for g in range(group):
        out = ctx.new_tensor(f"{name}/group{g}", [n, ho, wo, co])
        wg, bg = w[g * co:(g + 1) * co].transpose(0, 2, 3, 1), bias[g * co:(g + 1) * co]
        ctx.add_op("CONV_2D", [parts[g], ctx.const_tensor(f"{name}/weights{g}", wg),
                               ctx.const_tensor(f"{name}/bias{g}", bg)], [out], **opts)
        outs.append(out)
    ctx.emit("CONCATENATION", outs, name, NHWC, axis=3)


@handler("ConvTranspose")
def conv_transpose(ctx, node):
    w = ctx.need_const(node, 1, "ConvTranspose weights").astype(np.float32)
    if w.ndim != 4:
        raise NotConvertible("only 2-D ConvTranspose is supported")
    if int(ctx.attr(node, "group", 1)) != 1:
        raise NotConvertible("grouped ConvTranspose has no TFLite equivalent")
    if list(ctx.attr(node, "dilations", [1, 1])) != [1, 1]:
        raise NotConvertible("dilated ConvTranspose has no TFLite equivalent")
    n, c_in, h, wd = ctx.shape(node.input[0])
    yn, c_out, yh, yw = ctx.shape(node.output[0])
    kh, kw = w.shape[2:]
    sh, sw = ctx.attr(node, "strides", [1, 1])
    bias = (ctx.need_const(node, 2, "ConvTranspose bias").astype(np.float32)
            if len(node.input) > 2 and node.input[2] else np.zeros(c_out, np.float32))
    name = node.output[0]
    weights = ctx.const_tensor(f"{name}/weights", w.transpose(1, 2, 3, 0))
    ins = [None, weights, ctx.tensor(node.input[0], NHWC), ctx.const_tensor(f"{name}/bias", bias)]
    opts = dict(stride_h=sh, stride_w=sw)
    # TFLite SAME: output = in * stride, padding split like a forward conv from that size.
    same_ok = all((yh, yw)[i] == (h, wd)[i] * (sh, sw)[i] for i in range(2)) and all(
        _same_matches(ctx, node, i, (yh, yw)[i], (h, wd)[i], (kh, kw)[i], (sh, sw)[i]) for i in range(2))
    if same_ok:
        ins[0] = ctx.int32(f"{name}/output_shape", [n, yh, yw, c_out])
        ctx.emit("TRANSPOSE_CONV", ins, name, NHWC, padding=PADDING["SAME"], **opts)
        return
    full = [(h - 1) * sh + kh, (wd - 1) * sw + kw]
    ins[0] = ctx.int32(f"{name}/output_shape", [n, *full, c_out])
    raw = ctx.new_tensor(f"{name}/full", [n, *full, c_out])
    ctx.add_op("TRANSPOSE_CONV", ins, [raw], padding=PADDING["VALID"], **opts)
    begin = _ct_pads(ctx, node)[:2]
    ends = [begin[i] + (yh, yw)[i] for i in range(2)]
    short = [max(ends[i] - full[i], 0) for i in range(2)]   # output_padding past the full output
    if any(short):
        # Rows past the full output only hold the bias: pad with zeros, add the bias afterwards.
        raise NotConvertible("ConvTranspose output_padding beyond the kernel footprint is not supported")
    ctx.emit("STRIDED_SLICE", [raw, ctx.int32(f"{name}/begin", [0, *begin, 0]),
                               ctx.int32(f"{name}/end", [n, *ends, c_out]),
                               ctx.int32(f"{name}/strides", [1, 1, 1, 1])], name, NHWC)


def _ct_pads(ctx, node):
    pads = list(ctx.attr(node, "pads", [0, 0, 0, 0]))
    auto = ctx.attr(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        n, c, h, w = ctx.shape(node.input[0])
        _, _, yh, yw = ctx.shape(node.output[0])
        k = ctx.shape(node.input[1])[2:]
        s = ctx.attr(node, "strides", [1, 1])
        pads = [0, 0, 0, 0]
        for i, (size, out) in enumerate(((h, yh), (w, yw))):
            total = (size - 1) * s[i] + k[i] - out
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    return pads


def _same_matches(ctx, node, i, out, size, k, s) -> bool:
    pads = _ct_pads(ctx, node)
    total = max((size - 1) * s + k - out, 0)
    return (pads[i], pads[i + 2]) == (total // 2, total - total // 2)


@handler("MaxPool", "AveragePool")
def pool(ctx, node):
    if len([o for o in node.output if o]) > 1:
        raise NotConvertible("MaxPool indices output has no TFLite equivalent")
    kernel = list(ctx.attr(node, "kernel_shape"))
    if len(kernel) != 2:
        raise NotConvertible(f"only 2-D pooling is supported (kernel {kernel})")
    if list(ctx.attr(node, "dilations", [1, 1])) != [1, 1]:
        raise NotConvertible("dilated pooling has no TFLite equivalent")
    is_max = node.op_type == "MaxPool"
    x, mode, strides, _, explicit = _conv_input(ctx, node, kernel, -3.0e38 if is_max else 0.0)
    opts = dict(padding=PADDING[mode], stride_h=strides[0], stride_w=strides[1],
                filter_height=kernel[0], filter_width=kernel[1])
    name = node.output[0]
    if is_max or explicit is None:
        ctx.emit("MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D", [x], name, NHWC, **opts)
        return
    # Explicitly padded average: TFLite divides by the full window; rescale to ONNX's count.
    n, c, ho, wo = ctx.shape(name)
    raw = ctx.new_tensor(f"{name}/sum_avg", [n, ho, wo, c])
    ctx.add_op("AVERAGE_POOL_2D", [x], [raw], **opts)
    ratio = _avg_ratio(ctx, node, kernel, strides, explicit)
    ctx.emit("MUL", [raw, ctx.const_tensor(f"{name}/count_ratio", ratio)], name, NHWC)


def _avg_ratio(ctx, node, kernel, strides, explicit):
    """kernel area / number of elements ONNX averages, per output position, shape [1, HO, WO, 1]."""
    (begin, end), (_, _, h, w) = explicit, ctx.shape(node.input[0])
    include = int(ctx.attr(node, "count_include_pad", 0))
    _, _, ho, wo = ctx.shape(node.output[0])
    pads = list(ctx.attr(node, "pads", [0, 0, 0, 0]))
    mask = np.zeros((h + begin[0] + end[0], w + begin[1] + end[1]), np.float32)
    if include:   # ONNX counts the declared pads, not the extra ceil_mode padding
        mask[begin[0] - pads[0]:begin[0] + h + pads[2], begin[1] - pads[1]:begin[1] + w + pads[3]] = 1
    else:
        mask[begin[0]:begin[0] + h, begin[1]:begin[1] + w] = 1
    counts = np.array([[mask[i * strides[0]:i * strides[0] + kernel[0], j * strides[1]:j * strides[1] + kernel[1]].sum()
                        for j in range(wo)] for i in range(ho)], np.float32)
    return (kernel[0] * kernel[1] / np.maximum(counts, 1)).reshape(1, ho, wo, 1)


@handler("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx, node):
    x, out = node.input[0], node.output[0]
    rank = len(ctx.shape(x))
    if rank < 3:
        raise NotConvertible("global pooling needs a spatial axis")
    op = "MEAN" if node.op_type == "GlobalAveragePool" else "REDUCE_MAX"
    perm = NHWC if rank == 4 else ctx.perm(x)
    if rank == 4:        # a full-window pool: XNNPACK/TFLite sum it more accurately than MEAN
        _, _, h, w = ctx.shape(x)
        pool = "AVERAGE_POOL_2D" if op == "MEAN" else "MAX_POOL_2D"
        ctx.emit(pool, [ctx.tensor(x, NHWC)], out, NHWC, padding=PADDING["VALID"], stride_w=1, stride_h=1,
                 filter_width=w, filter_height=h, fused_activation_function=0)
        return
    axes = [perm.index(a) for a in range(2, rank)]
    ctx.emit(op, [ctx.tensor(x, perm), ctx.int32(f"{out}/axes", axes)], out, perm, keep_dims=True)
