"""How well does int8 reproduce the float model, without any labels?

The float32 TFLite model is the reference the int8 model is meant to approximate, and its
own confident detections are available on every evaluation image, annotated or not.  So
every report gets a verdict a newcomer can read: int8 scored by COCO's AP against the float
model's boxes taken as ground truth (AP50 = 1.0: int8 finds every float box, same class,
overlapping by half or more, ranked above its spurious boxes), the share of float boxes int8
finds at IoU >= 0.5 with the same class, and how tightly the found ones overlap.

The numbers say nothing about whether the *float* model is right; that is what AP against
human annotations (``evaluate.py``) is for.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np

from .decode import Detections

#: float detections at or above this score are the reference "ground truth" boxes (the
#: confidence at which Darknet draws detections)
REFERENCE_CONF = 0.25
#: IoU at which an int8 box counts as finding a float box
MATCH_IOU = 0.5
#: fewer images than these make the verdict (and any AP) a rough one: said in the report
FEW_EVAL_IMAGES = 20
FEW_CALIBRATION_IMAGES = 50


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, x1y1x2y2) with every box of ``b`` (M, ...): (N, M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a = a.astype(np.float64)[:, None]
    b = b.astype(np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]).clip(0) * (x[..., 3] - x[..., 1]).clip(0)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _confident(d: Detections, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = np.asarray(d.scores) >= conf
    return np.asarray(d.boxes)[keep], np.asarray(d.scores)[keep], np.asarray(d.classes)[keep]


def _matches(ref: Detections, got: Detections) -> list[float]:
    """IoUs of greedy one-to-one matches (same class, IoU >= MATCH_IOU, best score first)
    between the reference's confident boxes and ``got``'s confident boxes, in ``got``'s
    score order.

    A box only ever matches boxes of its own class, so each class is matched on its own
    (IoU matrices of one class, not of every box with every box: an untrained model has
    thousands of confident boxes per photo). Among equal best IoUs the last reference box
    wins, as in a scan that keeps any IoU >= the best so far."""
    rb, _, rc = _confident(ref, REFERENCE_CONF)
    gb, gs, gc = _confident(got, REFERENCE_CONF)
    order = np.argsort(-gs, kind="stable")
    gc_ranked = gc[order]
    found: list[tuple[int, float]] = []  # (rank of the got box in score order, IoU)
    for c in np.intersect1d(rc, gc):
        ri = np.flatnonzero(rc == c)
        ranks = np.flatnonzero(gc_ranked == c)
        ious = iou_matrix(rb[ri], gb[order[ranks]])
        free = np.ones(len(ri), dtype=bool)
        for col, rank in enumerate(ranks):
            v = np.where(free, ious[:, col], -1.0)
            best = v.max()
            if best >= MATCH_IOU:
                free[len(v) - 1 - int(np.argmax(v[::-1] == best))] = False
                found.append((int(rank), float(best)))
    return [iou for _, iou in sorted(found)]


def _coco_ap(ref: Sequence[Detections], got: Sequence[Detections],
             sizes: Sequence[tuple[int, int]]) -> tuple[float, float] | None:
    """(AP@[.5:.95], AP50) of ``got`` against ``ref``'s confident boxes as ground truth;
    None when the reference has no confident box at all."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results, classes = [], [], [], set()
    for k, ((w, h), r, g) in enumerate(zip(sizes, ref, got), 1):
        images.append({"id": k, "width": int(w), "height": int(h), "file_name": str(k)})
        for (x1, y1, x2, y2), c in zip(*(_confident(r, REFERENCE_CONF)[i] for i in (0, 2))):
            bw, bh = float(x2 - x1), float(y2 - y1)
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": int(c) + 1,
                         "bbox": [float(x1), float(y1), bw, bh], "area": bw * bh,
                         "iscrowd": 0})
            classes.add(int(c) + 1)
        for (x1, y1, x2, y2), s, c in zip(np.asarray(g.boxes), np.asarray(g.scores),
                                          np.asarray(g.classes)):
            results.append({"image_id": k, "category_id": int(c) + 1, "score": float(s),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    if not anns:
        return None
    classes |= {r["category_id"] for r in results}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c, "name": str(c)} for c in sorted(classes)]}
        gt.createIndex()
        if not results:
            return 0.0, 0.0
        ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[0]), 0.0), max(float(ev.stats[1]), 0.0)


def float_agreement(ref: Sequence[Detections], got: Sequence[Detections],
                    sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """The label-free verdict of ``got`` (int8, decoded at AP's low threshold) against
    ``ref`` (float32, same decode) on the same images; values 0-1 (None when undefined)."""
    n_ref = sum(len(_confident(r, REFERENCE_CONF)[0]) for r in ref)
    ious = [x for r, g in zip(ref, got) for x in _matches(r, g)]
    ap = _coco_ap(ref, got, sizes)
    out: dict[str, Any] = {
        "images": len(ref), "float_boxes": n_ref,
        "int8_boxes": sum(len(_confident(g, REFERENCE_CONF)[0]) for g in got),
        "ap": None if ap is None else round(ap[0], 4),
        "ap50": None if ap is None else round(ap[1], 4),
        "found": round(len(ious) / n_ref, 4) if n_ref else None,
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "reference_conf": REFERENCE_CONF, "match_iou": MATCH_IOU, "warnings": [],
    }
    if not n_ref:
        out["warnings"].append(f"the float model detects nothing at confidence "
                               f">= {REFERENCE_CONF} on the {len(ref)} evaluation image(s): "
                               "no agreement to measure")
    if len(ref) < FEW_EVAL_IMAGES:
        out["warnings"].append(f"only {len(ref)} evaluation image(s) (fewer than "
                               f"{FEW_EVAL_IMAGES}): the agreement figures are rough; give "
                               "--eval-images a folder of more photos")
    return out


def calibration_warning(calibration_images: int) -> list[str]:
    """The warning for a small calibration set (empty when it is large enough)."""
    if calibration_images >= FEW_CALIBRATION_IMAGES:
        return []
    return [f"only {calibration_images} calibration image(s) (fewer than "
            f"{FEW_CALIBRATION_IMAGES}): int8 ranges may not cover real inputs; calibrate "
            "on more photos like the deployment's"]


def verdict_line(fa: dict[str, Any]) -> str:
    """The report's first line: the agreement in words and numbers."""
    if fa.get("ap50") is None:
        return (f"**int8 vs float32:** not measurable on {fa.get('images')} image(s) "
                "(the float model detects nothing there).")
    pct = lambda x: "-" if x is None else f"{100 * x:.0f} %"  # noqa: E731
    return (f"**int8 vs float32 (label-free, {fa['images']} images):** AP50 "
            f"{fa['ap50']:.2f}, AP {fa['ap']:.2f} against the float model's own "
            f"{fa['float_boxes']} boxes; int8 finds {pct(fa.get('found'))} of them "
            f"(IoU >= {fa.get('match_iou', MATCH_IOU)}, same class), mean IoU "
            + ("-" if fa.get("mean_iou") is None else f"{fa['mean_iou']:.2f}") + ".")
