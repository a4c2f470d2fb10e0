"""Inference runtimes behind one small interface: onnxruntime, or TFLite via ai-edge-litert
(falling back to tflite_runtime). Runtimes are imported only when a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgekit.core.errors import ModelError

if TYPE_CHECKING:  # numpy is imported where arrays are handled: an idle agent does not load it
    import numpy as np


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

    def __init__(self, path: Path, threads: int, spin: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # ORT's pool threads busy-wait for work by default: on a small, shared or battery-powered
        # device that burns CPU other processes need (on a loaded 2-CPU VM: session build 22 -> 8 ms,
        # a run 0.79 -> 0.34 ms with 2 threads). [inference] spin = true restores it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
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
        path = Path(path)
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

    def _check(self, d: dict, arr: np.ndarray) -> int:
        """Rows to run one at a time (a batch-1 static model serving a batch), or 0 to resize."""
        import numpy as np

        fixed = [int(x) for x in d["shape"]]
        want = [int(x) for x in d.get("shape_signature", ())] or fixed
        if arr.dtype != d["dtype"]:
            raise ModelError(f"input {d['name']!r} is {arr.dtype}; the model takes {np.dtype(d['dtype']).name}",
                             hint="Send the dtype listed in the bundle manifest's inputs (quantize int8 inputs "
                                  "with the scale/zero_point given there).")
        if len(arr.shape) != len(want) or any(w not in (-1, a) for w, a in zip(want[1:], arr.shape[1:])):
            raise ModelError(f"input {d['name']!r} has shape {list(arr.shape)}; the model takes {fixed}",
                             hint="Check the layout in the bundle manifest (TFLite artifacts are often NHWC).")
        if want[0] == 1 and arr.shape[0] != 1:
            return int(arr.shape[0])
        return 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            arrays = [(d, inputs[d["name"]]) for d in self._in]
        except KeyError as exc:
            raise ModelError(f"no value given for model input {exc.args[0]!r}") from None
        rows = {self._check(d, a) for d, a in arrays}
        if rows - {0}:       # batch fixed to 1 in the artifact: serve the batch row by row
            n = max(rows)
            if any(len(a) != n for _, a in arrays):
                raise ModelError(f"inputs have different batch sizes {sorted({len(a) for _, a in arrays})}")
            import numpy as np

            parts = [self._invoke({d["name"]: a[i:i + 1] for d, a in arrays}) for i in range(n)]
            return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}
        return self._invoke(dict((d["name"], a) for d, a in arrays))

    def _invoke(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            resized = [d for d in self._in if tuple(inputs[d["name"]].shape) != tuple(d["shape"])]
            for d in resized:        # a model with dynamic dimensions: resize, then allocate once
                self.interp.resize_tensor_input(d["index"], inputs[d["name"]].shape)
            if resized:
                self.interp.allocate_tensors()
                self._in = self.interp.get_input_details()
            for d in self._in:
                self.interp.set_tensor(d["index"], inputs[d["name"]])
            self.interp.invoke()
            return {d["name"]: self.interp.get_tensor(d["index"]).copy() for d in self._out}
        except (ValueError, RuntimeError) as exc:
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


def load_runner(path: Path, engine: str, threads: int = 0, spin: bool = False) -> Runner:
    if engine == "onnxruntime":
        return OnnxRunner(path, threads, spin)
    if engine == "tflite":
        return TfliteRunner(path, threads)
    raise ModelError(f"this agent cannot run engine {engine!r}; available: {', '.join(available_engines())}")
