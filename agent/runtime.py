"""Inference runtimes behind one small interface: onnxruntime, or TFLite via ai-edge-litert
(falling back to tflite_runtime). Runtimes are imported only when a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.core.errors import ModelError


class Runner(Protocol):
    engine: str
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def available_engines() -> tuple[str, ...]:
    import importlib.util

    found = []
    if importlib.util.find_spec("onnxruntime"):
        found.append("onnxruntime")
    if importlib.util.find_spec("ai_edge_litert") or importlib.util.find_spec("tflite_runtime"):
        found.append("tflite")
    return tuple(found)


class OnnxRunner:
    engine = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime cannot load {path.name}: {exc}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._run = self.session.run

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self._run(self.output_names, inputs)
        except Exception as exc:
            raise ModelError(f"inference failed: {exc}") from None
        return dict(zip(self.output_names, outs))


class TfliteRunner:
    engine = "tflite"

    def __init__(self, path: Path, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # devices that ship the older runtime
            from tflite_runtime.interpreter import Interpreter
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads or None)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"TFLite runtime cannot load {path.name}: {exc}") from None
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()
        self.input_names = [d["name"] for d in self._in]
        self.output_names = [d["name"] for d in self._out]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            for d in self._in:
                arr = inputs[d["name"]]
                if tuple(arr.shape) != tuple(d["shape"]):
                    self.interp.resize_tensor_input(d["index"], arr.shape)
                    self.interp.allocate_tensors()
                self.interp.set_tensor(d["index"], arr)
            self.interp.invoke()
            return {d["name"]: self.interp.get_tensor(d["index"]).copy() for d in self._out}
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ModelError(f"inference failed: {exc}") from None


def load_runner(path: Path, engine: str, threads: int = 0) -> Runner:
    if engine == "onnxruntime":
        return OnnxRunner(path, threads)
    if engine == "tflite":
        return TfliteRunner(path, threads)
    raise ModelError(f"this agent cannot run engine {engine!r}; available: {', '.join(available_engines())}")
