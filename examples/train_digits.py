"""Train edgekit's sample model: a tiny CNN on scikit-learn's 8x8 digits.

The network is trained in pure numpy (hand-written forward/backward passes,
im2col convolutions, Adam with cosine decay) and exported with ``onnx.helper``:

    input [N,1,8,8] -> Conv(1->8, 3x3, pad 1) -> Relu -> MaxPool 2x2
                    -> Conv(8->16, 3x3, pad 1) -> Relu -> Flatten
                    -> Gemm(256->10) -> logits [N,10]

The model outputs raw logits (no softmax) so that int8 quantization parity
can be measured directly. Besides the ONNX file the script writes a
calibration set, a labelled validation set and a JSON model card.

Usage:
    python examples/train_digits.py [--out DIR]    # train and export
    python examples/train_digits.py --check        # verify committed files
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
N_VALIDATION = 360
N_CALIBRATION = 200
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
MIN_ACCURACY = 0.96
PARITY_TOLERANCE = 1e-4

MODEL_NAME = "edgekit-digits-cnn"
MODEL_VERSION = "1.0.0"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
IR_VERSION = 8

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "edgekit" / "samples" / "digits"
MODEL_FILE = "digits_cnn.onnx"
CALIBRATION_FILE = "calibration.npz"
VALIDATION_FILE = "validation.npz"
CARD_FILE = "model_card.json"


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def load_splits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return disjoint, stratified train / calibration / validation splits.

    Images are float32 NCHW in [0, 1] (pixel / 16); labels are int64.
    """
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_rest, x_val, y_rest, y_val = train_test_split(
        x, y, test_size=N_VALIDATION, stratify=y, random_state=seed)
    x_train, x_cal, y_train, y_cal = train_test_split(
        x_rest, y_rest, test_size=N_CALIBRATION, stratify=y_rest,
        random_state=seed)
    return {
        "train": (x_train, y_train),
        "calibration": (x_cal, y_cal),
        "validation": (x_val, y_val),
    }


# --------------------------------------------------------------------------
# Layers (numpy)
# --------------------------------------------------------------------------

def im2col(x: np.ndarray) -> np.ndarray:
    """3x3, stride 1, pad 1 patches: [N,C,H,W] -> [N*H*W, C*9] (C, kh, kw order)."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)


def col2im(cols: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add patch gradients back to [N,C,H,W]."""
    n, c, h, w = shape
    patches = cols.reshape(n, h, w, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)
    padded = np.zeros((n, c, h + 2, w + 2), dtype=cols.dtype)
    for i in range(3):
        for j in range(3):
            padded[:, :, i:i + h, j:j + w] += patches[:, :, i, j]
    return padded[:, :, 1:-1, 1:-1]


def conv_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray):
    """3x3 same-padding convolution. Returns output [N,F,H,W] and the im2col cache."""
    n, _, h, w = x.shape
    cols = im2col(x)
    out = cols @ weight.reshape(weight.shape[0], -1).T + bias
    return out.reshape(n, h, w, -1).transpose(0, 3, 1, 2), cols


def conv_backward(grad_out: np.ndarray, cols: np.ndarray, weight: np.ndarray):
    """Gradients of :func:`conv_forward` w.r.t. (cols, weight, bias)."""
    n_filters = weight.shape[0]
    grad_flat = grad_out.transpose(0, 2, 3, 1).reshape(-1, n_filters)
    grad_weight = (grad_flat.T @ cols).reshape(weight.shape)
    grad_bias = grad_flat.sum(axis=0)
    grad_cols = grad_flat @ weight.reshape(n_filters, -1)
    return grad_cols, grad_weight, grad_bias


def maxpool_forward(x: np.ndarray):
    """2x2 / stride 2 max pooling. Returns output and the argmax cache."""
    n, c, h, w = x.shape
    windows = (x.reshape(n, c, h // 2, 2, w // 2, 2)
                .transpose(0, 1, 2, 4, 3, 5)
                .reshape(n, c, h // 2, w // 2, 4))
    argmax = windows.argmax(axis=-1)
    return np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0], argmax


def maxpool_backward(grad_out: np.ndarray, argmax: np.ndarray) -> np.ndarray:
    """Route pooled gradients to the winning element of each 2x2 window."""
    n, c, hp, wp = grad_out.shape
    windows = np.zeros((n, c, hp, wp, 4), dtype=grad_out.dtype)
    np.put_along_axis(windows, argmax[..., None], grad_out[..., None], axis=-1)
    return (windows.reshape(n, c, hp, wp, 2, 2)
                   .transpose(0, 1, 2, 4, 3, 5)
                   .reshape(n, c, hp * 2, wp * 2))


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-initialised weights in ONNX layouts (Conv: [F,C,3,3], Gemm B: [10,256])."""
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return {
        "conv1_w": he((8, 1, 3, 3), 9),
        "conv1_b": np.zeros(8, np.float32),
        "conv2_w": he((16, 8, 3, 3), 72),
        "conv2_b": np.zeros(16, np.float32),
        "fc_w": he((10, 256), 256),
        "fc_b": np.zeros(10, np.float32),
    }


def forward(params: dict[str, np.ndarray], x: np.ndarray):
    """Return logits [N,10] and the activations needed by :func:`backward`."""
    a1, cols1 = conv_forward(x, params["conv1_w"], params["conv1_b"])
    r1 = np.maximum(a1, 0)
    p1, argmax = maxpool_forward(r1)
    a2, cols2 = conv_forward(p1, params["conv2_w"], params["conv2_b"])
    r2 = np.maximum(a2, 0)
    flat = r2.reshape(len(x), -1)
    logits = flat @ params["fc_w"].T + params["fc_b"]
    cache = {"a1": a1, "cols1": cols1, "argmax": argmax, "p1": p1,
             "a2": a2, "cols2": cols2, "flat": flat}
    return logits, cache


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy loss and its gradient w.r.t. the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -log_probs[np.arange(n), labels].mean()
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1
    return float(loss), grad / n


def backward(params, cache, grad_logits) -> dict[str, np.ndarray]:
    """Back-propagate the logit gradient through the network."""
    grads = {
        "fc_w": grad_logits.T @ cache["flat"],
        "fc_b": grad_logits.sum(axis=0),
    }
    grad_r2 = (grad_logits @ params["fc_w"]).reshape(cache["a2"].shape)
    grad_a2 = grad_r2 * (cache["a2"] > 0)
    grad_cols2, grads["conv2_w"], grads["conv2_b"] = conv_backward(
        grad_a2, cache["cols2"], params["conv2_w"])
    grad_p1 = col2im(grad_cols2, cache["p1"].shape)
    grad_a1 = maxpool_backward(grad_p1, cache["argmax"]) * (cache["a1"] > 0)
    _, grads["conv1_w"], grads["conv1_b"] = conv_backward(
        grad_a1, cache["cols1"], params["conv1_w"])
    return grads


class Adam:
    """Adam optimiser updating a parameter dict in place."""

    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads):
        """Apply one bias-corrected Adam update."""
        self.t += 1
        correction1 = 1 - self.beta1 ** self.t
        correction2 = 1 - self.beta2 ** self.t
        for k, g in grads.items():
            self.m[k] = self.beta1 * self.m[k] + (1 - self.beta1) * g
            self.v[k] = self.beta2 * self.v[k] + (1 - self.beta2) * g * g
            m_hat = self.m[k] / correction1
            v_hat = self.v[k] / correction2
            params[k] -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` against integer ``labels``."""
    return float((logits.argmax(axis=1) == labels).mean())


def train(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Mini-batch Adam with a cosine learning-rate decay; deterministic per seed."""
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    optimiser = Adam(params, LEARNING_RATE)
    for epoch in range(1, EPOCHS + 1):
        optimiser.lr = LEARNING_RATE * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / EPOCHS))
        order = rng.permutation(len(x))
        losses = []
        for start in range(0, len(x), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            logits, cache = forward(params, x[batch])
            loss, grad_logits = softmax_cross_entropy(logits, y[batch])
            optimiser.step(params, backward(params, cache, grad_logits))
            losses.append(loss)
        if epoch % 10 == 0:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}")
    return params


# --------------------------------------------------------------------------
# ONNX export and verification
# --------------------------------------------------------------------------

def build_onnx(params: dict[str, np.ndarray], metrics: dict[str, float]) -> onnx.ModelProto:
    """Build the ONNX graph (opset 17, IR 8) with a symbolic batch dimension."""
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "conv1_w", "conv1_b"], ["conv1"],
                         name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2_w", "conv2_b"], ["conv2"],
                         name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("Flatten", ["relu2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [OUTPUT_NAME],
                         name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, 8, 8])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in params.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgekit-examples",
        producer_version=MODEL_VERSION,
        doc_string=("Tiny CNN for scikit-learn 8x8 digits. Input: float32 NCHW "
                    "[N,1,8,8], pixel/16 in [0,1]. Output: raw logits [N,10] "
                    "(no softmax)."),
    )
    helper.set_model_props(model, {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "train_accuracy": f"{metrics['train_accuracy']:.4f}",
        "validation_accuracy": f"{metrics['validation_accuracy']:.4f}",
        "preprocessing": "pixel/16",
    })
    onnx.checker.check_model(model, full_check=True)
    return model


def run_onnx(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX model on CPU with onnxruntime and return its logits."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def write_model_card(path: Path, metrics, splits, onnx_accuracy, parity) -> None:
    """Write the JSON model card describing the artefacts in ``path.parent``."""
    card = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "model_file": MODEL_FILE,
        "dataset": "sklearn.datasets.load_digits (8x8, 10 classes)",
        "seed": SEED,
        "splits": {name: len(xy[1]) for name, xy in splits.items()},
        "split_method": "stratified; validation held out first, calibration "
                        "held out of the rest; all three are disjoint",
        "preprocessing": "pixel/16",
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", 1, 8, 8],
                  "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", 10],
                   "semantics": "raw logits, no softmax"},
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "train_accuracy": round(metrics["train_accuracy"], 4),
        "validation_accuracy_numpy": round(metrics["validation_accuracy"], 4),
        "validation_accuracy_onnxruntime": round(onnx_accuracy, 4),
        "onnx_numpy_max_abs_diff": float(f"{parity:.3g}"),
        "training": {"optimizer": "Adam", "learning_rate": LEARNING_RATE,
                     "lr_schedule": "cosine (per epoch)",
                     "epochs": EPOCHS, "batch_size": BATCH_SIZE},
    }
    path.write_text(json.dumps(card, indent=2) + "\n")


def build(out: Path) -> int:
    """Train, export, verify and write all artefacts to ``out``."""
    splits = load_splits(SEED)
    x_train, y_train = splits["train"]
    x_val, y_val = splits["validation"]

    started = time.perf_counter()
    params = train(x_train, y_train, SEED)
    elapsed = time.perf_counter() - started

    val_logits = forward(params, x_val)[0]
    metrics = {"train_accuracy": accuracy(forward(params, x_train)[0], y_train),
               "validation_accuracy": accuracy(val_logits, y_val)}
    print(f"trained in {elapsed:.1f}s  train acc {metrics['train_accuracy']:.4f}  "
          f"val acc {metrics['validation_accuracy']:.4f}")

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    onnx.save(build_onnx(params, metrics), model_path)

    onnx_logits = run_onnx(model_path, x_val)
    parity = float(np.abs(onnx_logits - val_logits).max())
    onnx_accuracy = accuracy(onnx_logits, y_val)
    print(f"onnxruntime val acc {onnx_accuracy:.4f}  max |onnx - numpy| {parity:.2e}")
    if parity >= PARITY_TOLERANCE:
        print(f"FAIL: ONNX/numpy parity {parity:.2e} >= {PARITY_TOLERANCE}", file=sys.stderr)
        return 1

    np.savez(out / CALIBRATION_FILE, input=splits["calibration"][0])
    np.savez(out / VALIDATION_FILE, input=x_val, label=y_val)
    write_model_card(out / CARD_FILE, metrics, splits, onnx_accuracy, parity)
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
    if onnx_accuracy < MIN_ACCURACY:
        print(f"FAIL: accuracy {onnx_accuracy:.4f} < {MIN_ACCURACY}", file=sys.stderr)
        return 1
    return 0


def check(out: Path) -> int:
    """Reload the committed artefacts and verify accuracy with onnxruntime."""
    model_path = out / MODEL_FILE
    onnx.checker.check_model(onnx.load(model_path), full_check=True)
    with np.load(out / VALIDATION_FILE) as val:
        x_val, y_val = val["input"], val["label"]
    with np.load(out / CALIBRATION_FILE) as cal:
        cal_shape = cal["input"].shape
    onnx_accuracy = accuracy(run_onnx(model_path, x_val), y_val)
    ok = onnx_accuracy >= MIN_ACCURACY and cal_shape == (N_CALIBRATION, 1, 8, 8)
    print(f"{'OK' if ok else 'FAIL'}: onnxruntime val acc {onnx_accuracy:.4f} "
          f"(min {MIN_ACCURACY}), calibration {cal_shape}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: edgekit/samples/digits)")
    parser.add_argument("--check", action="store_true",
                        help="only verify the files in --out with onnxruntime")
    args = parser.parse_args(argv)
    return check(args.out) if args.check else build(args.out)


if __name__ == "__main__":
    sys.exit(main())
