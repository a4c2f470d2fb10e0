"""Image folders as calibration/validation data, with preprocessing the user declares.

``--preprocess "resize=320x320,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW,color=RGB"``
is parsed into a ``Preprocess``; images are decoded one at a time (Pillow) into a preallocated
float32 array of at most ``max_samples`` rows, so memory stays bounded. No guessing: a folder of
images without a declared preprocessing is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from edgekit.core.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
EXAMPLE = "resize=320x320,scale=1/255,layout=NCHW"


@dataclass(frozen=True)
class Preprocess:
    width: int
    height: int
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    color: str = "RGB"

    def apply(self, img) -> np.ndarray:
        """PIL image → float32 array with the declared layout, without a batch axis."""
        img = img.convert("L" if self.color == "L" else "RGB").resize((self.width, self.height))
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.color == "BGR":
            arr = arr[:, :, ::-1]
        channels = arr.shape[2]
        mean = np.asarray(self.mean[:channels], np.float32)
        std = np.asarray(self.std[:channels], np.float32)
        arr = (arr * np.float32(self.scale) - mean) / std
        return np.ascontiguousarray(arr.transpose(2, 0, 1) if self.layout == "NCHW" else arr, dtype=np.float32)


def _floats(key: str, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(Fraction(v)) for v in value.split("/"))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--preprocess {key}={value!r}: expected numbers separated by '/'",
                         hint=f"Example: {key}=0.485/0.456/0.406") from None


def parse_preprocess(spec: str) -> Preprocess:
    fields: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"--preprocess item {part!r} is not KEY=VALUE", hint=f"Example: {EXAMPLE}")
        if key == "resize":
            w, x, h = value.lower().partition("x")
            if not (x and w.isdigit() and h.isdigit()):
                raise UsageError(f"--preprocess resize={value!r}: expected WIDTHxHEIGHT", hint=f"Example: {EXAMPLE}")
            fields.update(width=int(w), height=int(h))
        elif key == "scale":
            try:
                fields["scale"] = float(Fraction(value))
            except (ValueError, ZeroDivisionError):
                raise UsageError(f"--preprocess scale={value!r}: expected a number like 1/255") from None
        elif key in ("mean", "std"):
            fields[key] = _floats(key, value)
        elif key in ("layout", "color"):
            allowed = ("NCHW", "NHWC") if key == "layout" else ("RGB", "BGR", "L")
            if value.upper() not in allowed:
                raise UsageError(f"--preprocess {key}={value!r}: use one of {', '.join(allowed)}")
            fields[key] = value.upper()
        else:
            raise UsageError(f"--preprocess has unknown key {key!r}; keys: resize, scale, mean, std, layout, color",
                             hint=f"Example: {EXAMPLE}")
    if "width" not in fields:
        raise UsageError("--preprocess must say resize=WIDTHxHEIGHT", hint=f"Example: {EXAMPLE}")
    return Preprocess(**fields)


def load_image_folder(folder: Path, spec: str | None, max_samples: int) -> np.ndarray:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:max_samples]
    if not files:
        raise UsageError(f"{folder} holds no .npy files and no images ({', '.join(IMAGE_SUFFIXES)})")
    if not spec:
        raise UsageError(f"{folder} is a folder of images: declare how to turn them into model inputs",
                         hint=f"Add --preprocess {EXAMPLE} (plus mean=/std= if the model was trained with them).")
    pre = parse_preprocess(spec)
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading image folders needs Pillow", hint="pip install 'edgekit[host]'") from None
    out = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                arr = pre.apply(img)
        except OSError as exc:
            raise UsageError(f"cannot decode image {f.name}: {exc}") from None
        if out is None:
            out = np.empty((len(files), *arr.shape), np.float32)
        out[i] = arr
    return out
