"""ONNX -> TFLite conversion without TensorFlow (host only): TFLite flatbuffers written directly.

Entry point: :func:`convert_onnx_to_tflite` (imported lazily so that ``import converters.tflite``
stays cheap). Modules: ``onnx_prep`` (load, fix shapes, fold constants), ``onnx_import`` +
``context`` + ``ops_*`` (translation, NCHW -> NHWC), ``quantize`` (int8-full, fp16),
``schema_writer`` + ``options`` + ``op_versions`` (flatbuffer writer), ``runtime`` (ai-edge-litert).
"""

from __future__ import annotations


def convert_onnx_to_tflite(*args, **kwargs):
    from .convert import convert_onnx_to_tflite as _convert

    return _convert(*args, **kwargs)


def supported_onnx_ops() -> list[str]:
    """ONNX op types (default domain) that have a translator."""
    from .onnx_import import SUPPORTED_OPS

    return list(SUPPORTED_OPS)


__all__ = ["convert_onnx_to_tflite", "supported_onnx_ops"]
