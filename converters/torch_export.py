"""PyTorch input (``.pt`` / ``.pth``): export to ONNX with ``torch.onnx.export`` into a scratch dir.

torch is optional (``pip install 'edgekit[torch]'``, ~1 GB) and imported only here, only when a
PyTorch file is given. TorchScript files load with ``torch.jit.load``; pickled ``nn.Module``
files with ``torch.load(weights_only=False)``, which runs pickled code: convert only files you
trust. A bare state_dict cannot be converted (it has no graph).
"""

from __future__ import annotations

from pathlib import Path

from edgekit.core.errors import ModelError, UsageError

TORCH_SUFFIXES = (".pt", ".pth")
EXPORT_OPSET = 17


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
        raise ModelError(f"cannot load {path.name} with PyTorch: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{path.name} holds a {type(module).__name__}, not a model (a state_dict has no graph)",
                         hint="Save the whole module (torch.save(model) or torch.jit.save) or export to ONNX yourself.")
    module.eval()
    names = list(input_shapes)
    args = tuple(torch.zeros(*input_shapes[n]) for n in names)
    out = workdir / f"{path.stem}.onnx"
    try:
        torch.onnx.export(module, args, str(out), input_names=names, opset_version=EXPORT_OPSET)
    except Exception as exc:
        raise ModelError(f"torch.onnx.export failed for {path.name}: {str(exc)[:300]}") from None
    return out
