"""Peephole clean-up of the translated float model, before quantization and serialization.

What it does: folds RESHAPE -> RESHAPE chains into one RESHAPE, drops RESHAPEs that do not change
the shape, composes TRANSPOSE -> TRANSPOSE pairs (dropping identities), and removes operators whose
outputs nobody reads. Only tensors with exactly one reader that are not graph outputs are
bypassed, so no value a user can observe changes.

What it does not do: fuse arithmetic, reorder operators, or anything that changes numerics.
"""

from __future__ import annotations

import numpy as np

from .schema_writer import Model


def _single_reader(model: Model, consumers, t: int) -> bool:
    return len(consumers.get(t, [])) == 1 and t not in model.outputs and t not in model.inputs


def _rewire(model: Model, old: int, new: int) -> None:
    for op in model.operators:
        op.inputs = [new if i == old else i for i in op.inputs]


def simplify(model: Model) -> Model:
    changed = True
    while changed:
        changed = False
        producers, consumers = model.producers(), model.consumers()
        for k, op in enumerate(model.operators):
            if op.op not in ("RESHAPE", "TRANSPOSE") or op.inputs[0] not in producers:
                continue
            src = model.operators[producers[op.inputs[0]]]
            if src.op != op.op or not _single_reader(model, consumers, op.inputs[0]):
                continue
            if op.op == "RESHAPE":
                op.inputs[0] = src.inputs[0]
            else:
                first, second = (model.tensors[o.inputs[1]].data for o in (src, op))
                perm = np.asarray(first)[np.asarray(second)].astype(np.int32)
                op.inputs = [src.inputs[0], model.add_const(f"{model.tensors[op.outputs[0]].name}/perm", perm)]
            changed = True
            break
        if changed:
            _drop_dead(model)
            continue
        for k, op in enumerate(model.operators):
            if op.op not in ("RESHAPE", "TRANSPOSE"):
                continue
            src, out = model.tensors[op.inputs[0]], model.tensors[op.outputs[0]]
            noop = (src.shape == out.shape if op.op == "RESHAPE"
                    else list(model.tensors[op.inputs[1]].data) == list(range(len(src.shape))))
            if noop and op.outputs[0] not in model.outputs and op.inputs[0] not in model.inputs:
                _rewire(model, op.outputs[0], op.inputs[0])
                del model.operators[k]
                changed = True
                break
    _drop_dead(model)
    return model


def _drop_dead(model: Model) -> None:
    while True:
        consumers = model.consumers()
        keep = [op for op in model.operators
                if any(o in model.outputs or consumers.get(o) for o in op.outputs)]
        if len(keep) == len(model.operators):
            return
        model.operators = keep
