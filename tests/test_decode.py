"""Decode, NMS, COCO evaluation and drawing, checked against OpenCV DNN on real weights.

OpenCV's Darknet importer is an independent implementation of the [yolo] layer, so its
decoded rows are the oracle for our decode of the raw conv heads it also exposes.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from darknet2tflite.evaluation.coco_eval import coco_evaluate, map_categories, match_images
from darknet2tflite.evaluation.decode import Detections, decode_heads
from darknet2tflite.evaluation.draw import draw_detections, save_image
from darknet2tflite.images import letterbox_params, load_rgb, preprocess

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CFG = SHARED / "darknet" / "cfg" / "yolov4-tiny.cfg"
WEIGHTS = SHARED / "darknet" / "weights" / "yolov4-tiny.weights"
NAMES = SHARED / "darknet" / "cfg" / "coco.names"
SAMPLES = SHARED / "images" / "samples"
COCO_DIR = SHARED / "images" / "coco"

ANCHORS = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)]

needs_shared = pytest.mark.skipif(
    not (CFG.is_file() and WEIGHTS.is_file() and NAMES.is_file()),
    reason=f"shared Darknet yolov4-tiny files not found under {SHARED}",
)


def _names() -> list[str]:
    return [n.strip() for n in NAMES.read_text().splitlines() if n.strip()]


def _meta(letter_box: bool = False) -> dict[str, Any]:
    """model.json for yolov4-tiny written by hand from the cfg's [yolo] sections."""
    def head(index: int, grid: int, mask: list[int]) -> dict[str, Any]:
        return {"index": index, "type": "yolo", "grid": [grid, grid],
                "anchors": [list(ANCHORS[m]) for m in mask], "mask": mask, "classes": 80,
                "scale_x_y": 1.05, "new_coords": 0, "output": f"head_{index}"}
    return {"input": {"width": 416, "height": 416, "channels": 3, "letter_box": letter_box},
            "heads": [head(30, 13, [3, 4, 5]), head(37, 26, [1, 2, 3])],
            "names": _names() if NAMES.is_file() else None}


class OpenCVYolo:
    """yolov4-tiny in OpenCV DNN: raw conv heads (NHWC) and OpenCV's own decoded rows."""

    def __init__(self) -> None:
        self.net = cv2.dnn.readNetFromDarknet(str(CFG), str(WEIGHTS))
        layer_names = list(self.net.getLayerNames())
        self.yolo_names = list(self.net.getUnconnectedOutLayersNames())
        # The raw head is the last conv before each yolo layer (OpenCV puts a permute between).
        self.head_names = []
        for yname in self.yolo_names:
            before = layer_names[: layer_names.index(yname)]
            self.head_names.append(next(n for n in reversed(before) if n.startswith("conv_")))

    def run(self, x_hwc: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        self.net.setInput(np.ascontiguousarray(x_hwc.transpose(2, 0, 1)[None]))
        outs = self.net.forward(self.head_names + self.yolo_names)
        k = len(self.head_names)
        heads = [o.transpose(0, 2, 3, 1) for o in outs[:k]]
        return heads, np.concatenate(outs[k:], axis=0)


@pytest.fixture(scope="module")
def yolo() -> OpenCVYolo:
    if not (CFG.is_file() and WEIGHTS.is_file()):
        pytest.skip(f"shared Darknet yolov4-tiny files not found under {SHARED}")
    return OpenCVYolo()


def _detect(yolo: OpenCVYolo, path: Path, conf: float = 0.25, method: str = "darknet",
            letter_box: bool = False) -> Detections:
    rgb = load_rgb(path)
    heads, _ = yolo.run(preprocess(rgb, 416, 416, letter_box, method=method))  # type: ignore[arg-type]
    return decode_heads(heads, _meta(letter_box), rgb.shape[1], rgb.shape[0], conf_thresh=conf, nms_thresh=0.45)


def _best(dets: Detections, names: list[str]) -> dict[str, float]:
    best: dict[str, float] = {}
    for s, c in zip(dets.scores, dets.classes, strict=True):
        best[names[c]] = max(best.get(names[c], 0.0), float(s))
    return best


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---------------------------------------------------------------- against OpenCV


@needs_shared
@pytest.mark.parametrize("image", ["dog.jpg", "person.jpg", "giraffe.jpg"])
def test_decode_matches_opencv_yolo_rows(yolo: OpenCVYolo, image: str) -> None:
    rgb = load_rgb(SAMPLES / image)
    h, w = rgb.shape[:2]
    heads, rows = yolo.run(preprocess(rgb, 416, 416, letter_box=False))
    assert [hd.shape for hd in heads] == [(1, 13, 13, 255), (1, 26, 26, 255)]
    # OpenCV rows: [cx, cy, w, h, objectness, obj * sigmoid(class)...] normalized; it zeroes
    # class scores <= 0.2 itself, so compare above that.
    thresh = 0.25
    r_idx, c_idx = np.nonzero(rows[:, 5:] > thresh)
    cx, cy, bw, bh = (rows[r_idx, k].astype(np.float64) for k in range(4))
    expected = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
    exp_scores = rows[r_idx, 5 + c_idx]
    assert (rows[r_idx, 4] > thresh).all()  # a surviving class implies objectness > thresh

    ours = decode_heads(heads, _meta(), w, h, conf_thresh=thresh, nms_thresh=0, clip=False)
    assert len(ours) == len(expected) > 0
    # Pair up by (class, score): both decoders agree, so sorting aligns them.
    ko = np.lexsort((-ours.scores, ours.classes))
    ke = np.lexsort((-exp_scores, c_idx))
    assert np.array_equal(ours.classes[ko], c_idx[ke])
    np.testing.assert_allclose(ours.scores[ko], exp_scores[ke], atol=2e-5)
    np.testing.assert_allclose(ours.boxes[ko], expected[ke], atol=2e-3 * max(w, h))

    # conf_thresh below every probability: one detection per (cell, anchor, class), as the
    # Darknet mAP code emits them.
    every = decode_heads(heads, _meta(), w, h, conf_thresh=-1.0, nms_thresh=0, clip=False)
    assert len(every) == (13 * 13 + 26 * 26) * 3 * 80


@needs_shared
def test_sample_images_reference_detections(yolo: OpenCVYolo) -> None:
    names = _names()
    # With OpenCV's resampler (what blobFromImage does) the published reference is hit.
    dog = _best(_detect(yolo, SAMPLES / "dog.jpg", method="opencv"), names)
    assert dog["dog"] == pytest.approx(0.87, abs=0.02)
    assert dog["truck"] == pytest.approx(0.81, abs=0.02)
    assert dog["bicycle"] == pytest.approx(0.61, abs=0.02)
    person = _best(_detect(yolo, SAMPLES / "person.jpg", method="opencv"), names)
    assert person["person"] == pytest.approx(0.99, abs=0.02)
    assert person["dog"] == pytest.approx(0.99, abs=0.02)
    assert person["horse"] == pytest.approx(0.78, abs=0.02)
    # Darknet's own resize_image (the default) shifts scores a little, same objects.
    dets = _detect(yolo, SAMPLES / "dog.jpg")
    dog = _best(dets, names)
    assert {"dog", "truck", "bicycle"} <= set(dog)
    assert dog["dog"] == pytest.approx(0.87, abs=0.06)
    assert dog["truck"] == pytest.approx(0.81, abs=0.06)
    assert dog["bicycle"] == pytest.approx(0.61, abs=0.06)
    dog_box = dets.boxes[[names[c] == "dog" for c in dets.classes]][0]
    assert _iou(dog_box, np.array([130, 210, 315, 540])) > 0.8  # lower-left of the 768x576 photo
    assert {"person", "dog", "horse"} <= set(_best(_detect(yolo, SAMPLES / "person.jpg"), names))
    assert dets.boxes.dtype == np.float32 and dets.classes.dtype == np.int64
    assert np.all(np.diff(dets.scores) <= 0)


@needs_shared
def test_letterbox_correction_puts_boxes_back_on_the_image(yolo: OpenCVYolo) -> None:
    names = _names()
    stretched = _detect(yolo, SAMPLES / "dog.jpg")
    boxed = _detect(yolo, SAMPLES / "dog.jpg", letter_box=True)
    # The bicycle is only partly seen, its box legitimately changes with the input geometry.
    for cls in ("dog", "truck"):
        a = stretched.boxes[[names[c] == cls for c in stretched.classes]][0]
        b = boxed.boxes[[names[c] == cls for c in boxed.classes]][0]
        assert _iou(a, b) > 0.8, cls
    # Without the correction the boxes would be squeezed into the 416x312 band.
    assert letterbox_params(768, 576, 416, 416) == (416, 312, 0, 52)


# ---------------------------------------------------------------- synthetic heads


def _single_meta(kind: str, grid: int, anchors: list[list[float]], classes: int, **extra: Any) -> dict[str, Any]:
    head = {"index": 1, "type": kind, "grid": [grid, grid], "anchors": anchors,
            "mask": list(range(len(anchors))), "classes": classes, "scale_x_y": 1.0, "new_coords": 0,
            "output": "o"}
    head.update(extra)
    return {"input": {"width": 64, "height": 64, "channels": 3, "letter_box": False}, "heads": [head],
            "names": None}


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_new_coords_uses_activated_values() -> None:
    # new_coords=1: conv already applied logistic; x = (col + tx*s - (s-1)/2)/W, w = 4 tw^2 a / net.
    raw = np.zeros((1, 4, 4, 1 * 7), np.float32)
    raw[0, 2, 1] = [0.5, 0.25, 0.5, 0.25, 0.9, 0.8, 0.1]  # tw=.5 -> 4*.25 = 1x anchor
    meta = _single_meta("yolo", 4, [[32, 16]], 2, new_coords=1, scale_x_y=2.0)
    d = decode_heads([raw], meta, 64, 64, conf_thresh=0.25, nms_thresh=0.45, clip=False)
    assert d.classes.tolist() == [0]
    assert d.scores[0] == pytest.approx(0.72)
    cx = (1 + 0.5 * 2 - 0.5) / 4 * 64
    cy = (2 + 0.25 * 2 - 0.5) / 4 * 64
    bw, bh = 1.0 * 32, 0.25 * 16
    np.testing.assert_allclose(d.boxes[0], [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], rtol=1e-5)


def test_region_head_softmax_grid_anchors_and_multi_class() -> None:
    classes, n_anchors, grid = 3, 2, 5
    raw = np.full((1, grid, grid, n_anchors * (5 + classes)), -20.0, np.float32)
    cell = np.zeros(5 + classes, np.float32)
    cell[0:4] = [0.0, 0.0, np.log(2.0), 0.0]  # sigmoid(0)=.5 ; exp -> 2x anchor width
    cell[4] = _logit(0.9)
    cell[5:] = np.log([0.5, 0.45, 0.05])  # softmax -> .5, .45, .05
    raw[0, 3, 1, 5 + classes:] = cell  # row 3, col 1, anchor 1
    meta = _single_meta("region", grid, [[1.0, 1.0], [1.5, 2.0]], classes, coords=4, num=2)
    d = decode_heads([raw], meta, 100, 50, conf_thresh=0.3, nms_thresh=0.45, clip=False)
    # Darknet emits one detection per surviving (box, class): .45 and .405 both > .3.
    assert d.classes.tolist() == [0, 1]
    np.testing.assert_allclose(d.scores, [0.45, 0.405], rtol=1e-5)
    cx, cy = (1 + 0.5) / 5 * 100, (3 + 0.5) / 5 * 50
    bw, bh = 2 * 1.5 / 5 * 100, 2.0 / 5 * 50
    for box in d.boxes:
        np.testing.assert_allclose(box, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], atol=1e-4)


def test_nms_is_per_class_and_clips_after() -> None:
    # Two anchors in one cell predicting nearly the same box: same class -> one survives,
    # a different class on the weaker box survives alongside (do_nms_sort is per class).
    raw = np.full((1, 2, 2, 2 * 7), -20.0, np.float32)
    a = np.array([0, 0, 0, 0, 4.0, 3.0, -20.0], np.float32)
    b = np.array([0.05, 0, 0, 0, 4.0, 2.0, 1.0], np.float32)
    raw[0, 0, 0, :7], raw[0, 0, 0, 7:] = a, b
    meta = _single_meta("yolo", 2, [[80, 80], [80, 80]], 2)
    d = decode_heads([raw], meta, 64, 64, conf_thresh=0.25, nms_thresh=0.45)
    assert sorted(d.classes.tolist()) == [0, 1]
    assert (d.boxes >= 0).all() and (d.boxes <= 64).all()  # 80 px box clipped to 64 px image
    no_nms = decode_heads([raw], meta, 64, 64, conf_thresh=0.25, nms_thresh=0)
    assert sorted(no_nms.classes.tolist()) == [0, 0, 1]


def test_bad_shapes_are_clear_errors() -> None:
    meta = _single_meta("yolo", 4, [[10, 10]], 2)
    with pytest.raises(ValueError, match="channels"):
        decode_heads([np.zeros((1, 4, 4, 8), np.float32)], meta, 10, 10)
    with pytest.raises(ValueError, match="grid"):
        decode_heads([np.zeros((1, 5, 5, 7), np.float32)], meta, 10, 10)
    with pytest.raises(ValueError, match="heads"):
        decode_heads([], meta, 10, 10)
    empty = decode_heads([np.full((1, 4, 4, 7), -30.0, np.float32)], meta, 10, 10)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


# ---------------------------------------------------------------- COCO evaluation


def _coco_dets(yolo: OpenCVYolo, paths: list[Path]) -> dict[str, Detections]:
    out = {}
    for p in paths:
        out[p.name] = _detect(yolo, p, conf=0.005)
    return out


@pytest.mark.slow  # 7-20 s on 2 shared cores, dominated by 86 OpenCV forwards
@needs_shared
def test_coco_ap_of_float_yolov4_tiny(yolo: OpenCVYolo) -> None:
    ann = COCO_DIR / "instances.json"
    if not ann.is_file():
        pytest.skip(f"COCO sample not found at {ann}")
    present, missing = match_images(ann, COCO_DIR)
    assert len(present) == 86 and missing == []
    t0 = time.perf_counter()
    dets = _coco_dets(yolo, present)
    result = coco_evaluate(ann, dets, _names())
    print(f"yolov4-tiny float on images/coco: AP={result['AP']:.4f} AP50={result['AP50']:.4f} "
          f"({time.perf_counter() - t0:.1f}s)")
    assert result["images"] == 86
    assert 0.3 < result["AP50"] < 0.8
    assert 0 < result["AP"] < result["AP50"]
    assert result["warnings"] == []  # coco.names' old names map by alias, not position

    # An image the annotations do not know is reported, not fatal.
    extra = dict(list(dets.items())[:5])
    extra["not_in_coco.jpg"] = Detections()
    partial = coco_evaluate(ann, extra, _names())
    assert partial["images"] == 5
    assert any("not_in_coco.jpg" in w for w in partial["warnings"])


def test_coco_wrong_annotation_file_raises(tmp_path: Path) -> None:
    ann = COCO_DIR / "instances.json"
    if not ann.is_file():
        pytest.skip(f"COCO sample not found at {ann}")
    data = json.loads(ann.read_text())
    other = copy.deepcopy(data)
    for img in other["images"]:
        img["file_name"] = "other_" + img["file_name"]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(other))
    dets = {data["images"][0]["file_name"]: Detections(np.array([[0, 0, 10, 10]]), [0.9], [0])}
    with pytest.raises(ValueError, match="wrong annotation file"):
        coco_evaluate(wrong, dets, None)
    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO"):
        coco_evaluate(not_coco, dets, None)


def test_category_mapping_by_name_alias_and_position() -> None:
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "motorcycle"}, {"id": 7, "name": "potted plant"}]
    mapping, warnings = map_categories(["person", "motorbike", "pottedplant"], cats)
    assert mapping == {0: 1, 1: 3, 2: 7} and warnings == []
    mapping, warnings = map_categories(["potted plant", "cls_a", "person"], cats)
    assert mapping == {0: 7, 1: 3, 2: 1}
    assert len(warnings) == 1 and "'cls_a'->'motorcycle'" in warnings[0]
    mapping, warnings = map_categories(None, cats)
    assert mapping == {0: 1, 1: 3, 2: 7} and warnings == []


# ---------------------------------------------------------------- drawing


@needs_shared
def test_draw_and_atomic_save(yolo: OpenCVYolo, tmp_path: Path) -> None:
    rgb = load_rgb(SAMPLES / "dog.jpg")
    dets = _detect(yolo, SAMPLES / "dog.jpg")
    drawn = draw_detections(rgb, dets, _names())
    assert drawn.shape == rgb.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, rgb)
    assert np.array_equal(rgb, load_rgb(SAMPLES / "dog.jpg"))  # input untouched
    out = save_image(tmp_path / "sub" / "dog_det.png", drawn)
    assert np.array_equal(load_rgb(out), drawn)  # PNG is lossless
    save_image(out, rgb)  # overwrite in place
    assert np.array_equal(load_rgb(out), rgb)
    assert sorted(p.name for p in out.parent.iterdir()) == ["dog_det.png"]  # no temp leftovers
    with pytest.raises(ValueError):
        save_image(tmp_path / "x.unknownext", rgb)


def test_max_per_class_is_exactly_the_top_of_each_class_of_the_full_decode() -> None:
    """A model that puts tens of thousands of candidates over the AP threshold (random
    weights, a broken training run) must not make evaluation take minutes: the capped
    decode suppresses only a score-ordered prefix, yet returns exactly the uncapped rows of
    rank < cap within their class, in the same order (what pycocotools' maxDets reads).
    Each class's prefix starts at a few times the cap and doubles until settled."""
    rng = np.random.default_rng(7)
    anchors = [[8, 8], [16, 24], [40, 30]]
    meta = _single_meta("yolo", 40, anchors, 12)
    raw = rng.normal(0.0, 2.0, (1, 40, 40, 3 * 17)).astype(np.float32)
    raw[..., 5 + 17 * 2:] -= 4.0  # anchor 2's classes rarely pass: uneven classes
    full = decode_heads([raw], meta, 640, 480, conf_thresh=0.005, nms_thresh=0.45)
    counts = np.bincount(full.classes, minlength=12)
    # every class has more candidates than a cap of 100's first prefix
    assert counts.min() > 2 * 100
    for cap in (1, 100, 300, 10 ** 6):
        top = decode_heads([raw], meta, 640, 480, conf_thresh=0.005, nms_thresh=0.45,
                           max_per_class=cap)
        want = np.concatenate([np.flatnonzero(full.classes == c)[:cap] for c in range(12)])
        want.sort()
        assert len(top) == len(want)
        np.testing.assert_array_equal(top.boxes, full.boxes[want])
        np.testing.assert_array_equal(top.scores, full.scores[want])
        np.testing.assert_array_equal(top.classes, full.classes[want])
