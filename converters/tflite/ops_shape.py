"""Translators for ONNX layout and data-movement ops.

What it does: Reshape / Flatten / Squeeze / Unsqueeze (kept in the current layout when only unit
axes change, kept lazy when flattening an NHWC tensor so a following FULLY_CONNECTED absorbs the
order, otherwise TRANSPOSE back to the ONNX layout + RESHAPE), Transpose (free: it only changes
the recorded layout), Concat, Split, Slice (STRIDED_SLICE), Pad (PAD / PADV2 / MIRROR_PAD),
Resize and Upsample (nearest and bilinear, 4-D), Gather with constant indices, Reduce{Mean,Max,
Min,Sum}, float Cast, DepthToSpace (DCR, and CRD through a channel GATHER), SpaceToDepth, Tile
and Expand. Axes are remapped into the stored layout.

What it does not do: Pad ``edge`` mode or negative pads, cubic or antialiased Resize, Resize of
the batch or channel axes, data-dependent shapes (everything here is static after folding).
"""

from __future__ import annotations

import numpy as np

from .context import NHWC, NotConvertible, Value, handler, identity
from .options import MIRROR_PAD_MODE


def _unit_axes_perm(in_shape, out_shape, in_perm):
    """Layout for ``out`` so that a plain RESHAPE of the stored input is correct, or None."""
    src = [a for a in range(len(in_shape)) if in_shape[a] != 1]
    dst = [b for b in range(len(out_shape)) if out_shape[b] != 1]
    if [in_shape[a] for a in src] != [out_shape[b] for b in dst]:
        return None
    mapping = dict(zip(src, dst))
    order = [mapping[a] for a in in_perm if in_shape[a] != 1]
    ones = [b for b in range(len(out_shape)) if out_shape[b] == 1]
    candidates = [identity(len(out_shape))] + ([NHWC] if len(out_shape) == 4 else [])
    for cand in candidates:
        if [b for b in cand if out_shape[b] != 1] == order:
            return cand
    return tuple(ones + order)


def reshape_to(ctx, src: str, out: str) -> None:
    in_shape, out_shape = ctx.shape(src), ctx.shape(out)
    in_perm = ctx.perm(src)
    perm = _unit_axes_perm(in_shape, out_shape, in_perm)
    if perm is None and len(out_shape) == 2 and in_perm[0] == 0 and out_shape[0] == in_shape[0] \
            and len(in_shape) > 2 and ctx.values.get(src) is not None:
        # Flatten of a permuted tensor: keep it lazy, a FULLY_CONNECTED can fold the order.
        stored = ctx.tensor(src)
        t = ctx.new_tensor(f"{out}/stored_order", out_shape, ctx.dtype(out))
        ctx.add_op("RESHAPE", [stored, ctx.int32(f"{out}/shape", out_shape)], [t])
        order = np.arange(int(np.prod(in_shape[1:]))).reshape(in_shape[1:])
        flat = np.transpose(order, [p - 1 for p in in_perm[1:]]).ravel()
        ctx.values[out] = Value(t, identity(2), flat_src=src, flat_perm=flat)
        return
    if perm is None:
        perm = identity(len(out_shape))
        x = ctx.tensor(src, identity(len(in_shape)))
    else:
        x = ctx.tensor(src)
    stored_shape = [out_shape[p] for p in perm]
    ctx.emit("RESHAPE", [x, ctx.int32(f"{out}/shape", stored_shape)], out, perm)


@handler("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx, node):
    reshape_to(ctx, node.input[0], node.output[0])


@handler("Transpose")
def transpose(ctx, node):
    x, out = node.input[0], node.output[0]
    rank = len(ctx.shape(x))
    p = list(ctx.attr(node, "perm", list(range(rank))[::-1]))
    q = ctx.perm(x)
    p_inv = np.argsort(p)
    r = tuple(int(p_inv[q[i]]) for i in range(rank))
    ctx.define(out, ctx.tensor(x), r)


@handler("Concat")
def concat(ctx, node):
    out = node.output[0]
    rank = len(ctx.shape(out))
    axis = int(ctx.attr(node, "axis")) % rank
    names = [n for n in node.input if n and int(np.prod(ctx.shape(n))) > 0]
    perm = next((ctx.perm(n) for n in names if ctx.const(n) is None), identity(rank))
    tensors = [ctx.tensor(n, perm, dtype="float32" if ctx.dtype(out).kind == "f" else None) for n in names]
    if len(tensors) == 1:
        ctx.define(out, tensors[0], perm)
        return
    ctx.emit("CONCATENATION", tensors, out, perm, axis=perm.index(axis))


@handler("Split")
def split(ctx, node):
    x = node.input[0]
    shape = ctx.shape(x)
    axis = int(ctx.attr(node, "axis", 0)) % len(shape)
    outs = [o for o in node.output]
    sizes = [ctx.shape(o)[axis] for o in outs]
    perm = ctx.perm(x)
    stored_axis = perm.index(axis)
    tensors = []
    for o in outs:
        s = ctx.shape(o)
        tensors.append(ctx.new_tensor(o, [s[p] for p in perm], ctx.dtype(o)))
    xt = ctx.tensor(x)
    if len(set(sizes)) == 1:
        k = ctx.add_op("SPLIT", [ctx.int32(f"{outs[0]}/axis", stored_axis), xt], tensors, num_splits=len(outs))
    else:
        k = ctx.add_op("SPLIT_V", [xt, ctx.int32(f"{outs[0]}/sizes", sizes), ctx.int32(f"{outs[0]}/axis", stored_axis)],
                       tensors, num_splits=len(outs))
    for o, t in zip(outs, tensors):
        ctx.define(o, t, perm, producer=k)


@handler("Slice")
def slice_(ctx, node):
    x, out = node.input[0], node.output[0]
    shape = ctx.shape(x)
    rank = len(shape)
    if len(node.input) > 1:
        starts, ends = ctx.need_const(node, 1, "Slice starts"), ctx.need_const(node, 2, "Slice ends")
        axes = ctx.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
        steps = ctx.const(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(len(starts), np.int64)
        if axes is None or steps is None:
            raise NotConvertible("Slice axes and steps must be constants")
    else:
        starts, ends = ctx.attr(node, "starts"), ctx.attr(node, "ends")
        axes = ctx.attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    end_mask = 0
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % rank
        b, e2, st = slice(int(max(min(s, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)), int(st)).indices(shape[a])
        begin[a], end[a], stride[a] = b, e2, st
    perm = ctx.perm(x)
    sb, se, ss = ([v[p] for p in perm] for v in (begin, end, stride))
    for i, p in enumerate(perm):
        if stride[p] < 0 and end[p] < 0:
            end_mask |= 1 << i
            se[i] = 0
    ctx.emit("STRIDED_SLICE", [ctx.tensor(x), ctx.int32(f"{out}/begin", sb), ctx.int32(f"{out}/end", se),
                               ctx.int32(f"{out}/strides", ss)], out, perm, end_mask=end_mask)


@handler("Pad")
def pad(ctx, node):
    x, out = node.input[0], node.output[0]
    rank = len(ctx.shape(x))
    if len(node.input) > 1:
        pads = ctx.need_const(node, 1, "Pad pads").astype(np.int64)
        value = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.array(0.0)
        if len(node.input) > 3 and node.input[3]:
            axes = [int(a) % rank for a in ctx.need_const(node, 3, "Pad axes")]
            full = np.zeros(2 * rank, np.int64)
            for k, a in enumerate(axes):
                full[a], full[a + rank] = pads[k], pads[k + len(axes)]
            pads = full
    else:
        pads, value = np.array(ctx.attr(node, "pads"), np.int64), np.array(ctx.attr(node, "value", 0.0))
    if value is None:
        raise NotConvertible("the Pad value must be a constant")
    if (pads < 0).any():
        raise NotConvertible("negative pads (cropping)")
    mode = ctx.attr(node, "mode", "constant")
    perm = ctx.perm(x)
    paddings = [[int(pads[p]), int(pads[p + rank])] for p in perm]
    ins = [ctx.tensor(x), ctx.int32(f"{out}/paddings", paddings)]
    if mode == "reflect":
        ctx.emit("MIRROR_PAD", ins, out, perm, mode=MIRROR_PAD_MODE["REFLECT"])
    elif mode != "constant":
        raise NotConvertible(f"Pad mode {mode!r} has no TFLite equivalent")
    elif float(value) == 0.0:
        ctx.emit("PAD", ins, out, perm)
    else:
        ins.append(ctx.const_tensor(f"{out}/pad_value", np.array([float(value)], np.float32)))
        ctx.emit("PADV2", ins, out, perm)


@handler("Resize", "Upsample")
def resize(ctx, node):
    x, out = node.input[0], node.output[0]
    (n, c, h, w), (n2, c2, ho, wo) = ctx.shape(x), ctx.shape(out)
    if (n, c) != (n2, c2):
        raise NotConvertible("Resize of the batch or channel axis")
    mode = ctx.attr(node, "mode", "nearest")
    coord = ctx.attr(node, "coordinate_transformation_mode", "asymmetric" if node.op_type == "Upsample"
                     or ctx.g.opset < 11 else "half_pixel")
    nearest = ctx.attr(node, "nearest_mode", "round_prefer_floor")
    if int(ctx.attr(node, "antialias", 0)) and (ho < h or wo < w):
        raise NotConvertible("antialiased downscaling")
    if mode == "linear":
        op = "RESIZE_BILINEAR"
        if coord == "pytorch_half_pixel" and min(ho, wo) > 1:
            coord = "half_pixel"
        flags = {"half_pixel": (False, True), "align_corners": (True, False), "asymmetric": (False, False)}
        if coord not in flags:
            raise NotConvertible(f"linear Resize with coordinate_transformation_mode {coord!r}")
    elif mode == "nearest":
        op = "RESIZE_NEAREST_NEIGHBOR"
        integer = ho % h == 0 and wo % w == 0
        if coord == "asymmetric" and nearest == "floor":
            flags = {coord: (False, False)}
        elif coord == "tf_half_pixel_for_nn" and nearest == "floor":
            flags = {coord: (False, True)}
        elif coord in ("half_pixel", "pytorch_half_pixel") and (nearest == "round_prefer_ceil" or integer):
            flags = {coord: (False, True)}
        elif coord == "asymmetric" and integer:     # integer upscale: every rounding mode picks floor
            flags = {coord: (False, False)}
        else:
            raise NotConvertible(f"nearest Resize with {coord!r} / {nearest!r}")
    else:
        raise NotConvertible(f"Resize mode {mode!r} has no TFLite equivalent")
    align, half = flags[coord]
    ctx.emit(op, [ctx.tensor(x, NHWC), ctx.int32(f"{out}/size", [ho, wo])], out, NHWC,
             align_corners=align, half_pixel_centers=half)


@handler("Gather")
def gather(ctx, node):
    x, out = node.input[0], node.output[0]
    idx = ctx.need_const(node, 1, "Gather indices")
    shape = ctx.shape(x)
    axis = int(ctx.attr(node, "axis", 0)) % len(shape)
    idx = np.where(idx < 0, idx + shape[axis], idx).astype(np.int32)
    perm = ctx.perm(x)
    i = perm.index(axis)

    def out_axis(a):
        return a if a < axis else a - 1 + idx.ndim
    out_perm = tuple([out_axis(a) for a in perm[:i]] + [axis + k for k in range(idx.ndim)]
                     + [out_axis(a) for a in perm[i + 1:]])
    ctx.emit("GATHER", [ctx.tensor(x), ctx.int32(f"{out}/indices", idx)], out, out_perm, axis=i)


_REDUCE = {"ReduceMean": "MEAN", "ReduceMax": "REDUCE_MAX", "ReduceMin": "REDUCE_MIN", "ReduceSum": "SUM"}


@handler(*_REDUCE)
def reduce(ctx, node):
    x, out = node.input[0], node.output[0]
    rank = len(ctx.shape(x))
    axes = ctx.attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.need_const(node, 1, f"{node.op_type} axes")
    if axes is None or len(axes) == 0:
        if int(ctx.attr(node, "noop_with_empty_axes", 0)):
            return ctx.define(out, ctx.tensor(x), ctx.perm(x))
        axes = range(rank)
    axes = sorted({int(a) % rank for a in axes})
    keep = bool(int(ctx.attr(node, "keepdims", 1)))
    perm = ctx.perm(x)
    if keep:
        out_perm = perm
    else:
        rest = [p for p in perm if p not in axes]
        out_perm = tuple(p - sum(a < p for a in axes) for p in rest)
    ctx.emit(_REDUCE[node.op_type], [ctx.tensor(x), ctx.int32(f"{out}/axes", [perm.index(a) for a in axes])],
             out, out_perm, keep_dims=keep)


@handler("Cast")
def cast(ctx, node):
    x, out = node.input[0], node.output[0]
    src, dst = ctx.dtype(x), ctx.dtype(out)
    if src.kind == "f" and dst.kind == "f":
        v = ctx.values.get(x)
        if v is not None and v.flat_src is None:
            return ctx.define(out, v.tensor, v.perm)
    raise NotConvertible(f"Cast {src} -> {dst} inside the model (only float -> float is supported)")


@handler("DepthToSpace", "SpaceToDepth")
def depth_space(ctx, node):
    x, out = node.input[0], node.output[0]
    if len(ctx.shape(x)) != 4:
        raise NotConvertible(f"{node.op_type} needs a 4-D tensor")
    bs = int(ctx.attr(node, "blocksize"))
    src = ctx.tensor(x, NHWC)
    if node.op_type == "SpaceToDepth":
        return ctx.emit("SPACE_TO_DEPTH", [src], out, NHWC, block_size=bs)
    if ctx.attr(node, "mode", "DCR") == "CRD":
        # CRD reads channel c*bs*bs + i*bs + j where DCR reads (i*bs + j)*C + c: gather channels first.
        c = ctx.shape(out)[1]
        order = np.arange(c * bs * bs).reshape(c, bs, bs).transpose(1, 2, 0).ravel()
        n, _, h, w = ctx.shape(x)
        dcr = ctx.scratch(out, "dcr_channels", x)
        ctx.emit("GATHER", [src, ctx.int32(f"{out}/dcr_order", order)], dcr, NHWC, axis=3)
        src = ctx.tensor(dcr)
    ctx.emit("DEPTH_TO_SPACE", [src], out, NHWC, block_size=bs)


@handler("Tile", "Expand")
def tile(ctx, node):
    x, out = node.input[0], node.output[0]
    out_shape = ctx.shape(out)
    rank = len(out_shape)
    perm = ctx.perm(x) if len(ctx.shape(x)) == rank else tuple(range(rank))
    src = ctx.broadcast(x, rank, perm)
    have = ctx.m.tensors[src].shape
    want = [out_shape[p] for p in perm]
    if any(w % h for w, h in zip(want, have)):
        raise NotConvertible(f"cannot tile {have} to {want}")
    multiples = [w // h for w, h in zip(want, have)]
    if all(m == 1 for m in multiples):
        return ctx.define(out, src, perm)
    ctx.emit("TILE", [src, ctx.int32(f"{out}/multiples", multiples)], out, perm)
