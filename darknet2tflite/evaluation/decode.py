"""Darknet-exact decoding of raw YOLO/region head outputs, plus library NMS.

Models written by this project output each detection layer's RAW input (the conv output
before [yolo]/[region] processing, see docs/ARCHITECTURE.md), so the post-processing
lives here and must reproduce AlexeyAB Darknet bit for bit in its semantics:

* yolo_layer.c ``forward_yolo_layer`` + ``get_yolo_box`` + ``get_yolo_detections``
  (logistic on x, y, objectness, classes unless ``new_coords``; ``scale_x_y``;
  ``exp``/``4*t^2`` sizes; a box is a candidate when objectness > thresh, a class is kept
  when objectness * class > thresh),
* network.c ``custom_get_region_detections`` / ``get_region_boxes`` for YOLOv2 region
  heads (logistic x, y, objectness; exp sizes in grid units; softmax classes; no
  objectness pre-filter),
* ``correct_yolo_boxes`` for letterbox correction (used for region heads too, as
  AlexeyAB does), and
* box.c ``do_nms_sort``: greedy NMS per class over the boxes of ALL heads together, on
  unclipped boxes, suppression when IoU > nms_thresh.

Like Darknet's mAP/COCO output, one detection is emitted per (box, class) whose
probability survives, so a box can carry several classes. Boxes are clipped to the
image only at the very end, as ``print_cocos`` in detector.c does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from darknet2tflite.images import letterbox_params

__all__ = ["Detections", "decode_heads"]


@dataclass
class Detections:
    """Detections of one image in original-image pixels (xyxy), best score first."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.classes)):
            raise ValueError(
                f"Detections: boxes/scores/classes lengths differ "
                f"({len(self.boxes)}, {len(self.scores)}, {len(self.classes)})"
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Darknet's logistic_activate: 1 / (1 + exp(-x)); overflow to inf gives exactly 0.
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    # Darknet's softmax (blas.c) subtracts the max before exp, as done here.
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _head_array(head: Any, index: int) -> np.ndarray:
    """Accept (1,H,W,C) or (H,W,C), or a list of such arrays split along channels."""
    if isinstance(head, (list, tuple)):
        head = np.concatenate([np.asarray(h) for h in head], axis=-1)
    arr = np.asarray(head)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"head {index}: decode_heads decodes one image, got batch {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"head {index}: expected NHWC (1,H,W,C), got shape {np.shape(head)}")
    return arr.astype(np.float32, copy=False)


def _candidates_yolo(
    raw: np.ndarray, hm: Mapping[str, Any], net_w: int, net_h: int, thresh: float, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate boxes (normalized cx,cy,w,h in network space) and their class probs."""
    gh, gw, ch = raw.shape
    anchors = np.asarray(hm["anchors"], dtype=np.float64).reshape(-1, 2)
    n_anchors = anchors.shape[0]
    classes = int(hm["classes"])
    stride = 5 + classes
    if ch != n_anchors * stride:
        raise ValueError(
            f"head {index} (yolo): {ch} channels but {n_anchors} anchors x (5 + {classes} classes) "
            f"= {n_anchors * stride} expected"
        )
    _check_grid(hm, gh, gw, index)
    t = raw.reshape(gh, gw, n_anchors, stride)
    new_coords = int(hm.get("new_coords", 0))
    scale = float(hm.get("scale_x_y", 1.0))

    obj = t[..., 4] if new_coords else _sigmoid(t[..., 4])
    keep = obj > thresh  # NaN compares False, like Darknet's `objectness > thresh`
    rows, cols, ans = np.nonzero(keep)
    if rows.size == 0:
        return np.zeros((0, 4)), np.zeros((0, classes), np.float32)
    sel = t[rows, cols, ans]  # (N, stride)
    obj_k = obj[rows, cols, ans]
    txy = sel[:, 0:2] if new_coords else _sigmoid(sel[:, 0:2])
    # scal_add_cpu(x * scale_x_y - 0.5 * (scale_x_y - 1)) applied in forward_yolo_layer.
    txy = txy.astype(np.float64) * scale - 0.5 * (scale - 1.0)
    twh = sel[:, 2:4].astype(np.float64)
    if new_coords:
        wh = twh * twh * 4.0
        cls = sel[:, 5:]
    else:
        with np.errstate(over="ignore"):
            wh = np.exp(twh)
        cls = _sigmoid(sel[:, 5:])
    boxes = np.empty((rows.size, 4), dtype=np.float64)
    boxes[:, 0] = (cols + txy[:, 0]) / gw
    boxes[:, 1] = (rows + txy[:, 1]) / gh
    boxes[:, 2] = wh[:, 0] * anchors[ans, 0] / net_w
    boxes[:, 3] = wh[:, 1] * anchors[ans, 1] / net_h
    probs = (obj_k[:, None] * cls).astype(np.float32)
    return boxes, probs


def _candidates_region(
    raw: np.ndarray, hm: Mapping[str, Any], thresh: float, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv2 region decode; Darknet keeps every cell here and filters by class prob only."""
    gh, gw, ch = raw.shape
    anchors = np.asarray(hm["anchors"], dtype=np.float64).reshape(-1, 2)
    n_anchors = int(hm.get("num", anchors.shape[0]))
    anchors = anchors[:n_anchors]
    classes = int(hm["classes"])
    coords = int(hm.get("coords", 4))
    stride = coords + 1 + classes
    if ch != n_anchors * stride:
        raise ValueError(
            f"head {index} (region): {ch} channels but {n_anchors} anchors x ({coords} + 1 + {classes}) "
            f"= {n_anchors * stride} expected"
        )
    _check_grid(hm, gh, gw, index)
    t = raw.reshape(gh * gw * n_anchors, stride)
    cell = np.arange(gh * gw * n_anchors)
    rows = cell // (gw * n_anchors)
    cols = (cell // n_anchors) % gw
    ans = cell % n_anchors
    obj = _sigmoid(t[:, coords])
    logits = t[:, coords + 1 :]
    cls = _softmax(logits) if int(hm.get("softmax", 1)) else logits
    probs = (obj[:, None] * cls).astype(np.float32)
    live = (probs > thresh).any(axis=1)
    t, probs, rows, cols, ans = t[live], probs[live], rows[live], cols[live], ans[live]
    txy = _sigmoid(t[:, 0:2]).astype(np.float64)
    with np.errstate(over="ignore"):
        wh = np.exp(t[:, 2:4].astype(np.float64))
    boxes = np.empty((t.shape[0], 4), dtype=np.float64)
    boxes[:, 0] = (cols + txy[:, 0]) / gw
    boxes[:, 1] = (rows + txy[:, 1]) / gh
    boxes[:, 2] = wh[:, 0] * anchors[ans, 0] / gw
    boxes[:, 3] = wh[:, 1] * anchors[ans, 1] / gh
    return boxes, probs


def _check_grid(hm: Mapping[str, Any], gh: int, gw: int, index: int) -> None:
    grid = hm.get("grid")
    if grid is not None and (int(grid[0]), int(grid[1])) != (gh, gw):
        raise ValueError(f"head {index}: output grid {gh}x{gw} but model.json says {grid[0]}x{grid[1]}")


def _correct_boxes(
    boxes: np.ndarray, orig_w: int, orig_h: int, net_w: int, net_h: int, letter: bool
) -> np.ndarray:
    """correct_yolo_boxes: undo the letterbox, giving normalized image coordinates.

    Darknet removes the padding as ``(netw - new_w) / 2.`` (a float) although
    letterbox_image embedded the image at the integer ``(w - new_w) / 2``; the float
    version is kept so decoded boxes match Darknet's, half-pixel quirk included.
    """
    if not letter:
        return boxes
    lb = letterbox_params(orig_w, orig_h, net_w, net_h)
    out = boxes.copy()
    out[:, 0] = (boxes[:, 0] - (net_w - lb.new_w) / 2.0 / net_w) / (lb.new_w / net_w)
    out[:, 1] = (boxes[:, 1] - (net_h - lb.new_h) / 2.0 / net_h) / (lb.new_h / net_h)
    out[:, 2] = boxes[:, 2] * (net_w / lb.new_w)
    out[:, 3] = boxes[:, 3] * (net_h / lb.new_h)
    return out


def decode_heads(
    heads: Sequence[Any],
    meta: Mapping[str, Any],
    orig_w: int,
    orig_h: int,
    conf_thresh: float = 0.25,
    nms_thresh: float = 0.45,
    *,
    clip: bool = True,
    max_per_class: int | None = None,
) -> Detections:
    """Turn one image's raw head outputs into Darknet-identical detections.

    ``heads`` are the model outputs in model.json head order, NHWC, already dequantized.
    ``nms_thresh <= 0`` disables NMS (Darknet's ``if (nms)``). ``clip=False`` keeps the
    unclipped boxes, e.g. to compare against another decoder. ``max_per_class`` returns
    only the best that many of each class, exactly the uncapped result's rows of that
    class and rank, without suppressing among every candidate: a badly trained model can
    put 10^5 candidates over COCO's 0.005 threshold and per-class NMS over all of them
    takes minutes (COCO's AP reads at most 100 per image and category anyway).
    """
    head_meta = list(meta["heads"])
    if len(heads) != len(head_meta):
        raise ValueError(f"decode_heads: got {len(heads)} head outputs but model.json lists {len(head_meta)} heads")
    inp = meta["input"]
    net_w, net_h = int(inp["width"]), int(inp["height"])
    letter = bool(inp.get("letter_box", False))

    all_boxes: list[np.ndarray] = []
    all_probs: list[np.ndarray] = []
    n_classes: int | None = None
    for i, (head, hm) in enumerate(zip(heads, head_meta, strict=True)):
        raw = _head_array(head, i)
        kind = hm.get("type", "yolo")
        if kind == "yolo":
            boxes, probs = _candidates_yolo(raw, hm, net_w, net_h, conf_thresh, i)
        elif kind == "region":
            boxes, probs = _candidates_region(raw, hm, conf_thresh, i)
        else:
            raise ValueError(f"head {i}: unsupported head type {kind!r} (expected 'yolo' or 'region')")
        if n_classes is not None and probs.shape[1] != n_classes:
            raise ValueError(f"head {i}: {probs.shape[1]} classes but an earlier head has {n_classes}")
        n_classes = probs.shape[1]
        all_boxes.append(boxes)
        all_probs.append(probs)
    if not all_boxes:
        return Detections()

    boxes = _correct_boxes(np.concatenate(all_boxes), orig_w, orig_h, net_w, net_h, letter)
    probs = np.concatenate(all_probs)
    # One candidate per (box, class) whose prob survives, exactly like dets[].prob[j] > 0.
    box_idx, cls_idx = np.nonzero(probs > conf_thresh)
    if box_idx.size == 0:
        return Detections()
    scores = probs[box_idx, cls_idx]

    cx, cy = boxes[box_idx, 0] * orig_w, boxes[box_idx, 1] * orig_h
    bw, bh = boxes[box_idx, 2] * orig_w, boxes[box_idx, 3] * orig_h
    xyxy = np.stack([cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0], axis=1)
    finite = np.isfinite(xyxy).all(axis=1) & np.isfinite(scores)
    xyxy, scores, cls_idx = xyxy[finite], scores[finite], cls_idx[finite]

    order = np.argsort(-scores, kind="stable")
    xyxy, scores, cls_idx = xyxy[order], scores[order], cls_idx[order]
    if nms_thresh > 0 and scores.size:
        keep = _top_nms(xyxy, scores, cls_idx, float(conf_thresh), float(nms_thresh),
                        max_per_class)
        xyxy, scores, cls_idx = xyxy[keep], scores[keep], cls_idx[keep]
    elif max_per_class is not None:
        keep = np.flatnonzero(_rank_in_class(cls_idx) < max_per_class)
        xyxy, scores, cls_idx = xyxy[keep], scores[keep], cls_idx[keep]
    if clip:
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0.0, float(orig_w))
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0.0, float(orig_h))
    return Detections(xyxy.astype(np.float32), scores.astype(np.float32), cls_idx.astype(np.int64))


#: a class's candidates suppressed in the first pass of a capped decode, in multiples of
#: the cap (doubled until exact)
TOP_NMS_START = 2


def _rank_in_class(classes: np.ndarray) -> np.ndarray:
    """Each row's rank among the rows of its class, in row order."""
    order = np.argsort(classes, kind="stable")
    sorted_cls = classes[order]
    starts = np.flatnonzero(np.r_[True, sorted_cls[1:] != sorted_cls[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(classes)]))
    rank = np.empty(len(classes), dtype=np.int64)
    rank[order] = np.arange(len(classes)) - first
    return rank


def _class_rows(classes: np.ndarray) -> list[np.ndarray]:
    """Row indices of each class, ascending (so best first when rows are sorted by score)."""
    order = np.argsort(classes, kind="stable")
    cuts = np.flatnonzero(np.diff(classes[order])) + 1
    return np.split(order, cuts) if len(order) else []


def _top_nms(xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, score_thresh: float,
             iou_thresh: float, limit: int | None) -> np.ndarray:
    """Indices (ascending = best first; inputs sorted by descending score) that greedy
    per-class NMS keeps, only the best ``limit`` of each class when given.

    Greedy NMS only lets higher-scored boxes of the same class suppress lower ones, so
    running it on a class's N best candidates keeps exactly the boxes the full run keeps
    among those N. Once a class has ``limit`` survivors in such a prefix, or the prefix is
    all its candidates, its capped result is known; otherwise its prefix doubles. Each
    class settles on its own: an untrained model puts thousands of candidates of every
    class over the threshold, and most of them survive, so a few times ``limit`` of each
    suffice where a prefix shared by all classes would have to grow to nearly all."""
    xywh, thr, scores32 = _nms_inputs(xyxy, scores, score_thresh)
    keep: list[np.ndarray] = []
    for rows in _class_rows(classes):
        n = len(rows) if limit is None else min(len(rows), TOP_NMS_START * max(limit, 1))
        while True:
            k = _nms_class(xywh[rows[:n]], scores32[rows[:n]], thr, iou_thresh)
            if limit is None or len(k) >= limit or n == len(rows):
                keep.append(rows[k if limit is None else k[:limit]])
                break
            n = min(len(rows), 2 * n)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def _nms_inputs(xyxy: np.ndarray, scores: np.ndarray, score_thresh: float
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """(x, y, w, h float64, OpenCV's score threshold, float32 scores) for :func:`_nms_class`.

    Candidates are already > conf_thresh; the threshold passed is just below it so that
    none is lost to float32 rounding in OpenCV's own score filter."""
    xywh = np.empty_like(xyxy, dtype=np.float64)
    xywh[:, :2] = xyxy[:, :2]
    xywh[:, 2:] = xyxy[:, 2:] - xyxy[:, :2]
    thr = float(np.nextafter(np.float32(score_thresh), np.float32(-np.inf)))
    return xywh, thr, scores.astype(np.float32)


def _nms_class(xywh: np.ndarray, scores32: np.ndarray, thr: float, iou_thresh: float
               ) -> np.ndarray:
    """Positions OpenCV's greedy NMS keeps among one class's boxes, best first.

    OpenCV suppresses when IoU > threshold and uses float (Rect2d) IoU without the +1
    pixel convention, the same as Darknet's box_iou (do_nms_sort semantics). One call per
    class rather than ``NMSBoxesBatched`` (which runs a single NMS over all classes'
    boxes): the cost is the sum of the squared class sizes instead of the square of their
    sum."""
    k = cv2.dnn.NMSBoxes(xywh, scores32, thr, iou_thresh)
    return np.asarray(k, dtype=np.int64).reshape(-1)
