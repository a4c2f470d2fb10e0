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

    def cancel(self) -> bool:
        """Abort runs in flight (and every later one); False if the engine cannot."""
        ...


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
        self._run_options = ort.RunOptions()  # its terminate flag aborts a run in flight

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self._run(self.output_names, inputs, self._run_options)
        except Exception as exc:
            raise ModelError(f"inference failed: {exc}") from None
        return dict(zip(self.output_names, outs))

    def cancel(self) -> bool:
        self._run_options.terminate = True
        return True


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

    def cancel(self) -> bool:
        return False  # the TFLite interpreter has no cancellation: a hung invoke() is abandoned


def serving_threads(configured: int, profile_default: int) -> int:
    """Threads for inference: the config's explicit value, else the profile's default capped at
    the CPUs this process may use (a 4-thread profile on a 2-CPU box only oversubscribes)."""
    if configured:
        return configured
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(profile_default, cpus)) if profile_default else 0


def load_runner(path: Path, engine: str, threads: int = 0) -> Runner:
    if engine == "onnxruntime":
        return OnnxRunner(path, threads)
    if engine == "tflite":
        return TfliteRunner(path, threads)
    raise ModelError(f"this agent cannot run engine {engine!r}; available: {', '.join(available_engines())}")
