"""Each ONNX op translation checked against onnxruntime on tiny single-op graphs.

Every case converts to fp32 TFLite and runs under both op resolvers (XNNPACK via AUTO, and the
reference kernels); most also convert to int8-full (calibrated on the same inputs) and must stay
within a few quantization steps. ``conv`` cases put a 1x1 Conv in front so the op sees an NHWC
activation, which is what exercises the axis/layout remapping.
"""

from __future__ import annotations

import numpy as np
import pytest

import onnx  # noqa: E402  (host extra: a missing package must fail, not skip)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from converters.tflite import convert_onnx_to_tflite  # noqa: E402
from converters.tflite.verify import run_onnx, run_tflite  # noqa: E402

RNG = np.random.default_rng(7)


def w(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


class Case:
    def __init__(self, id, nodes, inputs, inits=None, conv=False, int8=True, positive=False, opset=17,
                 int8_tol=0.03, resolvers=("auto", "ref"), int8_resolvers=None):
        self.id, self.nodes, self.inputs, self.inits = id, nodes, inputs, inits or {}
        self.conv, self.int8, self.positive, self.opset, self.int8_tol = conv, int8, positive, opset, int8_tol
        self.resolvers = resolvers
        self.int8_resolvers = int8_resolvers or resolvers

    def build(self, path):
        nodes, inits = list(self.nodes), dict(self.inits)
        inputs = []
        for name, shape in self.inputs.items():
            src = name
            if self.conv:   # a 1x1 Conv first: the op under test reads an NHWC activation
                src = f"{name}_raw"
                c = shape[1]
                inits[f"{name}_pw"] = (np.eye(c, dtype=np.float32) + w(c, c, scale=0.1)).reshape(c, c, 1, 1)
                inits[f"{name}_pb"] = w(c, scale=0.1)
                nodes.insert(0, helper.make_node("Conv", [src, f"{name}_pw", f"{name}_pb"], [name]))
            inputs.append(helper.make_tensor_value_info(src, TensorProto.FLOAT, list(shape)))
        produced = {o for n in nodes for o in n.output}
        consumed = {i for n in nodes for i in n.input}
        outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                   for o in nodes[-1].output if o in produced - consumed or o == nodes[-1].output[0]]
        graph = helper.make_graph(nodes, self.id, inputs, outputs,
                                  [numpy_helper.from_array(v, k) for k, v in inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        onnx.save(model, str(path))
        feeds = {}
        for inp in inputs:
            shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            x = RNG.standard_normal([8] + shape[1:]).astype(np.float32)
            feeds[inp.name] = np.abs(x) + 0.1 if self.positive else x
        return feeds


def N(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


X4 = {"x": (1, 4, 8, 8)}
X4b = {"x": (1, 4, 8, 8), "z": (1, 4, 8, 8)}
CASES = [
    # convolutions
    Case("conv_pad1", [N("Conv", "xWB", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], X4, {"W": w(6, 4, 3, 3), "B": w(6)}),
    Case("conv_stride2_pad1", [N("Conv", "xWB", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], X4,
         {"W": w(6, 4, 3, 3), "B": w(6)}),
    Case("conv_same_upper_s2", [N("Conv", "xW", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")], X4,
         {"W": w(6, 4, 3, 3)}),
    Case("conv_asym_pads", [N("Conv", "xWB", kernel_shape=[2, 3], pads=[0, 1, 1, 2])], X4, {"W": w(5, 4, 2, 3), "B": w(5)}),
    Case("conv_dilated", [N("Conv", "xWB", kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])], X4,
         {"W": w(6, 4, 3, 3), "B": w(6)}),
    Case("depthwise", [N("Conv", "xWB", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4)], X4, {"W": w(4, 1, 3, 3), "B": w(4)}),
    Case("depthwise_m2_s2", [N("Conv", "xWB", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=4)], X4,
         {"W": w(8, 1, 3, 3), "B": w(8)}),
    Case("grouped_conv", [N("Conv", "xWB", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)], X4, {"W": w(6, 2, 3, 3), "B": w(6)}),
    Case("conv_relu_fused", [N("Conv", "xWB", ["c"], kernel_shape=[1, 1]), N("Relu", "c")], X4, {"W": w(6, 4, 1, 1), "B": w(6)}),
    Case("conv_bn_folded", [N("Conv", "xW", ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), N("BatchNormalization", ["c", "g", "b", "m", "v"])],
         X4, {"W": w(6, 4, 3, 3), "g": w(6) + 1, "b": w(6), "m": w(6), "v": np.abs(w(6)) + 0.5}),
    Case("convtranspose_k2s2", [N("ConvTranspose", "xWB", kernel_shape=[2, 2], strides=[2, 2])], X4, {"W": w(4, 3, 2, 2), "B": w(3)}),
    Case("convtranspose_k4s2p1", [N("ConvTranspose", "xWB", kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])], X4,
         {"W": w(4, 3, 4, 4), "B": w(3)}),
    Case("convtranspose_k3s2_outpad", [N("ConvTranspose", "xW", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                         output_padding=[1, 1])], X4, {"W": w(4, 3, 3, 3)}),
    Case("conv1d_chain", [N("Conv", "xWB", ["c"], kernel_shape=[3], pads=[1, 1]), N("Relu", "c", ["r"]),
                          N("Conv", "rVB", ["d"], kernel_shape=[3], strides=[2], pads=[1, 1]), N("MaxPool", "d", kernel_shape=[2], strides=[2])],
         {"x": (1, 4, 16)}, {"W": w(4, 4, 3), "V": w(4, 4, 3), "B": w(4)}),
    Case("conv1d_global_avg", [N("Conv", "xWB", ["c"], kernel_shape=[3]), N("GlobalAveragePool", "c")], {"x": (1, 4, 16)},
         {"W": w(5, 4, 3), "B": w(5)}),
    Case("upsample_opset9", [N("Upsample", "xs", mode="nearest")], X4, {"s": np.array([1, 1, 2, 2], np.float32)}, opset=9, conv=True),
    Case("conv_clip6_fused", [N("Conv", "xW", ["c"], kernel_shape=[1, 1]), N("Clip", ["c", "lo", "hi"])], X4,
         {"W": w(6, 4, 1, 1), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}),
    Case("convtranspose_same_upper", [N("ConvTranspose", "xW", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")], X4,
         {"W": w(4, 3, 3, 3)}),
    Case("convtranspose_relu_fused", [N("ConvTranspose", "xWB", ["c"], kernel_shape=[2, 2], strides=[2, 2]), N("Relu", "c")],
         X4, {"W": w(4, 3, 2, 2), "B": w(3)}),
    # pooling
    Case("maxpool_k2s2", [N("MaxPool", "x", kernel_shape=[2, 2], strides=[2, 2])], X4, conv=True),
    Case("maxpool_k3s2p1", [N("MaxPool", "x", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], X4, conv=True),
    Case("maxpool_k5s1p2", [N("MaxPool", "x", kernel_shape=[5, 5], pads=[2, 2, 2, 2])], X4),
    Case("maxpool_ceil", [N("MaxPool", "x", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], {"x": (1, 4, 9, 9)}),
    Case("avgpool_k2s2", [N("AveragePool", "x", kernel_shape=[2, 2], strides=[2, 2])], X4, conv=True),
    Case("avgpool_same_exclude_pad", [N("AveragePool", "x", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], X4),
    Case("avgpool_include_pad", [N("AveragePool", "x", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                   count_include_pad=1)], X4),
    Case("global_avgpool", [N("GlobalAveragePool", "x")], X4, conv=True),
    Case("global_maxpool", [N("GlobalMaxPool", "x")], X4),
    # activations
    Case("relu", [N("Relu", "x")], X4, conv=True),
    Case("clip_relu6", [N("Clip", ["x", "lo", "hi"])], X4, {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}),
    Case("clip_generic", [N("Clip", ["x", "lo", "hi"])], X4, {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}),
    Case("clip_opset10", [N("Clip", "x", min=-1.0, max=1.0)], X4, opset=10),
    Case("sigmoid", [N("Sigmoid", "x")], X4, conv=True),
    Case("silu", [N("Sigmoid", "x", ["s"]), N("Mul", ["x", "s"])], X4, conv=True),
    Case("tanh", [N("Tanh", "x")], X4),
    Case("hardswish", [N("HardSwish", "x")], X4),
    Case("hardsigmoid", [N("HardSigmoid", "x", alpha=0.2, beta=0.5)], X4),
    Case("leakyrelu", [N("LeakyRelu", "x", alpha=0.1)], X4, conv=True),
    # The reference op resolver has no ELU kernel (the builtin one has).
    Case("elu", [N("Elu", "x")], X4, resolvers=("auto",)),
    Case("prelu", [N("PRelu", "xs")], X4, {"s": w(4, 1, 1)}, conv=True),
    Case("exp", [N("Exp", "x")], X4),
    Case("log", [N("Log", "x")], X4, positive=True),
    Case("sqrt", [N("Sqrt", "x")], X4, positive=True),
    Case("abs_neg", [N("Abs", "x", ["a"]), N("Neg", "a")], X4),
    # No CEIL kernel in the reference resolver; int8 input steps flip floor/ceil by 1 at integer edges.
    Case("floor_ceil", [N("Floor", "x", ["f"]), N("Ceil", "x", ["c"]), N("Add", "fc")], X4, int8=False,
         resolvers=("auto",)),
    Case("sin_cos", [N("Sin", "x", ["s"]), N("Cos", "x", ["c"]), N("Mul", "sc")], X4),
    Case("reciprocal", [N("Reciprocal", "x")], X4, positive=True, int8=False),   # 1/x near 0.1 is too steep for int8
    Case("sum3_identity_dropout", [N("Identity", "x", ["i"]), N("Dropout", "z", ["d"]), N("Sum", ["i", "d", "x"])], X4b),
    Case("cast_float_noop", [N("Cast", "x", ["c"], to=TensorProto.FLOAT), N("Relu", "c")], X4, conv=True),
    Case("softmax_last", [N("Softmax", "x", axis=-1)], {"x": (1, 10)}),
    Case("softmax_channels", [N("Softmax", "x", axis=1)], X4, conv=True),
    Case("logsoftmax", [N("LogSoftmax", "x", axis=-1)], {"x": (1, 3, 10)}),
    Case("batchnorm_alone", [N("BatchNormalization", ["x", "g", "b", "m", "v"])], X4,
         {"g": w(4) + 1, "b": w(4), "m": w(4), "v": np.abs(w(4)) + 0.5}, conv=True),
    # arithmetic
    Case("add_const_bcast", [N("Add", "xc")], X4, {"c": w(4, 1, 1)}, conv=True),
    Case("sub_const_first", [N("Sub", "cx")], X4, {"c": w(4, 1, 1)}, conv=True),
    Case("mul_live", [N("Mul", "xz")], X4b, conv=True),
    Case("div_const", [N("Div", "xc")], X4, {"c": np.abs(w(1, 8)) + 0.5}, conv=True),
    Case("div_live", [N("Div", "xz")], X4b, positive=True, int8=False),
    Case("max_min", [N("Max", "xz", ["a"]), N("Min", ["a", "c"])], X4b, {"c": np.array(0.3, np.float32)}),
    Case("pow2", [N("Pow", "xc")], X4, {"c": np.array(2.0, np.float32)}),
    Case("add_relu_fused", [N("Add", "xz", ["a"]), N("Relu", "a")], X4b, conv=True),
    Case("add_lower_rank_live", [N("Add", "xz")], {"x": (1, 4, 8, 8), "z": (1, 8, 8)}),
    # layout / data movement
    Case("concat_channels", [N("Concat", "xz", axis=1)], X4b, conv=True),
    Case("concat_const", [N("Concat", "xc", axis=1)], X4, {"c": w(1, 2, 8, 8)}, conv=True),
    Case("split_equal", [N("Split", "x", ["a", "b"], axis=1), N("Sub", "ab")], X4, conv=True),
    Case("split_unequal", [N("Split", "xs", ["a", "b"], axis=1), N("Concat", "ba", axis=1)], X4, {"s": i64(1, 3)}, conv=True),
    Case("slice_steps", [N("Slice", ["x", "st", "en", "ax", "sp"])], X4,
         {"st": i64(1, 0), "en": i64(4, 7), "ax": i64(1, 3), "sp": i64(2, 2)}, conv=True),
    Case("slice_negative_step", [N("Slice", ["x", "st", "en", "ax", "sp"])], X4,
         {"st": i64(-1), "en": i64(-100), "ax": i64(2), "sp": i64(-1)}, conv=True),
    Case("pad_constant", [N("Pad", ["x", "p"])], X4, {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}, conv=True),
    Case("pad_value", [N("Pad", ["x", "p", "v"])], X4, {"p": i64(0, 1, 1, 0, 0, 0, 1, 1), "v": np.array(0.5, np.float32)}),
    Case("pad_reflect", [N("Pad", ["x", "p"], mode="reflect")], X4, {"p": i64(0, 0, 2, 1, 0, 0, 1, 2)}, conv=True),
    Case("transpose_free", [N("Transpose", "x", ["t"], perm=[0, 2, 3, 1]), N("Relu", "t")], X4, conv=True),
    Case("transpose_then_conv", [N("Transpose", "x", ["t"], perm=[0, 1, 3, 2]), N("Conv", "tW", kernel_shape=[1, 1])], X4,
         {"W": w(3, 4, 1, 1)}),
    Case("reshape_after_conv", [N("Reshape", "xs")], X4, {"s": i64(1, 4, 64)}, conv=True),
    Case("flatten_gemm_folded", [N("Flatten", "x", ["f"]), N("Gemm", "fWB", transB=1)], X4, {"W": w(5, 256, scale=0.1), "B": w(5)},
         conv=True),
    Case("flatten_output", [N("Flatten", "x")], X4, conv=True),
    Case("flatten_transposed_gemm", [N("Flatten", "x", ["f"]), N("Transpose", "f", ["t"]), N("Gemm", "tW", transA=1)], X4,
         {"W": w(256, 5, scale=0.1)}, conv=True),
    # int8 SOFTMAX outputs are fixed 1/256 steps; a 256-way softmax spans only ~20 of them
    Case("flatten_softmax", [N("Flatten", "x", ["f"]), N("Softmax", "f")], X4, conv=True, int8_tol=0.1),
    Case("squeeze_unsqueeze", [N("GlobalAveragePool", "x", ["g"]), N("Squeeze", ["g", "ax"], ["s"]), N("Unsqueeze", ["s", "ax2"])],
         X4, {"ax": i64(2, 3), "ax2": i64(1)}, conv=True),
    Case("resize_nearest_x2", [N("Resize", ["x", "", "sc"], mode="nearest", coordinate_transformation_mode="asymmetric",
                                 nearest_mode="floor")], X4, {"sc": np.array([1, 1, 2, 2], np.float32)}, conv=True),
    Case("resize_nearest_half_pixel", [N("Resize", ["x", "", "sc"], mode="nearest")], X4,
         {"sc": np.array([1, 1, 2, 2], np.float32)}),
    Case("resize_bilinear_half_pixel", [N("Resize", ["x", "", "sc"], mode="linear")], X4,
         {"sc": np.array([1, 1, 2, 2], np.float32)}, conv=True),
    Case("resize_bilinear_align_corners", [N("Resize", ["x", "", "", "sz"], mode="linear",
                                             coordinate_transformation_mode="align_corners")], X4, {"sz": i64(1, 4, 13, 11)}),
    Case("gather_axis1", [N("Gather", "xi", axis=1)], X4, {"i": i64(3, 0)}, conv=True),
    Case("gather_scalar", [N("Gather", "xi", axis=3)], X4, {"i": np.array(-2, np.int64)}, conv=True),
    Case("reduce_mean_keep", [N("ReduceMean", "x", axes=[2, 3], keepdims=1)], X4, conv=True, opset=13),
    Case("reduce_min_keep", [N("ReduceMin", "x", axes=[1, 3], keepdims=1)], X4, conv=True, opset=13),
    Case("reduce_max_drop", [N("ReduceMax", "x", axes=[1], keepdims=0)], X4, conv=True, opset=13),
    Case("reduce_sum_axes_input", [N("ReduceSum", "xa", keepdims=0)], X4, {"a": i64(2)}, conv=True),
    # The reference resolver registers DEPTH_TO_SPACE version 1 only; int8 is version 2 (op_version.cc).
    Case("depth_to_space_dcr", [N("DepthToSpace", "x", blocksize=2)], {"x": (1, 8, 4, 4)}, conv=True,
         int8_resolvers=("auto",)),
    Case("depth_to_space_crd", [N("DepthToSpace", "x", blocksize=2, mode="CRD")], {"x": (1, 8, 4, 4)}, conv=True,
         int8_resolvers=("auto",)),
    Case("space_to_depth", [N("SpaceToDepth", "x", blocksize=2)], X4, conv=True),
    Case("tile", [N("Tile", "xr")], X4, {"r": i64(1, 2, 1, 3)}, conv=True),
    Case("expand", [N("Expand", "xs")], {"x": (1, 4, 1, 8)}, {"s": i64(1, 4, 3, 8)}),
    # normalization
    Case("layernorm_last", [N("LayerNormalization", "xgb", axis=-1)], {"x": (1, 5, 16)}, {"g": w(16) + 1, "b": w(16)}),
    Case("layernorm_nhwc_chw", [N("LayerNormalization", "xg", axis=1)], X4, {"g": w(4, 8, 8) + 1}, conv=True),
    Case("instancenorm", [N("InstanceNormalization", "xgb")], X4, {"g": w(4) + 1, "b": w(4)}, conv=True),
    Case("gelu", [N("Gelu", "x")], X4, opset=20),
    Case("gelu_tanh", [N("Gelu", "x", approximate="tanh")], X4, opset=20),
    # dense
    Case("gemm_transb0_alpha_beta", [N("Gemm", "xWC", alpha=0.5, beta=2.0)], {"x": (1, 16)}, {"W": w(16, 7), "C": w(7)}),
    Case("gemm_transA", [N("Transpose", "x", ["t"]), N("Gemm", "tW", transA=1)], {"x": (1, 16)}, {"W": w(16, 7)}),
    Case("matmul_2d_const", [N("MatMul", "xW")], {"x": (1, 16)}, {"W": w(16, 7)}),
    Case("matmul_3d_const", [N("MatMul", "xW")], {"x": (1, 5, 16)}, {"W": w(16, 7)}),
    Case("matmul_const_left", [N("MatMul", "Wx")], {"x": (1, 16, 5)}, {"W": w(7, 16)}),
    Case("matmul_live", [N("MatMul", "xz")], {"x": (1, 5, 16), "z": (1, 16, 3)}),
]


def _convert(case, tmp_path, precision="fp32", feeds=None):
    src = tmp_path / f"{case.id}.onnx"
    feeds = case.build(src) if feeds is None else feeds
    out = tmp_path / f"{case.id}_{precision}.tflite"
    report = convert_onnx_to_tflite(src, out, precision=precision, calibration=feeds)
    return src, out, feeds, report


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_op_fp32_matches_onnxruntime(case, tmp_path):
    src, out, feeds, _ = _convert(case, tmp_path)
    ref = run_onnx(src, feeds)
    for resolver in case.resolvers:
        got = run_tflite(out, feeds, resolver=resolver)
        for name, r in ref.items():
            assert got[name].shape == r.shape, (resolver, name)
            err = float(np.abs(got[name] - r).max())
            assert err <= 1e-4 * max(1.0, float(np.abs(r).max())), f"{case.id} [{resolver}] {name}: max diff {err}"


INT8_CASES = [c for c in CASES if c.int8]


@pytest.mark.parametrize("case", INT8_CASES, ids=lambda c: c.id)
def test_op_int8_close_to_onnxruntime(case, tmp_path):
    src = tmp_path / f"{case.id}.onnx"
    feeds = case.build(src)
    _, out, _, report = _convert(case, tmp_path, "int8-full", feeds)
    ref = run_onnx(src, feeds)
    for resolver in case.int8_resolvers:
        got = run_tflite(out, feeds, resolver=resolver)
        for name, r in ref.items():
            span = float(r.max() - r.min()) or 1.0
            err = float(np.abs(got[name] - r).max())
            assert err <= case.int8_tol * span, f"{case.id} [{resolver}] {name}: max diff {err} of range {span}"


def test_nhwc_io_and_several_outputs(tmp_path):
    """io_layout="nhwc": 4-D inputs and outputs are NHWC, other outputs keep their ONNX layout."""
    case = Case("two_outputs", [N("Conv", "xWB", ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                                N("GlobalAveragePool", "c", ["g"]), N("Flatten", "g", ["f"]), N("Relu", "c")],
                X4, {"W": w(6, 4, 3, 3), "B": w(6)})
    src = tmp_path / "two.onnx"
    feeds = case.build(src)
    model = onnx.load(str(src))
    model.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, None))
    onnx.save(model, str(src))
    out = tmp_path / "two.tflite"
    report = convert_onnx_to_tflite(src, out, io_layout="nhwc")
    assert report["inputs"][0]["shape"] == [1, 8, 8, 4]
    assert {o["name"]: o["shape"] for o in report["outputs"]} == {"y": [1, 8, 8, 6], "f": [1, 6]}
    ref = run_onnx(src, feeds)
    for resolver in ("auto", "ref"):
        got = run_tflite(out, feeds, io_layout="nhwc", resolver=resolver)
        for name in ("y", "f"):
            assert np.abs(got[name] - ref[name]).max() <= 1e-4 * max(1.0, float(np.abs(ref[name]).max()))
