"""Resizable batch inside a TFLite artifact: ``shape_signature`` -1 on the batch axis, checked.

What it does: marks axis 0 of every activation tensor of a batch-1 model as resizable (-1 in its
``shape_signature``), rewrites RESHAPE target shapes that pin the batch to 1 as -1, then proves
the result: the model is resized to a batch of 3 and must give, row for row, what three batch-1
runs give (the interpreter the agent uses, XNNPACK). A graph that holds other batch-dependent
constants (e.g. TRANSPOSE_CONV output shapes, slice ends) fails that check and the caller keeps
the fixed batch-1 artifact, which the agent serves row by row.

What it does not do: make any other dimension dynamic, or change the batch-1 numerics.
"""

from __future__ import annotations

import copy

import numpy as np

from .schema_writer import Model, serialize

CHECK_BATCH = 3


def with_dynamic_batch(model: Model) -> Model:
    m = copy.deepcopy(model)
    for t in m.tensors:
        if not t.is_const and len(t.shape) >= 1 and t.shape[0] == 1:
            t.signature = (-1, *t.shape[1:])
    for op in m.operators:
        if op.op != "RESHAPE" or len(op.inputs) < 2:
            continue
        shape_t = m.tensors[op.inputs[1]]
        out = m.tensors[op.outputs[0]]
        if (shape_t.is_const and shape_t.data.ndim == 1 and shape_t.data.size and int(shape_t.data[0]) == 1
                and -1 not in shape_t.data.tolist() and out.signature is not None):
            data = shape_t.data.copy()
            data[0] = -1
            op.inputs[1] = m.add_const(f"{shape_t.name}/dynamic_batch", data.astype(np.int32), "int32")
    return m


def batch_matches(data: bytes, model: Model, seed: int = 0) -> str | None:
    """None when a batch of ``CHECK_BATCH`` gives the same rows as batch-1 runs, else the reason."""
    from .runtime import interpreter

    rng = np.random.default_rng(seed)
    try:
        single = interpreter(data, "auto")
        rows = []
        feeds = []
        for _ in range(CHECK_BATCH):
            feed = {}
            for d in single.get_input_details():
                if d["dtype"] == np.float32:
                    feed[d["name"]] = rng.normal(size=d["shape"]).astype(np.float32)
                else:
                    info = np.iinfo(d["dtype"])
                    feed[d["name"]] = rng.integers(info.min, info.max, d["shape"]).astype(d["dtype"])
            feeds.append(feed)
            for d in single.get_input_details():
                single.set_tensor(d["index"], feed[d["name"]])
            single.invoke()
            rows.append([single.get_tensor(d["index"]).copy() for d in single.get_output_details()])
        batched = interpreter(data, "auto")
        for d in batched.get_input_details():
            batched.resize_tensor_input(d["index"], [CHECK_BATCH, *d["shape"][1:]])
        batched.allocate_tensors()
        for d in batched.get_input_details():
            batched.set_tensor(d["index"], np.concatenate([f[d["name"]] for f in feeds]))
        batched.invoke()
        outs = [batched.get_tensor(d["index"]) for d in batched.get_output_details()]
    except Exception as exc:        # the runtime refused the resize: a batch-dependent constant
        return f"the runtime cannot run it with batch {CHECK_BATCH}: {str(exc).splitlines()[0][:200]}"
    for k, out in enumerate(outs):
        want = np.concatenate([r[k] for r in rows])
        if out.shape != want.shape:
            return f"output {k} has shape {list(out.shape)} with batch {CHECK_BATCH}, expected {list(want.shape)}"
        tol = 1e-5 * max(float(np.abs(want.astype(np.float64)).max()), 1.0)
        if out.dtype.kind == "f" and np.abs(out.astype(np.float64) - want).max() > tol:
            return f"output {k} differs between a batch of {CHECK_BATCH} and batch-1 runs"
        if out.dtype.kind != "f" and np.abs(out.astype(np.int64) - want.astype(np.int64)).max() > 1:
            return f"output {k} differs between a batch of {CHECK_BATCH} and batch-1 runs"
    return None


def try_dynamic_batch(model: Model) -> tuple[Model, bytes, str | None]:
    """(model, bytes, None) with a resizable batch when it checks out, else the batch-1 model's
    (model, bytes, reason)."""
    dyn = with_dynamic_batch(model)
    data = serialize(dyn)
    reason = batch_matches(data, dyn)
    if reason is None:
        return dyn, data, None
    return model, serialize(model), reason
