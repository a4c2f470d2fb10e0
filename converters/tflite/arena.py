"""Estimate the memory a TFLite model needs at run time: the tensor arena and peak memory.

What it does: for the main subgraph, computes each non-constant tensor's lifetime (first
writer to last reader; graph inputs from the start, outputs to the end) and places tensors
greedily by size into one arena, the way TensorFlow Lite Micro's ``GreedyMemoryPlanner``
does, with 16-byte alignment. For a ``word_bits`` target it adds the interpreter's own
per-tensor / per-node bookkeeping and the per-channel requantization data of integer
convolutions (an estimate of TFLM's persistent allocations). Also reports the "live bytes"
lower bound (the largest sum of simultaneously live tensors).

What it does not do: account for kernel scratch buffers beyond the per-channel data, delegate
memory, or dynamic shapes (unknown dimensions count as 1 and are listed in ``dynamic``).
"""

from __future__ import annotations

ALIGN = 16
# TFLM bookkeeping per tensor / per node, in pointer-size words (TfLiteEvalTensor = data, dims,
# type ~ 3 words; TfLiteNode + inputs/outputs arrays + registration pointer ~ 10 words).
TENSOR_WORDS, NODE_WORDS = 3, 10
PER_CHANNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def lifetimes(graph: dict) -> dict[int, tuple[int, int]]:
    n_ops = len(graph["operators"])
    span: dict[int, list[int]] = {}
    for t in graph["inputs"]:
        span[t] = [0, 0]
    for k, op in enumerate(graph["operators"]):
        for t in op["outputs"]:
            if t >= 0:
                span.setdefault(t, [k, k])[1] = k
        for t in op["inputs"]:
            if t >= 0 and not graph["tensors"][t]["constant"]:
                span.setdefault(t, [k, k])[1] = k
    for t in graph["outputs"]:
        span.setdefault(t, [n_ops, n_ops])[1] = max(n_ops, 1)
    return {t: (a, b) for t, (a, b) in span.items() if not graph["tensors"][t]["constant"]}


def plan(graph: dict) -> tuple[int, int, dict[int, int]]:
    """(arena bytes, live-bytes lower bound, tensor -> offset) for one subgraph."""
    life = lifetimes(graph)
    sizes = {t: _align(graph["tensors"][t]["bytes"]) for t in life}
    placed: list[tuple[int, int, int, int]] = []          # offset, size, first, last
    offsets: dict[int, int] = {}
    for t in sorted(life, key=lambda t: (-sizes[t], life[t][0])):
        first, last = life[t]
        clashes = sorted((o, s) for o, s, a, b in placed if a <= last and first <= b)
        offset = 0
        for o, s in clashes:
            if offset + sizes[t] <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, sizes[t], first, last))
        offsets[t] = offset
    arena = max((o + s for o, s, _, _ in placed), default=0)
    steps = {k for a, b in life.values() for k in (a, b)}
    live = max((sum(sizes[t] for t, (a, b) in life.items() if a <= k <= b) for k in steps), default=0)
    return arena, live, offsets


def estimate(info: dict, word_bits: int = 32) -> dict:
    """Arena / memory estimate of a model described by :func:`.reader.read_tflite`."""
    graph = info["graphs"][0]
    arena, live, _ = plan(graph)
    word = word_bits // 8
    tensors, nodes = len(graph["tensors"]), len(graph["operators"])
    per_channel = 0
    for op in graph["operators"]:
        if op["op"] in PER_CHANNEL_OPS and op["outputs"]:
            out = graph["tensors"][op["outputs"][0]]
            per_channel += 2 * 4 * (out["shape"][-1] if out["shape"] else 1)    # multiplier + shift, int32
    persistent = _align(tensors * TENSOR_WORDS * word + nodes * NODE_WORDS * word + per_channel)
    dynamic = [t["name"] for t in graph["tensors"] if any(d < 0 for d in t["shape_signature"])]
    return {"word_bits": word_bits, "activations_bytes": arena, "live_bytes_lower_bound": live,
            "persistent_bytes": persistent, "arena_bytes": arena + persistent,
            "weights_bytes": info["weights_bytes"], "peak_memory_bytes": arena + persistent + info["size_bytes"],
            "dynamic_tensors": dynamic[:10], "dynamic_tensor_count": len(dynamic)}
