"""COCO-style AP / AP50 of per-image detections with pycocotools.

The numbers are only used to compare models (float vs int8, converter vs converter) on
the same images, so the evaluation is restricted to the images that were actually
detected on: ground truth of images nobody looked at must not count as misses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from darknet2tflite.evaluation.decode import Detections
from darknet2tflite.errors import InputError, shown, shown_path
from darknet2tflite.images import find_images
from darknet2tflite.values import is_int, is_num

__all__ = ["coco_evaluate", "map_categories", "match_images"]

# Darknet's coco.names predates the final COCO category names; these are the renames.
_NAME_ALIASES: dict[str, str] = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "tvmonitor": "tv",
}


def _norm(name: str) -> str:
    key = re.sub(r"[\s_\-]+", "", name.strip().lower())
    return _NAME_ALIASES.get(key, key)


class AnnotationError(InputError, ValueError):
    """A COCO annotations file that is not usable (also a ValueError for older callers)."""


def check_coco(data: Any, path: str | os.PathLike[str]) -> None:
    """The parts of a COCO instances file evaluation reads: ``images`` with an ``id`` and a
    ``file_name``, ``annotations`` with ``image_id``, ``category_id`` and a ``bbox`` of four
    finite numbers (width, height >= 0), ``categories`` with ``id`` and ``name``."""
    where = shown_path(path)
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise AnnotationError(f"{where}: not a COCO instances file (needs the lists 'images', "
                              "'annotations', 'categories')")

    def bad(section: str, i: int, why: str) -> AnnotationError:
        return AnnotationError(f"{where}: {section}[{i}]: {why}")

    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not is_int(c.get("id")) or "name" not in c:
            raise bad("categories", i, "needs an integer 'id' and a 'name'")
    ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise bad("images", i, "not an object")
        if not is_int(img.get("id")):
            raise bad("images", i, "needs an integer 'id'")
        fn = img.get("file_name")
        if not isinstance(fn, str) or not fn.strip():
            raise bad("images", i, "needs a 'file_name' string")
        for k in ("width", "height"):
            if k in img and not (is_num(img[k]) and img[k] > 0):
                raise bad("images", i, f"'{k}' must be a positive number, got "
                          f"{shown(img[k], 40)}")
        ids.add(img["id"])
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise bad("annotations", i, "not an object")
        for k in ("image_id", "category_id"):
            if not is_int(a.get(k)):
                raise bad("annotations", i, f"needs an integer '{k}'")
        if a["image_id"] not in ids:
            raise bad("annotations", i, f"image_id {a['image_id']} is not in 'images'")
        b = a.get("bbox")
        if not (isinstance(b, list) and len(b) == 4 and all(map(is_num, b))
                and b[2] >= 0 and b[3] >= 0):
            raise bad("annotations", i, "'bbox' must be [x, y, width, height]: four finite "
                      f"numbers, width and height >= 0 (got {shown(json.dumps(b), 60)})")
        if "area" in a and not is_num(a["area"]):
            raise bad("annotations", i, "'area' must be a finite number")
        if "iscrowd" in a and a["iscrowd"] not in (0, 1):
            raise bad("annotations", i, "'iscrowd' must be 0 or 1")


def _load_annotations(annotations_json: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(annotations_json)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotations not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    check_coco(data, path)  # entries with the fields evaluation reads
    return data


def map_categories(
    class_names: list[str] | None, categories: list[Mapping[str, Any]]
) -> tuple[dict[int, int], list[str]]:
    """Map model class index -> COCO category id, returning also human-readable warnings.

    A class maps to the category with the same name (case/space-insensitive, plus
    Darknet's old COCO names such as "motorbike" -> "motorcycle"). A class whose name
    matches nothing falls back to the i-th category in ascending id order, which is the
    convention of Darknet's coco.names and of COCO-trained YOLO models (80 classes in
    category-id order), provided that category is not already claimed by a name match.
    Classes mapped positionally are reported, because a wrong names file is the usual
    cause and silently mis-mapped classes would make AP meaningless.
    """
    cats = sorted(categories, key=lambda c: int(c["id"]))
    by_name = {_norm(str(c["name"])): int(c["id"]) for c in cats}
    names = list(class_names) if class_names else [""] * len(cats)
    mapping: dict[int, int] = {}
    for i, name in enumerate(names):
        cid = by_name.get(_norm(name)) if name else None
        if cid is not None:
            mapping[i] = cid
    claimed = set(mapping.values())
    positional: list[str] = []
    unmapped: list[str] = []
    for i, name in enumerate(names):
        if i in mapping:
            continue
        if i < len(cats) and int(cats[i]["id"]) not in claimed:
            mapping[i] = int(cats[i]["id"])
            claimed.add(mapping[i])
            if name:
                positional.append(f"{name!r}->{cats[i]['name']!r}")
        else:
            unmapped.append(repr(name) if name else str(i))
    warnings: list[str] = []
    if positional:
        warnings.append(f"{len(positional)} class name(s) not found in the annotations, mapped by position: "
                        + ", ".join(positional))
    if unmapped:
        warnings.append(f"{len(unmapped)} class(es) have no COCO category and are ignored: " + ", ".join(unmapped))
    return mapping, warnings


def match_images(
    annotations_json: str | os.PathLike[str], image_dir: str | os.PathLike[str]
) -> tuple[list[Path], list[str]]:
    """Split the annotated images into those found under ``image_dir`` and those missing.

    Matching is by basename, searched recursively, so a COCO json whose ``file_name``
    values carry a split prefix ("train2017/x.jpg") still finds a flat copy of the images.
    Returns (present paths in annotation order, missing file_names).
    """
    data = _load_annotations(annotations_json)
    on_disk: dict[str, Path] = {}
    for p in sorted(find_images(image_dir, limit=None)):
        on_disk.setdefault(p.name, p)
    present: list[Path] = []
    missing: list[str] = []
    for img in data["images"]:
        fname = str(img["file_name"])
        hit = on_disk.get(os.path.basename(fname))
        if hit is None:
            missing.append(fname)
        else:
            present.append(hit)
    return present, missing


def coco_evaluate(
    annotations_json: str | os.PathLike[str],
    detections: Mapping[str, Detections],
    class_names: list[str] | None,
) -> dict[str, Any]:
    """COCO bbox AP@[.5:.95] and AP@.5 over the images present in ``detections``.

    ``detections`` is keyed by image basename; an image evaluated with no detections must
    still be present (with empty Detections) so its ground truth counts as missed.
    Returns {"AP", "AP50", "images", "detections", "warnings"}; AP values are NaN when the
    selected images contain no ground truth at all.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = Path(annotations_json)
    data = _load_annotations(path)
    if not detections:
        raise ValueError(f"coco_evaluate: no detections given to evaluate against {path.name}")

    name_to_id: dict[str, int] = {}
    warnings: list[str] = []
    dup = 0
    for img in data["images"]:
        base = os.path.basename(str(img["file_name"]))
        if base in name_to_id:
            dup += 1
            continue
        name_to_id[base] = int(img["id"])
    if dup:
        warnings.append(f"{dup} duplicate image basename(s) in {path.name}; the first of each is used")

    keys = [os.path.basename(k) for k in detections]
    found = [k for k in keys if k in name_to_id]
    missing = [k for k in keys if k not in name_to_id]
    if not found:
        example = ", ".join(repr(k) for k in keys[:3])
        raise ValueError(
            f"none of the {len(keys)} detected images (e.g. {example}) appear in {path}; wrong annotation file?"
        )
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        warnings.append(f"{len(missing)} image(s) not in {path.name}, skipped: {shown}")

    mapping, map_warnings = map_categories(class_names, data["categories"])
    warnings.extend(map_warnings)

    results: list[dict[str, Any]] = []
    for key, det in detections.items():
        image_id = name_to_id.get(os.path.basename(key))
        if image_id is None or len(det) == 0:
            continue
        b = det.boxes.astype(np.float64)
        for (x1, y1, x2, y2), score, cls in zip(b, det.scores, det.classes, strict=True):
            cat = mapping.get(int(cls))
            if cat is None:
                continue
            results.append({
                "image_id": image_id,
                "category_id": cat,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            })

    image_ids = sorted({name_to_id[k] for k in found})
    out: dict[str, Any] = {"AP": 0.0, "AP50": 0.0, "images": len(image_ids), "detections": len(results),
                           "warnings": warnings}
    if not results:
        selected = set(image_ids)
        if not any(int(a["image_id"]) in selected for a in data["annotations"]):
            warnings.append("the evaluated images have no ground-truth boxes; AP is undefined")
            out.update({"AP": float("nan"), "AP50": float("nan")})
        return out

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    ap, ap50 = stats[0], stats[1]
    if ap < 0 or ap50 < 0:  # pycocotools' -1: no ground truth in the selected images
        warnings.append("the evaluated images have no ground-truth boxes; AP is undefined")
        ap, ap50 = float("nan"), float("nan")
    out.update({"AP": ap, "AP50": ap50, "stats": stats})
    return out
