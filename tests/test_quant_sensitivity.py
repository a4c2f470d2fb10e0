"""The sensitivity-guided float prefix of static int8 (``converters.sensitivity``, ADR 0013):
MAC accounting and cut points on a hand-built graph, the search rule with a scripted quantizer
(fast logic), and the real recipe on the project's sample model, where full int8 already meets the
target so nothing is kept float. The PP-OCRv4 det case is in test_onnx_real_models.py."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters import sensitivity
from converters.sensitivity import choose_float_prefix, node_macs, prefix_cuts


def three_convs(path):
    """x[1,4,16,16] → conv 3x3 (4→8) → relu → conv 1x1 (8→8) → conv 3x3 stride 2 (8→2)."""
    rng = np.random.default_rng(0)
    w1, w2, w3 = (numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), f"w{k}")
                  for k, shape in enumerate([(8, 4, 3, 3), (8, 8, 1, 1), (2, 8, 3, 3)]))
    nodes = [helper.make_node("Conv", ["x", w1.name], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", w2.name], ["b"], name="c2"),
             helper.make_node("Conv", ["b", w3.name], ["y"], name="c3", pads=[1, 1, 1, 1], strides=[2, 2])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], [w1, w2, w3])
    model = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    onnx.save(model, str(path))
    return model


def test_macs_and_cut_points_follow_graph_order_within_the_budget(tmp_path):
    model = three_convs(tmp_path / "m.onnx")
    macs = [node_macs(n, sensitivity._shapes(model)) for n in model.graph.node if n.op_type == "Conv"]
    assert macs == [16 * 16 * 8 * 4 * 9, 16 * 16 * 8 * 8, 8 * 8 * 2 * 8 * 9]   # 73728, 16384, 9216
    total = sum(macs)
    # cuts sit in front of each heavy op after the first: [c1, relu] then [c1, relu, c2]
    assert prefix_cuts(model, budget=1.0) == [(2, round(macs[0] / total, 4)),
                                              (3, round((macs[0] + macs[1]) / total, 4))]
    assert prefix_cuts(model, budget=0.8) == [(2, round(macs[0] / total, 4))]    # c1+c2 = 0.907 is over
    assert prefix_cuts(model, budget=0.5) == []                                  # c1 alone = 0.742


def scripted(src, monkeypatch, cosines: dict[int, float]):
    """Stand-in for the QDQ build and its probe: each prefix length gets a scripted cosine (what the
    search sees), the quantizer records which prefixes it was asked for."""
    names = [n.name for n in onnx.load(str(src)).graph.node]
    calls = []

    def quantize(excluded, out):
        assert excluded == names[:len(excluded)], "a prefix in graph order"
        calls.append(len(excluded))
        out.write_bytes(b"")

    monkeypatch.setattr(sensitivity, "probe_cosine",
                        lambda ref, path, probe: cosines[int(path.stem.rsplit("-", 1)[1])])
    return quantize, calls


PROBE = {"x": np.zeros((4, 4, 16, 16), np.float32)}


def test_search_stops_at_the_first_prefix_reaching_the_target(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    three_convs(src)
    quantize, calls = scripted(src, monkeypatch, {0: 0.95, 2: 0.995, 3: 0.999})
    info = choose_float_prefix(src, quantize, tmp_path, PROBE, target=0.99, budget=1.0)
    assert calls == [0, 2], "stops once the target is met"
    assert info["float_nodes"] == 2 and info["probe_cosine"] == 0.995 and info["probe_cosine_all_int8"] == 0.95
    assert [t["float_nodes"] for t in info["tried"]] == [2]


def test_search_keeps_the_best_prefix_but_not_a_negligible_gain(tmp_path, monkeypatch):
    src = tmp_path / "m.onnx"
    three_convs(src)
    quantize, calls = scripted(src, monkeypatch, {0: 0.95, 2: 0.9505, 3: 0.94})
    info = choose_float_prefix(src, quantize, tmp_path, PROBE, target=0.99, budget=1.0)
    assert calls == [0, 2, 3] and info["float_nodes"] == 0          # +0.0005 is under MIN_GAIN
    quantize, calls = scripted(src, monkeypatch, {0: 0.95, 2: 0.97, 3: 0.96})
    info = choose_float_prefix(src, quantize, tmp_path, PROBE, target=0.99, budget=1.0)
    assert info["float_nodes"] == 2 and info["probe_cosine"] == 0.97  # best, not last
    quantize, calls = scripted(src, monkeypatch, {0: 0.95, 2: 0.97, 3: 0.999})
    info = choose_float_prefix(src, quantize, tmp_path, PROBE, target=0.99, budget=0.8)
    assert calls == [0, 2] and info["float_nodes"] == 2               # the 3-node prefix is over budget


def test_sample_model_meets_the_target_all_int8_and_says_so(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli.main import cli
    from edgekit.demo import SAMPLES

    res = CliRunner().invoke(cli, ["convert", str(SAMPLES / "digits_cnn.onnx"), "-p", "x86-64-gateway", "--precision",
                                   "int8-static", "--calibration", str(SAMPLES / "calibration.npz"), "--validation",
                                   str(SAMPLES / "validation.npz"), "--out", str(tmp_path / "out"), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    fp = json.loads(res.stdout)[0]["candidates"][0]["float_prefix"]
    assert fp["searched"] is False and fp["float_nodes"] == 0 and fp["in_sample_probe_cosine_all_int8"] >= 0.99
    art = onnx.load(str(tmp_path / "out" / "x86-64-gateway" / "model.onnx"))
    first = next(n for n in art.graph.node if "input" in n.input)
    assert first.op_type == "QuantizeLinear"      # the stem is quantized like the rest
