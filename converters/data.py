"""Calibration / validation data loading: ``.npz`` (named arrays), ``.npy``, a folder of ``.npy``,
or a folder of images with declared preprocessing (``converters.images``).

Arrays are capped at ``max_samples`` rows so memory stays bounded (image folders are decoded one
file at a time into a preallocated array). Labels (``label`` key in an ``.npz``) are returned
separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core.errors import UsageError


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return min(len(v) for v in self.inputs.values())

    def head(self, n: int) -> "Dataset":
        return Dataset({k: v[:n] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:n])


def load_dataset(path: str | Path, input_names: list[str], max_samples: int = 1000,
                 preprocess: str | None = None) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"data file {path} does not exist")
    labels = None
    if path.is_dir() and not any(path.glob("*.npy")):
        from .images import load_image_folder

        return Dataset({input_names[0]: load_image_folder(path, preprocess, max_samples)})
    if path.is_dir():
        files = sorted(path.glob("*.npy"))[:max_samples]
        if not files:
            raise UsageError(f"{path} holds no .npy files")
        arrays = {input_names[0]: np.stack([np.load(f, allow_pickle=False) for f in files])}
    elif path.suffix == ".npy":
        arrays = {input_names[0]: np.load(path, allow_pickle=False, mmap_mode="r")[:max_samples]}
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if "label" in keys:
                labels = np.asarray(data["label"][:max_samples])
            if set(input_names) <= keys:
                arrays = {k: np.asarray(data[k][:max_samples]) for k in input_names}
            elif "input" in keys and len(input_names) == 1:
                arrays = {input_names[0]: np.asarray(data["input"][:max_samples])}
            else:
                raise UsageError(f"{path} has arrays {sorted(keys)}; the model needs inputs {input_names}",
                                 hint="Name the arrays after the model inputs (or 'input' for a single input).")
    else:
        raise UsageError(f"unsupported data file {path.name}: use .npz, .npy or a folder of .npy files")
    return Dataset(arrays, labels)
