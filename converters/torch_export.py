"""PyTorch input (``.pt`` / ``.pth``): export to ONNX with ``torch.onnx.export`` into a scratch dir.

torch is optional (``pip install 'edgekit[torch]'``; the Linux wheel from PyPI pulls ~2.9 GB of CUDA
libraries) and imported only here, only when a PyTorch file is given. TorchScript files load with
``torch.jit.load`` and export with the TorchScript-based exporter (``dynamo=False``): the
``torch.export`` path that torch >= 2.9 uses by default cannot trace a ScriptModule. Pickled
``nn.Module`` files load with ``torch.load(weights_only=False)``, which runs pickled code, so convert
only files you trust; their class must be importable. They export with ``torch.export`` (needs
onnxscript) and fall back to the TorchScript-based exporter when that fails. A bare state_dict
cannot be converted (it has no graph). The exporters' console chatter is kept off stdout (``--json``).
Verified end to end with torch 2.14.1 (benchmarks/README.md).
"""

from __future__ import annotations

from pathlib import Path

from edgekit.core.errors import ModelError, UsageError

TORCH_SUFFIXES = (".pt", ".pth")
EXPORT_OPSET = 18          # the torch.export-based exporter's lowest opset (torch 2.14)


def is_torch_file(path: Path) -> bool:
    return path.suffix.lower() in TORCH_SUFFIXES


def export_torch(path: Path, workdir: Path, input_shapes: dict[str, list[int]]) -> Path:
    """Write ``workdir/<stem>.onnx`` from the PyTorch file ``path``; return its path."""
    try:
        import torch
    except ImportError:
        raise UsageError(f"{path.name} is a PyTorch file; converting it needs PyTorch, which is not installed",
                         hint="Install it with: pip install 'edgekit[torch]' — or export to ONNX yourself with "
                              "torch.onnx.export and pass the .onnx file.") from None
    if not input_shapes:
        raise UsageError(f"exporting {path.name} needs the input shapes",
                         hint="Pass --input-shape NAME:1,3,224,224 for each model input.")
    try:
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError:
            module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"cannot load {path.name} with PyTorch: {str(exc)[:300]}",
                         hint="A pickled module needs its class importable (run from the project that defines it, "
                              "or set PYTHONPATH); or save it with torch.jit.save(torch.jit.script(model)), "
                              "or export to ONNX yourself.") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{path.name} holds a {type(module).__name__}, not a model (a state_dict has no graph)",
                         hint="Save the whole module (torch.save(model) or torch.jit.save) or export to ONNX yourself.")
    module.eval()
    names = list(input_shapes)
    args = tuple(torch.zeros(*input_shapes[n]) for n in names)
    out = workdir / f"{path.stem}.onnx"
    errors = []
    for dynamo in _exporters(torch, module):
        try:
            _export(torch, module, args, out, names, dynamo)
            return out
        except Exception as exc:  # the next exporter may manage; report every failure if none does
            errors.append(f"{'torch.export' if dynamo else 'TorchScript'} exporter: {str(exc)[:200]}")
    raise ModelError(f"torch.onnx.export failed for {path.name}: " + "; ".join(errors),
                     hint="Export it to ONNX yourself (torch.onnx.export) and pass the .onnx file.")


def _exporters(torch, module) -> list[bool | None]:
    """Exporters to try, as values of ``torch.onnx.export(dynamo=...)`` (None: a torch without the flag)."""
    import inspect

    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        return [None]
    if isinstance(module, torch.jit.ScriptModule):
        return [False]
    return [True, False]


def _export(torch, module, args, out: Path, names: list[str], dynamo: bool | None) -> None:
    import contextlib
    import io
    import warnings

    kwargs = {} if dynamo is None else {"dynamo": dynamo}
    if dynamo:
        kwargs["external_data"] = False
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(out), input_names=names, opset_version=EXPORT_OPSET, **kwargs)
