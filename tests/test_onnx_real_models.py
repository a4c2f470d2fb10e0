"""Real third-party models through `edgekit convert` (CLI, image folders, declared preprocessing):
nudenet YOLOv8n and PP-OCRv4 det from their PyPI wheels, on generated scenes with faces / text.
Checks the task, not only raw diffs: box IoU of the top detection, text-mask IoU at 0.3.
Each model converts once per session (module-scoped fixtures)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from converters import synthetic, wheel_models
from converters.images import load_image_folder
from converters.task_metrics import detection_iou, text_mask_iou
from edgekit.cli.main import cli
from edgekit.core.profiles import profiles_dir

YOLO_PRE = "resize=320x320,scale=1/255,layout=NCHW"
OCR_PRE = "resize=320x320,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW"


def detector_profile(folder, min_cosine: float) -> str:
    """x86 gateway with the element-wise error budget opened up: raw YOLO/DB heads carry box
    coordinates of background anchors that swing freely; the task checks below judge instead."""
    text = (profiles_dir() / "x86-64-gateway.toml").read_text().replace('id = "x86-64-gateway"', 'id = "detector-box"')
    text = text.replace("max_output_rel_error = 0.1 ", "max_output_rel_error = 1.0 ")
    text = text.replace("min_cosine = 0.99", f"min_cosine = {min_cosine}")
    path = folder / "detector-box.toml"
    path.write_text(text)
    return str(path)


def write_images(folder, images):
    from PIL import Image

    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def run_all(model, name, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def cli_convert(*args):
    res = CliRunner().invoke(cli, ["convert", *map(str, args), "--json"], catch_exceptions=False)
    return res


@pytest.fixture(scope="module")
def nudenet(tmp_path_factory):
    work = tmp_path_factory.mktemp("nudenet")
    model = wheel_models.extract("nudenet-320n", work)
    cal = write_images(work / "cal", [synthetic.people_scene(100 + i) for i in range(24)])
    val = write_images(work / "val", [synthetic.people_scene(i) for i in range(24)])
    res = cli_convert(model, "-p", detector_profile(work, 0.99), "--calibration", cal, "--validation", val,
                      "--preprocess", YOLO_PRE, "--out", work / "out")
    assert res.exit_code == 0, res.output
    return {"model": model, "report": json.loads(res.stdout)[0], "artifact": work / "out" / "detector-box" / "model.onnx",
            "x": load_image_folder(val, YOLO_PRE, 100)}


@pytest.fixture(scope="module")
def ppocr_det(tmp_path_factory):
    work = tmp_path_factory.mktemp("ppocr")
    model = wheel_models.extract("ppocr-v4-det", work)
    cal = write_images(work / "cal", [synthetic.text_scene(100 + i) for i in range(24)])
    val = write_images(work / "val", [synthetic.text_scene(i) for i in range(12)])
    # min_cosine 0.9: static int8 reaches cosine 0.95-0.97 on this model here (the benchmark reports it
    # against the 0.99 target); the text mask is what OCR uses, and that is held to IoU >= 0.85 below.
    res = cli_convert(model, "-p", detector_profile(work, 0.9), "--precision", "int8-static", "--calibration", cal,
                      "--validation", val, "--preprocess", OCR_PRE, "--out", work / "out")
    assert res.exit_code == 0, res.output
    return {"model": model, "report": json.loads(res.stdout)[0], "artifact": work / "out" / "detector-box" / "model.onnx",
            "x": load_image_folder(val, OCR_PRE, 100), "work": work, "val": val, "cal": cal}


def test_nudenet_auto_picks_static_int8_smaller_and_same_boxes(nudenet):
    r = nudenet["report"]
    assert r["precision"] == "int8-static", r["candidates"]
    c = r["candidates"][0]
    assert c["size_ratio"] >= 3.5, c["size_ratio"]
    assert c["outputs"]["output0"]["cosine"] >= 0.99
    assert r["fixed_input_shapes"] == {"images": [1, 3, 320, 320]}
    ref = run_all(nudenet["model"], "images", nudenet["x"])
    got = run_all(nudenet["artifact"], "images", nudenet["x"])
    iou, n = detection_iou(ref, got, conf=0.25)
    assert n >= 4, "the generated faces must give the fp32 model real detections"
    assert iou >= 0.9, iou


def test_ppocr_det_static_int8_keeps_the_text_mask(ppocr_det):
    r = ppocr_det["report"]
    c = r["candidates"][0]
    assert r["precision"] == "int8-static" and c["size_ratio"] >= 3.4, c["size_ratio"]
    assert any(s["step"] == "upgrade-opset" for s in r["steps"]) and r["source_opset"] == 12 and r["opset"] >= 13
    ref = run_all(ppocr_det["model"], "x", ppocr_det["x"])
    got = run_all(ppocr_det["artifact"], "x", ppocr_det["x"])
    assert (ref > 0.3).mean() > 0.02, "the generated text must light up the fp32 probability map"
    ious = [text_mask_iou(a, b) for a, b in zip(ref, got)]
    assert np.mean(ious) >= 0.85 and min(ious) >= 0.7, ious


def test_ppocr_det_fp16_is_validated_not_trusted(ppocr_det):
    """ORT's fp16 converter breaks the raw PP-OCRv4 det (text-mask IoU ~0.6 measured here); on our
    pre-processed graph it does far less harm but still exceeds the Jetson profile's 0.1 max-error
    budget: the parity gate must refuse the artifact with the numbers and write nothing."""
    work = ppocr_det["work"]
    prof = (profiles_dir() / "jetson-orin-nano.toml").read_text().replace('id = "jetson-orin-nano"', 'id = "gpu-box"')
    (work / "gpu-box.toml").write_text(prof)
    res = cli_convert(ppocr_det["model"], "-p", work / "gpu-box.toml", "--precision", "fp16", "--calibration",
                      ppocr_det["cal"], "--validation", ppocr_det["val"], "--preprocess", OCR_PRE, "--out", work / "fp16")
    assert res.exit_code == 4, res.output
    err = json.loads(res.stderr)["error"]
    out = err["details"]["report"][0]["outputs"]["sigmoid_0.tmp_0"]
    assert err["code"] == "parity" and "sigmoid_0.tmp_0" in err["message"]
    assert out["cosine"] < 0.99 or out["relative_max_diff"] > 0.1
    assert not (work / "fp16" / "gpu-box").exists()
