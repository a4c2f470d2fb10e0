"""Synthetic, meaningful test scenes for real third-party models (no data sets can be downloaded).

``people_scene`` draws a face (hair, eyes, nose, mouth) and shoulders for the nudenet YOLOv8
detector; ``text_scene`` renders lines of words and numbers for PP-OCR text detection
(Pillow when available, numpy otherwise: plain rectangles). ``blobs`` (smooth colour blobs in
[0, 1], NCHW) and ``text_lines`` (dark stroke rows on a white page, normalised like PaddleOCR,
optionally every other image rotated 180 degrees) are batch generators that exercise realistic
value ranges. ``text_crops`` renders real words as detector-style line crops, upright or rotated
180 degrees, preprocessed like RapidOCR's direction classifier, *with labels* (0 = 0 degrees,
1 = 180 degrees): the stroke rows of ``text_lines`` do not look like text to that classifier
(its fp32 probabilities on them scatter around 0.5, whatever the orientation), rendered words do. Deterministic per seed. Used by tests and
benchmarks only; they do not stand in for accuracy data sets.
"""

from __future__ import annotations

import numpy as np

WORDS = ("edgekit", "INVOICE", "Total 42.50", "quantize", "2026-11-26", "Hello World", "ONNX int8", "parity",
         "Raspberry Pi", "No. 7731", "sensor", "OTA update")


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
        return Image, ImageDraw, ImageFont
    except ImportError:
        return None


def people_scene(seed: int, size: int = 320) -> np.ndarray:
    """HxWx3 uint8 RGB image of one drawn face (hair, eyes, brows, nose, mouth) and shoulders.

    nudenet's YOLOv8n detects these as FACE_* with scores around 0.4-0.7."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(60, 200, 3))
    pil = _pil()
    if pil is None:
        img = np.full((size, size, 3), bg, np.uint8)
        x, y = rng.integers(0, size - 100, 2)
        img[y:y + 100, x:x + 80] = (224, 172, 140)
        return img
    Image, ImageDraw, _ = pil
    from PIL import ImageFilter

    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    skin = tuple(int(v) for v in rng.choice([(241, 194, 160), (224, 172, 140), (198, 134, 100), (141, 85, 36)]))
    s = int(rng.integers(size * 9 // 32, size // 2))
    x, y = int(rng.integers(10, size - 10 - s)), int(rng.integers(10, size - 10 - s))
    d.ellipse([x - 10, y - 15, x + s + 10, y + s * 0.6], fill=(60, 40, 20))                   # hair
    d.ellipse([x, y, x + s, y + s * 1.25], fill=skin)                                          # face
    for ex in (x + s * 0.22, x + s * 0.62):
        d.ellipse([ex, y + s * 0.45, ex + s * 0.18, y + s * 0.55], fill=(255, 255, 255))      # eyes
        d.ellipse([ex + s * 0.05, y + s * 0.46, ex + s * 0.13, y + s * 0.54], fill=(40, 30, 20))
        d.line([ex - 3, y + s * 0.38, ex + s * 0.2, y + s * 0.36], fill=(60, 40, 20), width=4)  # brows
    d.polygon([(x + s * 0.5, y + s * 0.55), (x + s * 0.42, y + s * 0.8), (x + s * 0.58, y + s * 0.8)],
              fill=(200, 140, 110))                                                            # nose
    d.ellipse([x + s * 0.33, y + s * 0.92, x + s * 0.67, y + s * 1.02], fill=(180, 70, 70))   # mouth
    if y + s * 1.2 < size:
        d.rectangle([x + s * 0.35, y + s * 1.2, x + s * 0.65, min(y + s * 1.5, size)], fill=skin)  # neck
    if y + s * 1.45 < size:
        d.rectangle([x - s * 0.3, y + s * 1.45, x + s * 1.3, size], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)))


def text_scene(seed: int, width: int = 320, height: int = 320) -> np.ndarray:
    """HxWx3 uint8 RGB image with several lines of dark text on a light background."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), rng.integers(200, 255), np.uint8)
    pil = _pil()
    if pil is None:
        for k in range(4):
            y = 20 + k * 60
            img[y:y + 20, 20:20 + int(rng.integers(80, width - 40))] = 20
        return img
    Image, ImageDraw, ImageFont = pil
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    y = int(rng.integers(5, 25))
    while y < height - 30:
        fs = int(rng.integers(18, 34))
        try:
            font = ImageFont.load_default(size=fs)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            font = ImageFont.load_default()
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 3))))
        d.text((int(rng.integers(5, 60)), y), text, fill=tuple(int(v) for v in rng.integers(0, 80, 3)), font=font)
        y += fs + int(rng.integers(12, 40))
    return np.asarray(im)


def to_nchw(images: list[np.ndarray], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> np.ndarray:
    """uint8 HWC RGB images → float32 NCHW, scaled to [0, 1] then normalized."""
    x = np.stack(images).astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def blobs(n: int, seed: int, size: int = 320) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    out = np.zeros((n, 3, size, size), np.float32)
    for k in range(n):
        for _ in range(8):
            cx, cy, s = rng.random(3)
            out[k] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.1 * s))[None] * rng.random(3)[:, None, None]
    return np.clip(out, 0, 1)


def text_lines(n: int, height: int, width: int, seed: int, flip_every_other: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.ones((n, 3, height, width), np.float32)
    rows = max(1, height // 50)
    for k in range(n):
        for _ in range(rows):
            th = int(rng.integers(height // 6, height // 3)) if height < 100 else int(rng.integers(6, 14))
            y = int(rng.integers(0, height - th))
            x0 = int(rng.integers(0, width // 3))
            length = int(rng.integers(width // 3, width - x0))
            step = int(rng.integers(5, 9))
            for c in range(x0, min(width, x0 + length), step):
                out[k, :, y:y + th, c:c + 3] = rng.random() * 0.3
        if flip_every_other and k % 2:
            out[k] = out[k, :, ::-1, ::-1]
    return ((out - 0.5) / 0.5).astype(np.float32)


def text_crops(n: int, seed: int, height: int = 48, width: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered text-line crops as ``[n, 3, height, width]`` float32 and labels ``[n]``
    (0 = upright, 1 = rotated 180 degrees; alternating), preprocessed like RapidOCR's direction
    classifier (resize to ``height`` keeping the aspect ratio up to ``width``, ``(x/255 - 0.5)/0.5``,
    zero padding on the right). Needs Pillow (its bundled scalable font: no system fonts)."""
    pil = _pil()
    if pil is None:
        from edgekit.core.errors import UsageError

        raise UsageError("rendering text crops needs Pillow", hint="pip install 'edgekit[host]'")
    Image, ImageDraw, ImageFont = pil
    out = np.zeros((n, 3, height, width), np.float32)
    labels = np.arange(n, dtype=np.int64) % 2
    for k in range(n):
        rng = np.random.default_rng((seed, k))
        font = ImageFont.load_default(size=int(rng.integers(22, 40)))
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(2, 8))
        im = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (int(rng.integers(200, 256)),) * 3)
        ImageDraw.Draw(im).text((pad - left, pad - top), text, fill=tuple(int(v) for v in rng.integers(0, 80, 3)),
                                font=font)
        if labels[k]:
            im = im.rotate(180)
        w = min(width, int(np.ceil(height * im.size[0] / im.size[1])))
        arr = np.asarray(im.resize((w, height), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0
        out[k, :, :, :w] = (arr - 0.5) / 0.5
    return out, labels
