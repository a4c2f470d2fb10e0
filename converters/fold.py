"""Exact graph rewrites that onnxslim and onnxruntime's BASIC level leave in place.

* ``Conv → Mul(const) → Add(const)`` (per-tensor or per-output-channel constants, e.g. the
  "learnable affine blocks" of PP-LCNetV3 in PP-OCRv4 det) is folded into the Conv's weights and
  bias: ``(W*x + b)*k + c = (k·W)*x + (k·b + c)``.
* ``Mul(const) / Add(const)`` feeding an unpadded, ungrouped Conv (1×1 pointwise convs) is
  folded into that Conv's weights and bias.
* ``Div(x, s) → Mul(·, t)`` with scalar constants becomes one ``Mul(x, t/s)``.

Each removed elementwise op is one less float op — and, after static int8, one less
QLinearMul/QLinearAdd with its own requantization error. Only rewrites whose intermediate tensor
has exactly one consumer and is not a graph output are applied. Works on a ModelProto in place.
"""

from __future__ import annotations

import numpy as np


class _Graph:
    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self.g = model.graph
        self.np = numpy_helper
        graph_inputs = {i.name for i in self.g.input}  # an initializer that is also an input can be overridden
        self.inits = {t.name: t for t in self.g.initializer if t.name not in graph_inputs}
        self.outputs = {o.name for o in self.g.output}

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else self.np.to_array(t)

    def consumers(self, name: str) -> list:
        return [n for n in self.g.node if name in n.input]

    def single_consumer(self, name: str, op: str):
        if name in self.outputs:
            return None
        users = self.consumers(name)
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def other_const(self, node, name: str) -> np.ndarray | None:
        other = [i for i in node.input if i != name]
        return self.const(other[0]) if len(other) == 1 else None

    def set_init(self, name: str, value: np.ndarray) -> None:
        new = self.np.from_array(value.astype(np.float32), name)
        if name in self.inits:
            self.g.initializer.remove(self.inits[name])
        self.g.initializer.append(new)
        self.inits[name] = new

    def bypass(self, node, keep_output_of) -> None:
        """Remove ``node``; ``keep_output_of`` now produces ``node``'s output."""
        keep_output_of.output[0] = node.output[0]
        self.g.node.remove(node)


def _per_channel(k: np.ndarray, channels: int) -> np.ndarray | None:
    """A scalar or [C,1,1] / [1,C,1,1] constant as a [C] vector; None if it broadcasts otherwise
    (a 1-D [C] constant broadcasts along W in NCHW, not along channels)."""
    if k.size == 1 and k.ndim <= 4:
        return np.full(channels, float(k.reshape(-1)[0]), np.float32)
    if k.size == channels and (k.shape == (channels, 1, 1) or k.shape == (1, channels, 1, 1)):
        return k.reshape(-1).astype(np.float32)
    return None


def drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)


def fold_conv_affine(model) -> int:
    """Fold Mul/Add constants that follow a Conv into it; return how many ops were removed."""
    g = _Graph(model)
    removed, changed = 0, True
    while changed:
        changed = False
        for conv in [n for n in g.g.node if n.op_type == "Conv" and len(n.input) >= 2]:
            w = g.const(conv.input[1])
            if w is None or w.dtype != np.float32 or w.ndim != 4:
                continue
            nxt = g.single_consumer(conv.output[0], "Mul") or g.single_consumer(conv.output[0], "Add")
            if nxt is None:
                continue
            k = g.other_const(nxt, conv.output[0])
            k = None if k is None else _per_channel(k, w.shape[0])
            if k is None:
                continue
            b = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], np.float32)
            if b is None:
                continue
            tag = conv.output[0]
            if nxt.op_type == "Mul":
                w, b = w * k[:, None, None, None], b * k
                g.set_init(f"{tag}_folded_w", w)
                conv.input[1] = f"{tag}_folded_w"
            else:
                b = b + k
            g.set_init(f"{tag}_folded_b", b)
            if len(conv.input) > 2:
                conv.input[2] = f"{tag}_folded_b"
            else:
                conv.input.append(f"{tag}_folded_b")
            g.bypass(nxt, conv)
            removed += 1
            changed = True
    drop_unused_initializers(model)
    return removed


def _unpadded(conv) -> bool:
    attrs = {a.name: a for a in conv.attribute}
    if "pads" in attrs and any(attrs["pads"].ints):
        return False
    auto = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    group = attrs["group"].i if "group" in attrs else 1
    return auto in ("NOTSET", "VALID") and group == 1


def fold_affine_into_conv(model) -> int:
    """``Mul(x, a)`` / ``Add(x, c)`` (scalar or per-input-channel) feeding only an unpadded,
    ungrouped Conv are folded into it: ``W*(a·x + c) + b = (W·a)*x + (b + Σ W·c)``. Padding would
    make the border wrong (zeros are padded after the affine), so padded convs are left alone."""
    g = _Graph(model)
    removed, changed = 0, True
    while changed:
        changed = False
        for conv in [n for n in g.g.node if n.op_type == "Conv" and len(n.input) >= 2 and _unpadded(n)]:
            w = g.const(conv.input[1])
            if w is None or w.dtype != np.float32 or w.ndim != 4:
                continue
            prev = next((n for n in g.g.node if conv.input[0] in n.output and n.op_type in ("Mul", "Add")), None)
            if prev is None or g.single_consumer(prev.output[0], "Conv") is not conv:
                continue
            data = [i for i in prev.input if g.const(i) is None]
            k = g.other_const(prev, data[0]) if len(data) == 1 else None
            k = None if k is None else _per_channel(k, w.shape[1])
            if k is None:
                continue
            b = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], np.float32)
            if b is None:
                continue
            tag = conv.output[0]
            if prev.op_type == "Mul":
                w = w * k[None, :, None, None]
                g.set_init(f"{tag}_infold_w", w)
                conv.input[1] = f"{tag}_infold_w"
            else:
                b = b + (w * k[None, :, None, None]).sum(axis=(1, 2, 3))
            g.set_init(f"{tag}_infold_b", b)
            if len(conv.input) > 2:
                conv.input[2] = f"{tag}_infold_b"
            else:
                conv.input.append(f"{tag}_infold_b")
            conv.input[0] = data[0]
            g.g.node.remove(prev)
            removed += 1
            changed = True
    drop_unused_initializers(model)
    return removed


def fold_div_mul(model) -> int:
    """``Div(x, s) → Mul(·, t)`` with scalar constants → ``Mul(x, t/s)``; return how many Divs went."""
    g = _Graph(model)
    removed = 0
    for div in [n for n in g.g.node if n.op_type == "Div"]:
        s = g.const(div.input[1])
        mul = g.single_consumer(div.output[0], "Mul")
        if s is None or s.size != 1 or mul is None or not float(s.reshape(-1)[0]):
            continue
        t = g.other_const(mul, div.output[0])
        if t is None or t.size != 1:
            continue
        name = f"{mul.output[0]}_folded_scale"
        g.set_init(name, np.asarray(t, np.float32) / np.float32(s.reshape(-1)[0]))
        mul.input[:] = [div.input[0], name]
        g.g.node.remove(div)
        removed += 1
    drop_unused_initializers(model)
    return removed


def fold_all(model) -> dict:
    """Apply every fold in the order that lets one enable the next; return counts per fold."""
    return {"div_mul": fold_div_mul(model), "conv_affine": fold_conv_affine(model),
            "affine_conv": fold_affine_into_conv(model)}
