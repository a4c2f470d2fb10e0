"""Task-level checks that compare a converted model with its reference beyond raw output diffs.

* YOLOv8-style detection heads (``[1, 4 + classes, anchors]``): decode, per-class NMS, and a
  matched box IoU between two detection sets (1.0 = the same boxes with the same classes).
* Text-detection probability maps (PP-OCR det): IoU of the masks thresholded at 0.3.

numpy only; used by the task-aware gate (``converters.tasks``), tests and ``benchmarks/quantization.py``.
"""

from __future__ import annotations

import numpy as np


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def yolo_detections(output: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[tuple]:
    """One image's YOLOv8 output ``[4 + C, A]`` (or ``[1, 4 + C, A]``) → ``[(xyxy, class, score)]`` after NMS."""
    out = np.asarray(output, np.float32)
    out = out[0] if out.ndim == 3 else out
    scores_all = out[4:]
    cls = scores_all.argmax(axis=0)
    scores = scores_all.max(axis=0)
    keep = scores >= conf
    cx, cy, w, h = out[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    cls, scores = cls[keep], scores[keep]
    dets = []
    for c in np.unique(cls):
        idx = np.where(cls == c)[0]
        idx = idx[np.argsort(-scores[idx])]
        while idx.size:
            best, idx = idx[0], idx[1:]
            dets.append((boxes[best], int(c), float(scores[best])))
            if idx.size:
                idx = idx[_iou(boxes[best], boxes[idx]) < iou]
    return dets


def matched_box_iou(reference: list[tuple], candidate: list[tuple]) -> float:
    """Greedy same-class matching; sum of matched IoUs / max(#reference, #candidate). 1.0 if both empty."""
    if not reference and not candidate:
        return 1.0
    used: set[int] = set()
    total = 0.0
    for box, c, _ in sorted(reference, key=lambda d: -d[2]):
        best, best_j = 0.0, None
        for j, (cbox, cc, _) in enumerate(candidate):
            if cc == c and j not in used:
                v = float(_iou(box, cbox[None])[0])
                if v > best:
                    best, best_j = v, j
        if best_j is not None:
            used.add(best_j)
            total += best
    return total / max(len(reference), len(candidate))


def top_box_iou(reference: np.ndarray, candidate: np.ndarray) -> float:
    """IoU of the highest-scoring box of two YOLOv8 outputs for one image (0 if the classes differ).

    Robust where set matching is not: a detection scored near the threshold can flip in or out
    with any tiny change, but the strongest detection must stay where it is."""
    best = []
    for out in (reference, candidate):
        out = np.asarray(out, np.float32)
        out = out[0] if out.ndim == 3 else out
        a = int(out[4:].max(axis=0).argmax())
        cx, cy, w, h = out[:4, a]
        best.append((np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), int(out[4:, a].argmax())))
    (ra, rc), (ca, cc) = best
    return float(_iou(ra, ca[None])[0]) if rc == cc else 0.0


def detection_iou(reference: np.ndarray, candidate: np.ndarray, conf: float = 0.25) -> tuple[float, int]:
    """Mean ``top_box_iou`` over the images (first axis) where the reference detects something
    (top score >= ``conf``); returns (mean IoU, number of such images)."""
    ious = [top_box_iou(r, c) for r, c in zip(reference, candidate) if float(np.max(r[4:])) >= conf]
    return (float(np.mean(ious)) if ious else float("nan")), len(ious)


def text_mask_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.3) -> float:
    """IoU of ``prob > threshold`` masks (PP-OCR det's binarization threshold). 1.0 if both empty."""
    a, b = np.asarray(reference) > threshold, np.asarray(candidate) > threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
