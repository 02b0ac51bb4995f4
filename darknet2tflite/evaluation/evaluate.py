"""How much did int8 cost? Numbers for report.json / report.md.

* per head SQNR (dB) and cosine similarity of int8 vs float raw heads, also per channel
  group (box x/y, box w/h, objectness, classes): whole-head SQNR is dominated by the
  large objectness/class logits and says little about boxes, which matter most for AP;
* detections (Darknet-exact decode + library NMS) and, with COCO annotations, AP@[.5:.95]
  and AP50 of every model on the same held-out images;
* file sizes and median latency over repeated invokes at 1 and 2 threads;
* per-layer quantization error from ``tf.lite.experimental.QuantizationDebugger``, named
  by Darknet layer index.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from darknet2tflite.errors import InputError
from darknet2tflite.tflite.metrics import latency_ms, sqnr_db

Progress = Callable[[str], None]
#: Darknet's detector map uses thresh .005 and nms .45 for AP
AP_CONF_THRESH = 0.005
NMS_THRESH = 0.45
#: characters of an image's name not kept in its report picture's name
_UNSAFE_IN_NAME = re.compile(r"[^\w .-]")
#: detections drawn in the report images
DRAW_CONF_THRESH = 0.25
#: the per-layer error chart, relative to the report folder
LAYER_CHART = "report_images/layer_error.png"
#: detections kept per image and class: pycocotools' AP uses maxDets=100 per image+category
MAX_PER_CLASS = 100


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    d = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / d) if d > 0 else float("nan")


def _parts(head: Mapping[str, Any]) -> dict[str, slice]:
    """Channel groups within one anchor block of a raw head."""
    if head.get("type", "yolo") == "region":
        coords = int(head.get("coords", 4))
        return {"xy": slice(0, 2), "wh": slice(2, coords), "obj": slice(coords, coords + 1),
                "cls": slice(coords + 1, None)}
    return {"xy": slice(0, 2), "wh": slice(2, 4), "obj": slice(4, 5), "cls": slice(5, None)}


def head_errors(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], meta: Mapping[str, Any]
                ) -> list[dict[str, Any]]:
    rows = []
    for h, r, g in zip(meta["heads"], ref, got):
        n = len(h["anchors"]) if h.get("type", "yolo") == "yolo" else int(h.get("num", 1))
        rr = r.reshape(r.shape[:-1] + (n, -1))
        gg = g.reshape(g.shape[:-1] + (n, -1))
        parts = {k: {"sqnr_db": round(sqnr_db(rr[..., s], gg[..., s]), 2),
                     "max_abs": float(np.abs(rr[..., s] - gg[..., s]).max())}
                 for k, s in _parts(h).items()}
        rows.append({"head": h["index"], "output": h["output"], "grid": h["grid"],
                     "sqnr_db": round(sqnr_db(r, g), 2), "cosine": round(cosine(r, g), 6),
                     "max_abs": float(np.abs(r - g).max()), "parts": parts})
    return rows


# --------------------------------------------------------------------------- images

def eval_image_list(eval_images: str | Path | Sequence[str | Path],
                    eval_annotations: str | Path | None = None, limit: int | None = None
                    ) -> tuple[list[Path], list[str]]:
    """Evaluation image paths (only annotated ones when annotations are given) + warnings.
    Raises InputError when annotations and images have nothing in common."""
    from darknet2tflite.images import find_images
    warnings: list[str] = []
    if isinstance(eval_images, (str, Path)):
        folder = Path(eval_images)
        if not folder.exists():
            raise InputError(f"evaluation images {folder} do not exist")
        if eval_annotations is not None:
            from darknet2tflite.evaluation.coco_eval import match_images
            try:
                present, missing = match_images(eval_annotations, folder)
            except (ValueError, FileNotFoundError) as e:
                raise InputError(str(e)) from None
            if not present:
                raise InputError(f"none of the {len(missing)} images listed in "
                                 f"{eval_annotations} are under {folder}; wrong annotation "
                                 "file or image folder?")
            if missing:
                warnings.append(f"{len(missing)} annotated image(s) not found under {folder}")
            paths = present
        else:
            paths = sorted(find_images(folder, limit=None))
    else:
        paths = [Path(p) for p in eval_images]
    if not paths:
        raise InputError(f"no evaluation images found in {eval_images}")
    return (paths if limit is None else paths[:limit]), warnings


def load_eval_images(paths: Sequence[Path], meta: Mapping[str, Any]
                     ) -> tuple[np.ndarray, list[Path], list[tuple[int, int]], list[str]]:
    from darknet2tflite.images import ImageError, load_network_image, preprocess
    inp = meta["input"]
    arrs, kept, sizes, skipped = [], [], [], []
    for p in paths:
        try:
            pixels = load_network_image(p, int(inp.get("channels", 3)))
        except ImageError as e:
            skipped.append(str(e))
            continue
        arrs.append(preprocess(pixels, int(inp["width"]), int(inp["height"]),
                               bool(inp.get("letter_box"))))
        kept.append(Path(p))
        sizes.append((pixels.shape[1], pixels.shape[0]))
    if not arrs:
        raise InputError(f"none of the {len(paths)} evaluation images could be read")
    return np.stack(arrs), kept, sizes, skipped


# --------------------------------------------------------------------------- running

def file_meta(tflite: str | Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """model.json narrowed to one .tflite: its own head output names."""
    from darknet2tflite.darknet.metadata import read_tflite_metadata
    m = dict(meta)
    by_file = meta.get("head_outputs_by_file") or {}
    name = Path(tflite).name
    if name in by_file:
        m["head_outputs"] = by_file[name]
    else:
        emb = read_tflite_metadata(tflite)
        if emb and emb.get("head_outputs"):
            m["head_outputs"] = emb["head_outputs"]
    return m


def run_model(tflite: str | Path, batch: np.ndarray, meta: Mapping[str, Any],
              threads: int = 2) -> list[np.ndarray]:
    from darknet2tflite.tflite.export import run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    return run_tflite(interpreter(tflite, threads=threads), batch, file_meta(tflite, meta))


def detect(heads: Sequence[np.ndarray], meta: Mapping[str, Any], sizes: Sequence[tuple[int, int]],
           conf: float = AP_CONF_THRESH) -> list[Any]:
    """Per image and class the best ``MAX_PER_CLASS`` detections: all that COCO's AP reads
    (pycocotools keeps maxDets=100 per image and category), so AP is unchanged."""
    from darknet2tflite.evaluation.decode import decode_heads
    return [decode_heads([h[i:i + 1] for h in heads], meta, w, hgt, conf_thresh=conf,
                         nms_thresh=NMS_THRESH, max_per_class=MAX_PER_CLASS)
            for i, (w, hgt) in enumerate(sizes)]


# --------------------------------------------------------------------------- stage

def _ap(meta: Mapping[str, Any], dets: list[Any], paths: Sequence[Path], annotations: str | Path
        ) -> dict[str, Any]:
    from darknet2tflite.evaluation.coco_eval import coco_evaluate
    try:
        r = coco_evaluate(annotations, {p.name: d for p, d in zip(paths, dets)}, meta.get("names"))
    except ValueError as e:
        raise InputError(str(e)) from None
    stats = r.get("stats") or []
    # COCO's AP by object area (small < 32^2 < medium < 96^2 px < large): int8 losses are
    # not spread evenly (yolov4-tiny loses most on large objects, docs/int8.md)
    by_size = {k: (round(100 * v, 3) if v >= 0 else None)
               for k, v in zip(("small", "medium", "large"), stats[3:6])}
    return {"AP": round(100 * r["AP"], 3), "AP50": round(100 * r["AP50"], 3),
            "AP_by_size": by_size,
            "images": r["images"], "detections": r["detections"], "warnings": r["warnings"]}


def evaluate(float_tflite: str | Path, int8_tflite: str | Path, meta: Mapping[str, Any] | str | Path,
             eval_images: str | Path | Sequence[str | Path], eval_annotations: str | Path | None,
             out_dir: str | Path, *, extra_models: Mapping[str, str | Path] | None = None,
             latency_runs: int = 20, threads: Sequence[int] = (1, 2), draw: int = 4,
             eval_limit: int | None = None,
             cross: Sequence[tuple[str | Path, Sequence[str | Path]]] = (),
             progress: Progress = print) -> dict[str, Any]:
    """Evaluate float vs int8 (and ``extra_models``: name -> .tflite) on ``eval_images``.

    ``cross``: (int8 model, images) pairs of the other folds of a cross-calibration, each
    model calibrated without its images; with annotations, ``ap_cross`` then reports AP of
    float vs int8 over ALL folds' images, every image scored by an int8 model that never
    saw it -- on a small photo set that is a much steadier estimate than one hold-out half.
    Writes side-by-side float | int8 detection images under ``out_dir/report_images`` and
    returns the report dict (see :func:`write_report`)."""
    from darknet2tflite.evaluation.draw import captioned, draw_detections, save_image
    from darknet2tflite.images import load_rgb

    if not isinstance(meta, Mapping):
        meta = json.loads(Path(meta).read_text(encoding="utf-8"))
    out = Path(out_dir)
    models: dict[str, Path] = {"float32": Path(float_tflite), "int8": Path(int8_tflite)}
    for k, v in (extra_models or {}).items():
        models[k] = Path(v)
    paths, warnings = eval_image_list(eval_images, eval_annotations, eval_limit)
    batch, paths, sizes, skipped = load_eval_images(paths, meta)
    if skipped:  # messages "<path>: <reason>": name the first few files
        from darknet2tflite.errors import shown
        first = ", ".join(shown(Path(m.split(": ", 1)[0]).name, 40) for m in skipped[:5])
        warnings.append(f"{len(skipped)} evaluation image(s) unreadable, skipped: {first}"
                        + (" ..." if len(skipped) > 5 else ""))
    progress(f"evaluate: {len(paths)} held-out images, models {', '.join(models)}")
    heads = {}
    t0 = time.perf_counter()
    for k, p in models.items():
        heads[k] = run_model(p, batch, meta)
    progress(f"evaluate: {len(paths)}/{len(paths)} images x {len(models)} models "
             f"({len(paths) * len(models) / max(time.perf_counter() - t0, 1e-9):.1f} "
             "images/s)")
    report: dict[str, Any] = {
        "images": [p.name for p in paths], "warnings": warnings,
        "conf_thresh_ap": AP_CONF_THRESH, "nms_thresh": NMS_THRESH,
        "heads": {k: head_errors(heads["float32"], v, meta) for k, v in heads.items()
                  if k != "float32"},
        "sizes": {k: os.path.getsize(p) for k, p in models.items()},
    }
    from .agreement import float_agreement
    progress("evaluate: int8 against float32's own detections (label-free)")
    report["float_agreement"] = float_agreement(detect(heads["float32"], meta, sizes),
                                                detect(heads["int8"], meta, sizes), sizes)
    if eval_annotations is not None:
        progress("evaluate: COCO AP (decode + NMS per model)")
        ap = {k: _ap(meta, detect(v, meta, sizes), paths, eval_annotations)
              for k, v in heads.items()}
        for k in ap:
            ap[k]["dAP"] = round(ap[k]["AP"] - ap["float32"]["AP"], 3)
            ap[k]["dAP50"] = round(ap[k]["AP50"] - ap["float32"]["AP50"], 3)
        report["ap"] = ap
        if cross:
            report["ap_cross"] = _cross_ap(models["float32"], heads, paths, sizes, cross, meta,
                                           eval_annotations, progress)
    progress("evaluate: latency")
    report["latency_ms"] = {k: {str(t): latency_ms(p, t, latency_runs) for t in threads}
                            for k, p in models.items()}
    if draw:
        img_dir = out / "report_images"
        drawn = []
        for i, p in enumerate(paths[:draw]):
            rgb = load_rgb(p)
            panels = []
            for k in ("float32", "int8"):
                d = detect([h[i:i + 1] for h in heads[k]], meta, [sizes[i]], DRAW_CONF_THRESH)[0]
                panels.append(captioned(draw_detections(rgb, d, meta.get("names")), k))
            gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
            # \w keeps any letter; bytes that are not UTF-8 (surrogate escapes) become "_",
            # so the name can be written into report.md and the Prefect UI
            fname = _UNSAFE_IN_NAME.sub("_", p.stem) + "_float32_vs_int8.png"
            save_image(img_dir / fname, np.concatenate([panels[0], gap, panels[1]], axis=1))
            drawn.append(f"report_images/{fname}")
        report["drawn"] = drawn
    return report


def _cross_ap(float_tflite: Path, heads: Mapping[str, list[np.ndarray]], paths: Sequence[Path],
              sizes: Sequence[tuple[int, int]], cross: Sequence[tuple[str | Path, Sequence[Any]]],
              meta: Mapping[str, Any], annotations: str | Path, progress: Progress
              ) -> dict[str, Any]:
    """AP over the union of the held-out folds (see :func:`evaluate`)."""
    fdets = detect(heads["float32"], meta, sizes)
    qdets = detect(heads["int8"], meta, sizes)
    all_paths = list(paths)
    for k, (tfl, fold_paths) in enumerate(cross, 1):
        batch, fp, fsizes, _ = load_eval_images([Path(p) for p in fold_paths], meta)
        progress(f"evaluate: cross-calibration fold {k + 1}: {len(fp)} images")
        fdets += detect(run_model(float_tflite, batch, meta), meta, fsizes)
        qdets += detect(run_model(tfl, batch, meta), meta, fsizes)
        all_paths += fp
    fa = _ap(meta, fdets, all_paths, annotations)
    qa = _ap(meta, qdets, all_paths, annotations)
    return {"folds": len(cross) + 1, "images": len(all_paths), "float32": fa, "int8": qa,
            "dAP": round(qa["AP"] - fa["AP"], 3), "dAP50": round(qa["AP50"] - fa["AP50"], 3)}
