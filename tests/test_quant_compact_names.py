"""`recipes.compact_names` never reuses a graph input/output name for an intermediate tensor.

torch's TorchScript-based exporter names outputs with bare numbers ("23"); the short ids
compact_names hands out are hex numbers too, so before the fix the 0x23-th intermediate tensor
collided with the output and onnxruntime refused every int8 artifact of such a model
("Duplicate definition of name (23)"). Found by running `edgekit convert model.pt` (ADR 0013)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from converters.recipes import compact_names


def chain(path, n=40, out="23"):
    """x → Relu → Neg → Relu → ... (n nodes) → output named like a TorchScript export's."""
    nodes, prev = [], "x"
    for i in range(n):
        name = out if i == n - 1 else f"/layer{i}/output_0"
        nodes.append(helper.make_node("Relu" if i % 2 else "Neg", [prev], [name], name=f"node{i}"))
        prev = name
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(np.zeros(1, np.float32), "unused")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_short_ids_skip_graph_output_names(tmp_path):
    path = tmp_path / "m.onnx"
    chain(path)
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    compact_names(path)
    m = onnx.load(str(path))
    produced = [o for n in m.graph.node for o in n.output]
    assert len(produced) == len(set(produced)), "every tensor defined once"
    assert m.graph.output[0].name == "23" and produced.count("23") == 1
    assert all(len(o) <= 2 for o in produced)                    # still compact
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)
