"""Host-only model pipeline: ONNX optimization/quantization, TFLite writing, parity gate, reports.

Heavy imports (onnx, onnxruntime.quantization) happen inside functions.
"""
