"""Task-aware parity: which task a model's output serves, and how a candidate scores on it.

The parity gate (``converters.gate``) compares every output element-wise (cosine, max error,
top-1). For some heads that is the wrong question: a YOLOv8 head carries box coordinates of
background anchors that nobody reads, and a text-detection probability map is thresholded
before use. When a task is declared (``edgekit convert --task``), the task metric computed
candidate vs fp32 reference decides for THAT output against the profile's
``validation.min_task_score``; the element-wise figures are still reported (ADR 0007).

Tasks:

* ``classification``: the output is class scores ``[N, C]``. Task metric = top-1 agreement.
  Element-wise checks keep deciding (class scores are consumed directly, e.g. thresholded), so
  choosing this task never loosens anything; the accuracy drop applies when labels are given.
  Exception (ADR 0014): ``--task classification`` *declared* on *labelled* validation data makes
  the task metric "accuracy vs the labels" (drop <= ``budgets.max_accuracy_drop``) together with
  top-1 agreement decide that output; the element-wise figures are reported, not deciding.
  Ground truth is a stronger proof than closeness to fp32 on samples the fp32 model itself finds
  ambiguous (where any int8 logit noise moves the probability by > 0.1).
* ``detection-yolo``: a YOLOv8 head ``[N, 4 + C, anchors]``. Task metric = mean IoU of the
  strongest detection (same class required) over the images where the reference detects
  something (score >= 0.25); the matched IoU of the whole detection sets after NMS is reported
  next to it (not deciding: detections scored near the threshold flip in and out).
* ``text-mask``: a probability map ``[N, 1, H, W]`` (PP-OCR / DB text detection). Task metric =
  mean IoU of the masks thresholded at 0.3.
* ``raw``: no task metric; element-wise checks decide.

``auto`` picks ``classification`` when labels are given or the first output is ``[N, C]``,
else ``raw`` (detection and text heads are never guessed: declare them).

numpy only (shared by the ONNX and TFLite pipelines).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.core.errors import UsageError

from .task_metrics import detection_iou, matched_box_iou, text_mask_iou, yolo_detections

TASKS = ("classification", "detection-yolo", "text-mask", "raw")
DEFAULT_MIN_TASK_SCORE = 0.9
YOLO_CONF = 0.25
TEXT_THRESHOLD = 0.3


@dataclass(frozen=True)
class TaskSpec:
    name: str            # one of TASKS
    output: str | None   # the output the task metric applies to (None for raw)
    reason: str          # why this task (declared / guessed from ...)
    labelled: bool = False   # declared classification on labelled data: accuracy vs labels decides

    @property
    def decides_alone(self) -> bool:
        """True when the task metric replaces the element-wise checks on ``output``."""
        return self.name in ("detection-yolo", "text-mask") or (self.name == "classification" and self.labelled)

    def as_dict(self) -> dict:
        return {"task": self.name, "output": self.output, "reason": self.reason,
                **({"labelled": True} if self.labelled else {})}


def _shapes(outputs: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{n} {list(v.shape)}" for n, v in outputs.items())


def _fits(task: str, arr: np.ndarray) -> bool:
    if task == "classification":
        return arr.ndim == 2 and arr.shape[1] > 1
    if task == "detection-yolo":
        return arr.ndim == 3 and arr.shape[1] >= 5 and arr.shape[2] > arr.shape[1]
    if task == "text-mask":
        return arr.ndim == 4 and arr.shape[1] == 1 and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0
    return True


def resolve(task: str, reference: dict[str, np.ndarray], has_labels: bool) -> TaskSpec:
    """Pick the task for a model from its reference outputs on the validation data.

    ``task`` is ``auto`` or one of TASKS; a declared task whose output shape is not found is a
    UsageError naming the outputs (never a silent fallback)."""
    if task != "auto" and task not in TASKS:
        raise UsageError(f"unknown task {task!r}; use one of auto, {', '.join(TASKS)}")
    first = next(iter(reference))
    if task == "auto":
        if has_labels:
            return TaskSpec("classification", first, "auto: the validation data has labels")
        if _fits("classification", reference[first]):
            return TaskSpec("classification", first,
                            f"auto: output {first} {list(reference[first].shape)} looks like class scores [N, C]")
        return TaskSpec("raw", None, f"auto: output {first} {list(reference[first].shape)} is not [N, C] class "
                                     "scores; element-wise checks decide (declare --task detection-yolo|text-mask "
                                     "for detection heads)")
    if task == "raw":
        return TaskSpec("raw", None, "declared: element-wise checks decide")
    name = next((n for n, v in reference.items() if _fits(task, v)), None)
    if name is None:
        want = {"classification": "[N, C] class scores", "detection-yolo": "[N, 4 + classes, anchors] (YOLOv8 head)",
                "text-mask": "[N, 1, H, W] probabilities in [0, 1]"}[task]
        raise UsageError(f"--task {task} needs an output shaped {want}; the model's outputs are {_shapes(reference)}",
                         hint="Use --task raw (element-wise checks) or the task that matches the model's head.")
    if task == "classification" and has_labels:
        return TaskSpec(task, name, f"declared: --task {task} on output {name} with labels: accuracy vs the labels "
                                    "and top-1 agreement decide (element-wise figures reported)", labelled=True)
    return TaskSpec(task, name, f"declared: --task {task} on output {name}")


def score(spec: TaskSpec, candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray],
          min_score: float, labels: np.ndarray | None = None, max_accuracy_drop: float = 0.01) -> dict | None:
    """The task metric of ``candidate`` vs ``reference`` on ``spec.output``; None for raw.

    For a labelled classification spec, ``labels`` are the ground truth and the candidate's
    accuracy may drop by at most ``max_accuracy_drop`` below the reference's (and top-1 agreement
    must still reach ``min_score``).

    ``decidable`` is False when the validation data cannot exercise the task (no reference
    detections / no text pixels): the element-wise checks then decide, and the report says so."""
    if spec.name == "raw":
        return None
    got, ref = np.asarray(candidate[spec.output]), np.asarray(reference[spec.output])
    out = {"task": spec.name, "output": spec.output, "threshold": min_score}
    if spec.name == "classification":
        agree = float(np.mean(np.argmax(got, axis=1) == np.argmax(ref, axis=1)))
        out.update(metric="top-1 agreement", score=round(agree, 5), samples=len(ref), decidable=True)
        if spec.labelled and labels is not None:
            acc = float(np.mean(np.argmax(got, axis=1) == labels))
            ref_acc = float(np.mean(np.argmax(ref, axis=1) == labels))
            out.update(metric="top-1 agreement + accuracy vs labels", accuracy=round(acc, 5),
                       reference_accuracy=round(ref_acc, 5), accuracy_drop=round(ref_acc - acc, 5),
                       max_accuracy_drop=max_accuracy_drop)
    elif spec.name == "detection-yolo":
        iou, n = detection_iou(ref, got, conf=YOLO_CONF)
        sets = [matched_box_iou(yolo_detections(r, YOLO_CONF), yolo_detections(g, YOLO_CONF))
                for r, g in zip(ref, got)]
        out.update(metric=f"top-box IoU (images with a reference detection >= {YOLO_CONF})",
                   score=round(iou, 5) if n else None, samples=n, decidable=n > 0,
                   detection_set_iou=round(float(np.mean(sets)), 5))
    else:
        ious = [text_mask_iou(a, b, TEXT_THRESHOLD) for a, b in zip(ref, got)]
        text_px = float((ref > TEXT_THRESHOLD).mean())
        out.update(metric=f"text-mask IoU at {TEXT_THRESHOLD} (mean over images)", score=round(float(np.mean(ious)), 5),
                   min_image_score=round(float(np.min(ious)), 5), samples=len(ious),
                   reference_text_fraction=round(text_px, 5), decidable=text_px > 0)
    out["passed"] = bool(out["decidable"] and out["score"] >= min_score
                         and out.get("accuracy_drop", 0.0) <= out.get("max_accuracy_drop", 1.0))
    return out
