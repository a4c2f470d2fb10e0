"""What a target runtime cannot run in a TFLite model: op versions, ops, types, shapes, budgets.

What it does: given a model description (:func:`.reader.read_tflite`) and a hardware profile
(or just a TF Lite runtime version), lists every problem as ``{"where", "what", "reason"}``:

* ``tflite`` profiles: operator versions newer than the profile's oldest runtime
  (``runtime.version_min``; major version 1 means LiteRT numbering, i.e. the TF Lite 2.16 line
  and later, see :mod:`.runtime_versions`), custom ops, ops outside ``runtime.op_allowlist``;
* ``tflite-micro`` profiles: ops TFLite Micro has no kernel for or the profile's allowlist leaves
  out, float16/float64/string tensors, dynamic shapes, the tensor arena over the RAM budget;
* every profile: model size over ``budgets.max_model_bytes``, dynamic shapes when the profile
  needs static shapes.

What it does not do: run the model or check delegates' (Edge TPU, GPU) op support.
"""

from __future__ import annotations

from .arena import estimate
from .micro import TFLM_RESOLVER
from .runtime_versions import LITERT_1_0_TF_LINE, parse_version, runtime_rejects

MICRO_TYPES = {"float32", "int8", "uint8", "int16", "int32", "int64", "bool"}


def tf_line(profile) -> tuple[int, ...]:
    """The TF Lite release line of a ``tflite`` profile's oldest supported runtime."""
    v = parse_version(profile.raw["runtime"]["version_min"])
    return LITERT_1_0_TF_LINE if v[0] < 2 else v


def version_issues(info: dict, runtime: tuple[int, ...], label: str) -> list[dict]:
    out = []
    for o in info["ops"]:
        if o["op"].startswith("CUSTOM:"):
            continue
        why = runtime_rejects(o["op"], o["version"], runtime)
        if why:
            out.append({"where": f"{o['op']} v{o['version']} ({o['count']} ops)", "what": "op_version",
                        "reason": f"{label} cannot run it: {why}"})
    return out


def _op_issues(info: dict, allowed: set[str], label: str, what: str) -> list[dict]:
    return [{"where": f"{o['op']} ({o['count']} ops)", "what": what, "reason": f"{label} has no kernel for it"}
            for o in info["ops"] if o["op"] not in allowed]


def profile_issues(info: dict, profile) -> list[dict]:
    rt, budgets = profile.raw["runtime"], profile.budgets
    issues: list[dict] = []
    allow = set(rt.get("op_allowlist") or [])
    graph = info["graphs"][0]
    dynamic = [t for t in graph["tensors"] if any(d < 0 for d in t["shape_signature"])]
    if profile.engine == "tflite":
        issues += version_issues(info, tf_line(profile), f"{profile.id} (TF Lite {rt['version_min']})")
        issues += [{"where": f"custom op {c}", "what": "custom_op",
                    "reason": f"{profile.id}'s runtime must be built with this custom op"} for c in info["custom_ops"]]
        if allow:
            issues += _op_issues(info, allow, f"{profile.id}'s op allowlist", "op_not_allowed")
    elif profile.engine == "tflite-micro":
        issues += _op_issues(info, allow or set(TFLM_RESOLVER), f"TFLite Micro on {profile.id}", "op_not_supported")
        bad = sorted({t["dtype"] for sg in info["graphs"] for t in sg["tensors"]} - MICRO_TYPES)
        issues += [{"where": f"{d} tensors", "what": "dtype", "reason": f"TFLite Micro has no {d} kernels; "
                    "convert with --precision int8-full"} for d in bad]
        if info["subgraphs"] > 1:
            issues.append({"where": f"{info['subgraphs']} subgraphs", "what": "control_flow",
                           "reason": "control flow (IF/WHILE) is not supported on this target"})
        est = estimate(info, profile.raw["memory"]["word_bits"])
        ram = profile.raw["memory"]["model_ram_budget_bytes"]
        if est["arena_bytes"] > ram:
            issues.append({"where": "tensor arena", "what": "ram_budget",
                           "reason": f"needs about {est['arena_bytes']} bytes, the RAM budget is {ram} bytes"})
    if dynamic and (rt.get("static_shapes") or profile.engine == "tflite-micro"):
        issues.append({"where": ", ".join(t["name"] for t in dynamic[:5]), "what": "dynamic_shape",
                       "reason": f"{len(dynamic)} tensors have unknown dimensions; {profile.id} needs static shapes"})
    if info["size_bytes"] > budgets["max_model_bytes"]:
        issues.append({"where": "model file", "what": "flash_budget",
                       "reason": f"{info['size_bytes']} bytes > the profile's max_model_bytes "
                                 f"{budgets['max_model_bytes']}"})
    return issues
