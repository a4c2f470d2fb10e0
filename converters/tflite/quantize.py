"""Post-training quantization of the in-memory TFLite model: full-integer int8 and fp16 weights.

What it does:

* ``calibrate`` runs the float model (builtin kernels without delegates, all tensors preserved)
  on calibration samples and records each float tensor's min/max.
* ``to_int8`` rewrites a float model to full-integer int8: activations per-tensor asymmetric from
  calibration (ranges widened to include 0); CONV_2D / TRANSPOSE_CONV weights per-channel
  symmetric on axis 0, DEPTHWISE_CONV_2D on axis 3, FULLY_CONNECTED per-tensor symmetric; int32
  biases with ``scale = input_scale * weight_scale`` and zero point 0; SOFTMAX / LOGISTIC outputs
  at 1/256, -128 (TANH 1/128, 0; LOG_SOFTMAX 16/256, 127); ops that do not requantize (reshape,
  transpose, pools, pads, slices, resizes, max/min) keep their input's parameters. Float I/O:
  QUANTIZE after each input and DEQUANTIZE before each output. Ops without an int8 kernel, and
  a final concat/reshape/transpose that only writes graph outputs, run in float between
  DEQUANTIZE/QUANTIZE.
* Ranges read only by a saturating op (LOGISTIC, TANH, RELU6, ...) are clipped to the interval
  where that op responds (``saturated_ranges``): a detector's logits spanning [-110, 62] would
  otherwise cost 0.17 of probability per int8 step.
* Bias correction: ``calibrate`` can also record each weighted op's per-channel input mean; the
  rewrite then subtracts the mean shift the rounded weights cause from the bias
  (``bias_correction``; also for the weight-only ``to_int8_weights``).
* ``to_int16x8``: the same rewrite with int16 symmetric activations (4x headroom over the
  calibrated range), int8 weights and int64 biases; ops without an int16 kernel (HARD_SWISH)
  run in float. ``keep_float`` keeps chosen operators float in either scheme.
* ``to_fp16`` stores float constants as float16 behind DEQUANTIZE ops.

What it does not do: per-channel FULLY_CONNECTED, percentile/entropy calibration or
quantization-aware anything. ``int8_io`` drops the float I/O wrappers: inputs and outputs are
int8 with their own (scale, zero point) for integer-only targets.
"""

from __future__ import annotations

import copy

import numpy as np

from .schema_writer import Model, Operator, Quant

INT8_OPS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD", "SUB", "MUL",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "RESHAPE", "TRANSPOSE", "SOFTMAX", "LOGISTIC",
    "TANH", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "HARD_SWISH", "PAD", "PADV2", "SPLIT",
    "SPLIT_V", "STRIDED_SLICE", "MEAN", "MAXIMUM", "MINIMUM", "GATHER", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "MIRROR_PAD", "REDUCE_MAX", "REDUCE_MIN", "PRELU", "LOG_SOFTMAX",
    "BATCH_MATMUL", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "GELU",
}   # not SUM: the reference int8 SUM kernel gave wrong sums (off by ~60% of the range) here
# Output takes the (first) input's parameters: these kernels do not requantize.
SAME_AS_INPUT = {"RESHAPE", "TRANSPOSE", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD", "PADV2", "SPLIT",
                 "SPLIT_V", "STRIDED_SLICE", "GATHER", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
                 "MIRROR_PAD", "REDUCE_MAX", "REDUCE_MIN", "MAXIMUM", "MINIMUM", "DEPTH_TO_SPACE",
                 "SPACE_TO_DEPTH"}
# Data movement that writes only graph outputs runs in float: the output is float anyway, and a
# concat of differently scaled parts (boxes and scores) would share one int8 scale.
FLOAT_TAIL = {"CONCATENATION", "RESHAPE", "TRANSPOSE"}
# A concat shares one scale with its inputs only if their ranges differ by at most this factor.
SHARE_MAX_SPREAD = 4.0
# Kernels that read every input with the output's parameters.
MATCH_INPUTS = {"CONCATENATION", "MAXIMUM", "MINIMUM"}
FIXED_OUTPUT = {"SOFTMAX": (1 / 256, -128), "LOGISTIC": (1 / 256, -128), "TANH": (1 / 128, 0),
                "LOG_SOFTMAX": (16 / 256, 127)}
# 16x8 (int16 activations, int8 weights): ops with an int16 kernel in TFLite; the rest (HARD_SWISH,
# GELU, ...) run in float between DEQUANTIZE/QUANTIZE. int16 activations are symmetric (zero point 0).
INT16_OPS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD", "SUB", "MUL",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "RESHAPE", "TRANSPOSE", "SOFTMAX", "LOGISTIC",
    "TANH", "RELU", "RELU6", "LEAKY_RELU", "PAD", "SPLIT", "SPLIT_V", "STRIDED_SLICE", "MEAN",
    "MAXIMUM", "MINIMUM", "GATHER", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
}
FIXED_OUTPUT_16 = {"SOFTMAX": (1 / 32768, 0), "LOGISTIC": (1 / 32768, 0), "TANH": (1 / 32768, 0)}
# (weight input, bias input, data input, per-channel axis or None for per-tensor)
WEIGHTED = {"CONV_2D": (1, 2, 0, 0), "DEPTHWISE_CONV_2D": (1, 2, 0, 3), "TRANSPOSE_CONV": (1, 3, 2, 0),
            "FULLY_CONNECTED": (1, 2, 0, None)}


def _data_input(op) -> int:
    if op.op in WEIGHTED:
        return WEIGHTED[op.op][2]
    return 1 if op.op == "SPLIT" else 0     # SPLIT(axis, input)


def _float_tail(model: Model, op, consumers) -> bool:
    return op.op in FLOAT_TAIL and all(i in model.outputs and not consumers.get(i) for i in op.outputs)


def calibrate(model_bytes: bytes, model: Model, samples: list[dict[str, np.ndarray]],
              means: dict[int, np.ndarray] | None = None) -> dict[int, tuple[float, float]]:
    """Min/max of every float activation over ``samples``; when a ``means`` dict is given, it is
    filled with the per-channel (last axis) mean of each weighted op's data input (for
    :func:`bias_correction`)."""
    from .runtime import interpreter, run

    interp = interpreter(model_bytes, "builtin", preserve_all=True)
    watch = [i for i, t in enumerate(model.tensors) if t.dtype == "float32" and not t.is_const]
    fed = {op.inputs[WEIGHTED[op.op][2]] for op in model.operators if op.op in WEIGHTED} if means is not None else set()
    ranges: dict[int, list[float]] = {}
    sums: dict[int, np.ndarray] = {}
    for sample in samples:
        run(interp, sample)
        for i in watch:
            try:
                a = interp.get_tensor(i)
            except ValueError:
                continue
            lo, hi = float(a.min()), float(a.max())
            r = ranges.setdefault(i, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
            if i in fed:
                sums[i] = sums.get(i, 0.0) + a.reshape(-1, a.shape[-1]).astype(np.float64).mean(axis=0)
    if means is not None:
        means.update({i: v / len(samples) for i, v in sums.items()})
    return {i: (lo, hi) for i, (lo, hi) in ranges.items()}


def bias_correction(op, weights: np.ndarray, dequantized: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per-output-channel shift ``E[(W_q - W) x]`` that rounding the weights adds to ``op``'s output
    (empirical bias correction, Nagel et al. 2019, "Data-Free Quantization", sec. 4.2), from the
    calibration mean of each input channel; subtract it from the bias. Layers whose input has a
    large mean (e.g. PP-OCR cls's depthwise convs after a ReLU) otherwise shift by far more than
    one rounding step: weight-only int8 alone took PP-OCR cls to cosine 0.980, 0.9989 corrected.
    Zero padding at the borders and TRANSPOSE_CONV's uneven tap counts are averaged over."""
    dw = dequantized.astype(np.float64) - weights.astype(np.float64)
    if op.op == "DEPTHWISE_CONV_2D":            # [1, KH, KW, C*M], output o reads input o // M
        mult = dw.shape[3] // mean.size
        return (dw[0] * np.repeat(mean, mult)).sum(axis=(0, 1))
    if op.op == "FULLY_CONNECTED":              # [Cout, Cin]
        return dw @ mean
    shift = (dw * mean).sum(axis=(1, 2, 3))     # CONV_2D / TRANSPOSE_CONV: [Cout, KH, KW, Cin]
    if op.op == "TRANSPOSE_CONV":              # each output pixel sees KH*KW / (sh*sw) taps on average
        shift = shift / (op.options.get("stride_h", 1) * op.options.get("stride_w", 1))
    return shift


def asymmetric(lo: float, hi: float) -> Quant:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-6) / 255.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quant.make(scale, zp)


# int16 activations keep this much headroom over the calibrated range: values the calibration
# never saw (nudenet, 8 vs 16 calibration images: max error 0.14 vs 0.04 of the output range)
# stay unclipped, at the cost of 2 of the 15 magnitude bits.
HEADROOM_16 = 4.0


def symmetric16(lo: float, hi: float) -> Quant:
    return Quant.make(HEADROOM_16 * max(abs(lo), abs(hi), 1e-6) / 32767.0, 0)


def _quantize(data: np.ndarray, q: Quant, dtype, lo: int, hi: int) -> np.ndarray:
    shape = [1] * data.ndim
    if q.scale.size > 1:
        shape[q.dim] = -1
    s, z = q.scale.reshape(shape).astype(np.float64), q.zero_point.reshape(shape)
    return np.clip(np.round(data / s) + z, lo, hi).astype(dtype)


def _weights(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, Quant]:
    if axis is None:
        amax = np.array([np.abs(w).max()])
    else:
        amax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1e-8).astype(np.float32)
    q = Quant.make(scale, 0, axis or 0)
    return _quantize(w.astype(np.float64), q, np.int8, -127, 127), q


class _Rewriter:
    def __init__(self, model: Model, ranges: dict[int, tuple[float, float]], int8_io: bool = False,
                 bits: int = 8, means: dict[int, np.ndarray] | None = None, keep_float=()) -> None:
        self.m = copy.deepcopy(model)
        self.keep_float = {id(self.m.operators[k]) for k in keep_float}
        self.ranges = ranges
        self.means = means or {}
        self.int8_io = int8_io
        self.bits = bits
        self.adt = "int8" if bits == 8 else "int16"          # activation dtype
        self.kernels = INT8_OPS if bits == 8 else INT16_OPS
        self.fixed = FIXED_OUTPUT if bits == 8 else FIXED_OUTPUT_16
        self.qrange = (-128, 127) if bits == 8 else (-32768, 32767)
        self.ops: list = []
        self.deq: dict[int, int] = {}     # integer tensor -> float copy

    def params(self, lo: float, hi: float) -> Quant:
        return asymmetric(lo, hi) if self.bits == 8 else symmetric16(lo, hi)

    def act(self, idx: int, op=None) -> Quant:
        """Parameters for activation ``idx`` written by ``op``."""
        t = self.m.tensors[idx]
        if t.quant is not None:
            return t.quant
        if op is not None and op.op in self.fixed:
            q = Quant.make(*self.fixed[op.op])
        elif op is not None and op.op in SAME_AS_INPUT and self.m.tensors[op.inputs[_data_input(op)]].quant:
            q = self.m.tensors[op.inputs[_data_input(op)]].quant
        else:
            q = self.params(*self.ranges.get(idx, (0.0, 1.0)))
        t.dtype, t.quant = self.adt, q
        return q

    def const(self, idx: int, like: Quant | None = None) -> int:
        t = self.m.tensors[idx]
        q = like or self.params(float(t.data.min(initial=0)), float(t.data.max(initial=0)))
        return self.m.add_tensor(f"{t.name}/{self.adt}", t.shape, self.adt,
                                 _quantize(t.data, q, np.dtype(self.adt), *self.qrange), q)

    def weighted(self, op) -> None:
        wi, bi, xi, axis = WEIGHTED[op.op]
        in_q = self.m.tensors[op.inputs[xi]].quant
        mean = self.means.get(op.inputs[xi])
        w = self.m.tensors[op.inputs[wi]]
        wq, q = _weights(w.data, axis)
        op.inputs[wi] = self.m.add_tensor(f"{w.name}/int8", w.shape, "int8", wq, q)
        if len(op.inputs) > bi and op.inputs[bi] >= 0:
            b = self.m.tensors[op.inputs[bi]]
            bias = b.data.astype(np.float64)
            if mean is not None:
                shape = [1] * w.data.ndim
                shape[q.dim] = -1
                bias = bias - bias_correction(op, w.data, wq * q.scale.astype(np.float64).reshape(shape), mean)
            bq = Quant.make(in_q.scale[0] * q.scale, 0)
            bdt = "int32" if self.bits == 8 else "int64"      # 16x8 kernels take int64 biases
            lim = 2**31 if self.bits == 8 else 2**63
            data = np.clip(np.round(bias / bq.scale.astype(np.float64)),
                           -lim, lim - 1).astype(bdt)
            op.inputs[bi] = self.m.add_tensor(f"{b.name}/{bdt}", b.shape, bdt, data, bq)

    def float_copy(self, idx: int) -> int:
        if idx not in self.deq:
            t = self.m.tensors[idx]
            f = self.m.add_tensor(f"{t.name}/float", t.shape, "float32")
            self.ops.append(Operator("DEQUANTIZE", [idx], [f]))
            self.deq[idx] = f
        return self.deq[idx]

    def run(self) -> Model:
        m = self.m
        _global_pools_as_mean(m)
        consumers = m.consumers()
        new_inputs = []
        for idx in m.inputs:
            t = m.tensors[idx]
            if t.dtype != "float32":
                new_inputs.append(idx)
                continue
            q = self.params(*self.ranges.get(idx, (0.0, 1.0)))
            if self.int8_io:        # the caller feeds int8: no QUANTIZE in front
                t.dtype, t.quant = "int8", q
                new_inputs.append(idx)
                continue
            f = m.add_tensor(t.name, t.shape, "float32")
            t.name, t.dtype, t.quant = f"{t.name}/{self.adt}", self.adt, q
            self.ops.append(Operator("QUANTIZE", [f], [idx]))
            new_inputs.append(f)
        for op in m.operators:
            floats = [i for i in op.outputs if m.tensors[i].dtype == "float32"]
            if floats and (op.op not in self.kernels or _float_tail(m, op, consumers) or id(op) in self.keep_float):
                self.float_op(op, consumers)
                continue
            for k, i in enumerate(op.inputs):
                t = m.tensors[i] if i >= 0 else None
                if t is None or not t.is_const or t.dtype != "float32":
                    continue
                if op.op in WEIGHTED and k in WEIGHTED[op.op][:2]:
                    continue
                like = m.tensors[op.inputs[_data_input(op)]].quant if op.op in SAME_AS_INPUT else None
                op.inputs[k] = self.const(i, like)
            if op.op in WEIGHTED:
                self.weighted(op)
            if self.bits == 16 and op.op in ("ADD", "SUB"):
                op.options["pot_scale_int16"] = False      # general scales, not powers of two
            for i in op.outputs:
                if m.tensors[i].dtype == "float32":
                    self.act(i, op)
            if op.op in MATCH_INPUTS:
                self.match_inputs(op)
            self.ops.append(op)
        new_outputs = []
        for idx in m.outputs:
            t = m.tensors[idx]
            if self.int8_io and t.dtype == "float32":     # a float tail: quantize its result
                q = self.params(*self.ranges.get(idx, (0.0, 1.0)))
                f = m.add_tensor(f"{t.name}/float", t.shape, "float32")
                for op in self.ops:
                    op.outputs = [f if o == idx else o for o in op.outputs]
                    op.inputs = [f if i == idx else i for i in op.inputs]
                t.dtype, t.quant = self.adt, q
                self.ops.append(Operator("QUANTIZE", [f], [idx]))
                new_outputs.append(idx)
                continue
            if t.dtype != self.adt or self.int8_io:
                new_outputs.append(idx)
                continue
            f = m.add_tensor(t.name, t.shape, "float32")
            t.name = f"{t.name}/{self.adt}"
            self.ops.append(Operator("DEQUANTIZE", [idx], [f]))
            new_outputs.append(f)
        m.operators, m.inputs, m.outputs = self.ops, new_inputs, new_outputs
        m.prune()
        return m

    def match_inputs(self, op) -> None:
        """Requantize live inputs whose parameters differ from the output's (the kernel does not)."""
        q = self.m.tensors[op.outputs[0]].quant
        for k, i in enumerate(op.inputs):
            t = self.m.tensors[i]
            if t.quant is None or (np.array_equal(t.quant.scale, q.scale)
                                   and np.array_equal(t.quant.zero_point, q.zero_point)):
                continue
            if t.is_const:
                op.inputs[k] = self.m.add_tensor(f"{t.name}/requant", t.shape, self.adt,
                                                 _quantize(self._real(t), q, np.dtype(self.adt), *self.qrange), q)
                continue
            r = self.m.add_tensor(f"{t.name}/requant", t.shape, self.adt, quant=q)
            self.ops.append(Operator("QUANTIZE", [i], [r]))
            op.inputs[k] = r

    @staticmethod
    def _real(t) -> np.ndarray:
        s, z = t.quant.scale.astype(np.float64), t.quant.zero_point
        return (t.data.astype(np.float64) - z) * s

    def float_op(self, op, consumers) -> None:
        """Run ``op`` in float: dequantize its int8 inputs, quantize outputs that int8 ops read."""
        m = self.m
        op.inputs = [self.float_copy(i) if i >= 0 and m.tensors[i].dtype == self.adt and not m.tensors[i].is_const
                     else i for i in op.inputs]
        requant, outs = [], []
        for i in op.outputs:
            t = m.tensors[i]
            if t.dtype != "float32" or (i in m.outputs and not consumers.get(i)):
                outs.append(i)       # a float graph output stays float
                continue
            f = m.add_tensor(f"{t.name}/float", t.shape, "float32")
            self.act(i)
            self.deq[i] = f
            requant.append((f, i))
            outs.append(f)
        op.outputs = outs
        self.ops.append(op)
        self.ops.extend(Operator("QUANTIZE", [f], [i]) for f, i in requant)


def _global_pools_as_mean(m: Model) -> None:
    """Whole-image AVERAGE_POOL_2D (the float translation of GlobalAveragePool) becomes MEAN: the
    int8 average-pool kernels disagree with each other on large windows (576 elements gave cosine
    0.52..0.85 depending on the kernel), while int8 MEAN is exact to a step."""
    for op in m.operators:
        if op.op != "AVERAGE_POOL_2D":
            continue
        x, y = m.tensors[op.inputs[0]].shape, m.tensors[op.outputs[0]].shape
        o = op.options
        if (len(x) == 4 and list(y[1:3]) == [1, 1] and o.get("filter_height") == x[1] and o.get("filter_width") == x[2]
                and not o.get("fused_activation_function")):
            axes = m.add_const(f"{m.tensors[op.outputs[0]].name}/axes", np.array([1, 2], np.int32))
            op.op, op.inputs, op.options = "MEAN", [op.inputs[0], axes], {"keep_dims": True}


def shared_ranges(model: Model, ranges: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Widen ranges so that each CONCATENATION shares one scale with the tensors feeding it.

    A concat input produced through ops that keep their input's parameters (split, reshape...)
    is traced back to the tensor whose parameters are free; all those roots and the concat
    output form one group with the union range. Inputs with fixed parameters (e.g. LOGISTIC
    outputs) stay out and get a requantizing QUANTIZE later.
    """
    producer = {t: op for op in model.operators for t in op.outputs}
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    def root(i: int) -> int | None:
        while i in producer and producer[i].op in SAME_AS_INPUT:
            i = producer[i].inputs[_data_input(producer[i])]
        op = producer.get(i)
        if model.tensors[i].is_const or (op is not None and op.op in FIXED_OUTPUT):
            return None
        return i

    consumers = model.consumers()
    for op in model.operators:
        out = op.outputs[0]
        if op.op != "CONCATENATION" or _float_tail(model, op, consumers):
            continue
        roots = [r for r in map(root, op.inputs) if r is not None and r in ranges]
        widths = [max(ranges[r][1], 0.0) - min(ranges[r][0], 0.0) for r in roots]
        if widths and max(widths) > SHARE_MAX_SPREAD * max(min(widths), 1e-9):
            continue       # very different ranges: requantize at the concat instead of coarsening all inputs
        for r in roots:
            parent[find(r)] = find(out)
    groups: dict[int, list[float]] = {}
    for i in set(parent) | set(parent.values()):
        if i in ranges:
            lo, hi = ranges[i]
            g = groups.setdefault(find(i), [lo, hi])
            g[0], g[1] = min(g[0], lo), max(g[1], hi)
    widened = dict(ranges)
    for i in set(parent) | set(parent.values()):
        if find(i) in groups:
            widened[i] = tuple(groups[find(i)])
    return widened


# Input intervals outside which these ops saturate (their output no longer changes by more than
# one output step: sigmoid(-8) = 3.4e-4 < 1/256, tanh(4) = 1 - 6.7e-4 > 1 - 1/128).
SATURATES = {"LOGISTIC": (-8.0, 8.0), "TANH": (-4.0, 4.0), "RELU6": (0.0, 6.0), "RELU": (0.0, np.inf),
             "RELU_N1_TO_1": (-1.0, 1.0)}


def saturated_ranges(model: Model, ranges: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Clip the range of a tensor read only by saturating ops to the interval where they respond.

    A detector's logits may span [-110, 62] while LOGISTIC only distinguishes [-8, 8]: on the
    full range one int8 step is 0.67 logits (0.17 of probability near 0.5); clipped it is 0.06.
    Values beyond the interval saturate to its end, which those ops map to the same output.
    """
    consumers, out = model.consumers(), dict(ranges)
    for i, (lo, hi) in ranges.items():
        readers = consumers.get(i, [])
        kinds = {model.operators[k].op for k in readers}
        if not readers or i in model.outputs or len(kinds) != 1 or kinds.pop() not in SATURATES:
            continue
        a, b = SATURATES[model.operators[readers[0]].op]
        if hi > a and lo < b:
            out[i] = (max(lo, a), min(hi, b))
    return out


def to_int8(model: Model, ranges: dict[int, tuple[float, float]], int8_io: bool = False,
            means: dict[int, np.ndarray] | None = None, keep_float=()) -> Model:
    """Full-integer model; ``int8_io`` keeps inputs and outputs int8 (Edge TPU / microcontrollers);
    ``means`` (from :func:`calibrate`) turns on bias correction of the rounded weights;
    ``keep_float`` lists operator indices that stay float (see :func:`weight_sensitive_ops`)."""
    return _Rewriter(model, shared_ranges(model, saturated_ranges(model, ranges)), int8_io, means=means,
                     keep_float=keep_float).run()


def to_int16x8(model: Model, ranges: dict[int, tuple[float, float]],
               means: dict[int, np.ndarray] | None = None, keep_float=()) -> Model:
    """16x8 model: int16 activations (symmetric, per-tensor), int8 per-channel weights, int64
    biases, float I/O. 256x finer activation steps than int8, for models whose activations have
    outlier channels that per-tensor int8 cannot represent (PP-OCR); the runtime uses its
    reference/optimized integer kernels (XNNPACK has no 16x8 kernels)."""
    return _Rewriter(model, shared_ranges(model, saturated_ranges(model, ranges)), bits=16, means=means,
                     keep_float=keep_float).run()


def to_fp16(model: Model) -> Model:
    """Float constants stored as float16, each behind a DEQUANTIZE (version 3) to float32."""
    m = copy.deepcopy(model)
    front = []
    for idx, t in enumerate(list(m.tensors)):
        if t.is_const and t.dtype == "float32":
            half = m.add_tensor(f"{t.name}/fp16", t.shape, "float16", t.data.astype(np.float16))
            t.data = None
            front.append(Operator("DEQUANTIZE", [half], [idx]))
    m.operators = front + m.operators
    return m


def to_int8_weights(model: Model, means: dict[int, np.ndarray] | None = None) -> Model:
    """Weight-only int8 ("int8-dynamic" in profiles): the weights of CONV_2D / DEPTHWISE_CONV_2D /
    TRANSPOSE_CONV / FULLY_CONNECTED stored int8 (per-channel symmetric, FULLY_CONNECTED per-tensor)
    behind a DEQUANTIZE; activations and all other constants stay float32. The runtime dequantizes
    the weights once at load (XNNPACK folds the DEQUANTIZE), so the model is ~4x smaller and runs
    at float speed; no calibration data is needed. ``means`` (from :func:`calibrate`) adds bias
    correction: each layer's float bias absorbs the mean shift its rounded weights cause."""
    m = copy.deepcopy(model)
    front, done = [], {}
    for op in m.operators:
        if op.op not in WEIGHTED:
            continue
        wi, _, _, axis = WEIGHTED[op.op]
        idx = op.inputs[wi]
        t = m.tensors[idx]
        if not t.is_const or t.dtype != "float32":
            continue
        if idx not in done:
            data, q = _weights(t.data, axis)
            mean, bi = (means or {}).get(op.inputs[WEIGHTED[op.op][2]]), WEIGHTED[op.op][1]
            if mean is not None and len(op.inputs) > bi and op.inputs[bi] >= 0 and m.tensors[op.inputs[bi]].is_const:
                shape = [1] * t.data.ndim
                shape[q.dim] = -1
                b = m.tensors[op.inputs[bi]]
                shift = bias_correction(op, t.data, data * q.scale.astype(np.float64).reshape(shape), mean)
                b.data = (b.data.astype(np.float64) - shift).astype(np.float32)
            done[idx] = m.add_tensor(f"{t.name}/int8", t.shape, "int8", data, q)
            front.append(Operator("DEQUANTIZE", [done[idx]], [idx]))
            t.data = None
    m.operators = front + m.operators
    return m
