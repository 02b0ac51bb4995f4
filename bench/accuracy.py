"""int8 accuracy / speed benchmark: float32 vs calibrated int8 (and OpenCV DNN float).

Converts yolov4-tiny and yolov3-tiny (mask 1,2,3 cfg) the way the product does
(``darknet2tflite.stages.inprocess.convert_in_process``: every stage body as the convert flow
runs them, the probe's rewrite choice included), calibrated and evaluated on the shared COCO
photos (../shared/images/coco, instances.json), then prints one table and writes JSON:

* AP@[.5:.95] / AP50 of float32 and int8, cross-calibrated over all photos (every photo
  scored by an int8 model calibrated without it) and on the shipped model's held-out half;
* OpenCV DNN float AP on the same photos, same decode (reference: our float == Darknet);
* median latency at 1 and 2 threads, file sizes, int8 conversion time and peak RSS.

``--layouts`` additionally compares the head-split layouts (and no split) with the same
cross-calibration, which is how the default layout was chosen.

Usage: .venv/bin/python bench/accuracy.py [--models yolov4-tiny,yolov3-tiny] [--layouts]
       [--json bench/results/accuracy.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"

MODELS = {
    "yolov4-tiny": ("darknet/cfg/yolov4-tiny.cfg", "darknet/weights/yolov4-tiny.weights"),
    "yolov3-tiny": ("darknet/cfg/yolov3-tiny.mask123.cfg", "darknet/weights/yolov3-tiny.weights"),
}
TARGETS = {"ap": 1.0, "ap50": 0.3, "opencv": 0.1, "speedup": 5.0, "seconds": 120.0}


def opencv_ap(cfg: Path, weights: Path, images: list[Path], annotations: Path,
              names: list[str]) -> dict:
    """Float AP of OpenCV DNN's Darknet importer with this project's decode."""
    from darknet2tflite.evaluation.evaluate import _ap, detect, load_eval_images
    from darknet2tflite.darknet.metadata import decode_metadata
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.reference.opencv import opencv_heads
    meta = decode_metadata(parse_cfg(cfg), names)
    batch, paths, sizes, _ = load_eval_images(images, meta)
    heads = opencv_heads(cfg, weights, batch)
    return _ap(meta, detect(heads, meta, sizes), paths, annotations)


def bench_model(name: str, images: Path, annotations: Path, names_path: Path,
                out_root: Path, progress) -> dict:
    from darknet2tflite.darknet.metadata import read_names
    from darknet2tflite.stages.inprocess import convert_in_process
    cfg, weights = (SHARED / p for p in MODELS[name])
    out = out_root / name
    t0 = time.perf_counter()
    rep = convert_in_process(dict(cfg=str(cfg), weights=str(weights), out=str(out),
                                  calibration=str(images), names=str(names_path),
                                  eval_annotations=str(annotations), eval_images=str(images)),
                             progress=progress)
    wall = time.perf_counter() - t0
    ev = rep["evaluation"]
    cross = ev["ap_cross"]
    from darknet2tflite.evaluation.evaluate import eval_image_list
    every, _ = eval_image_list(images, annotations)
    cv = opencv_ap(cfg, weights, every, annotations, read_names(names_path))
    lat = ev["latency_ms"]
    row = {
        "model": name, "images": cross["images"],
        "float_AP": cross["float32"]["AP"], "float_AP50": cross["float32"]["AP50"],
        "int8_AP": cross["int8"]["AP"], "int8_AP50": cross["int8"]["AP50"],
        "dAP": cross["dAP"], "dAP50": cross["dAP50"],
        "heldout_images": len(ev["images"]),
        "heldout_float_AP": ev["ap"]["float32"]["AP"], "heldout_int8_AP": ev["ap"]["int8"]["AP"],
        "heldout_dAP": ev["ap"]["int8"]["dAP"], "heldout_dAP50": ev["ap"]["int8"]["dAP50"],
        "opencv_AP": cv["AP"], "opencv_AP50": cv["AP50"],
        "float_minus_opencv_AP": round(cross["float32"]["AP"] - cv["AP"], 3),
        "latency_ms": lat,
        "speedup_1thread": round(lat["float32"]["1"] / lat["int8"]["1"], 2),
        "size_bytes": ev["sizes"],
        "int8_conversion_s": rep["conversion"]["seconds"],
        "peak_rss_mb": rep["conversion"]["memory"]["peak_mb"],
        "pipeline_wall_s": round(wall, 1),
        "full_integer": rep["conversion"]["integer_check"]["full_integer"],
        "report": str(out / "report.md"),
    }
    row["targets_met"] = {
        "ap": -row["dAP"] <= TARGETS["ap"], "ap50": -row["dAP50"] <= TARGETS["ap50"],
        "opencv": abs(row["float_minus_opencv_AP"]) <= TARGETS["opencv"],
        "speedup": row["speedup_1thread"] >= TARGETS["speedup"],
        "seconds": row["int8_conversion_s"] < TARGETS["seconds"]}
    return row


def head_errors(meta: dict, ref: list, heads: list) -> tuple[float, float]:
    """Objectness and w/h squared error of raw ``heads`` vs ``ref`` at the cells with
    reference objectness > 0.05 (where detections come from), summed over heads."""
    import numpy as np
    obj = wh = 0.0
    for h, f, q in zip(meta["heads"], ref, heads):
        n = len(h["anchors"]) if h.get("type", "yolo") == "yolo" else int(h["num"])
        f = f.reshape(f.shape[:-1] + (n, -1))
        q = q.reshape(q.shape[:-1] + (n, -1))
        m = f[..., 4] > np.log(0.05 / 0.95)
        obj += float(((f[..., 4] - q[..., 4])[m] ** 2).mean())
        wh += float(((f[..., 2:4] - q[..., 2:4])[m] ** 2).mean())
    return obj, wh


def shared_photos_missing() -> bool:
    """True (after saying so on stderr) when the annotated shared COCO photos the int8
    benchmarks score are not there."""
    if (SHARED / "images" / "coco" / "instances.json").is_file():
        return False
    print(f"needs the shared COCO photos in {SHARED / 'images' / 'coco'}", file=sys.stderr)
    return True


def save_json(path: Path, doc: Any, indent: int = 1) -> None:
    """A benchmark's result file (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=indent) + "\n", encoding="utf-8")


def cross_folds(images: Path, annotations: Path) -> list[tuple[list, list]]:
    """(calibration exclude, evaluation) pairs of the product's own 2-fold split
    (quantize.plan_images: the shipped model's held-out half, then the swapped fold)."""
    from darknet2tflite.int8.planning import plan_images
    plan = plan_images(images, images, annotations)
    return [(plan["exclude"], plan["eval"])] + [(f["exclude"], f["eval"]) for f in plan["cross"]]


def int8_bench_model(name: str) -> tuple[Any, dict, Any, list]:
    """(cfg, decode metadata with COCO names, the Keras model as the int8 path builds it,
    its head output groups) for one of MODELS: what the int8 benchmarks start from."""
    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.tflite.export import head_groups
    from darknet2tflite.darknet.metadata import decode_metadata, read_names
    from darknet2tflite.int8.quantize import int8_rules
    from darknet2tflite.darknet.weights import read_weights
    cfg_path, w_path = (SHARED / p for p in MODELS[name])
    cfg = parse_cfg(cfg_path)
    meta = decode_metadata(cfg, read_names(SHARED / "darknet" / "cfg" / "coco.names"))
    model, _ = build_keras(cfg, read_weights(w_path, cfg), int8_rules())
    return cfg, meta, model, head_groups(model, meta)


def tflite_heads(data: bytes, model: Any, meta: dict, groups: list, batch: Any) -> list:
    """Raw heads (the contract's layout) of an in-memory .tflite converted from ``model``,
    whose split outputs are found by name."""
    from darknet2tflite.tflite.export import run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    from darknet2tflite.int8.quantize import tflite_head_outputs
    m = dict(meta, head_outputs=tflite_head_outputs(data, model.output_names, groups))
    return run_tflite(interpreter(data, 2), batch, m)


def bench_layouts(name: str, images: Path, annotations: Path, names_path: Path,
                  progress) -> list[dict]:
    """Cross-calibrated AP of each head-split layout (and none) with identical settings."""
    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.evaluation.evaluate import _ap, detect, load_eval_images
    from darknet2tflite.tflite.export import convert, head_groups
    from darknet2tflite.darknet.metadata import decode_metadata, read_names
    from darknet2tflite.int8.quantize import QuantizeOptions, int8_from_keras, int8_rules
    from darknet2tflite.rewrites import load_rules
    from darknet2tflite.rewrites.head_split import LAYOUTS
    from darknet2tflite.darknet.weights import read_weights
    cfg_path, w_path = (SHARED / p for p in MODELS[name])
    cfg = parse_cfg(cfg_path)
    weights = read_weights(w_path, cfg)
    meta = decode_metadata(cfg, read_names(names_path))
    folds = cross_folds(images, annotations)
    arrays = [load_calibration(calibrate(cfg, images, None, 500, exclude=ex, progress=None).npy)
              for ex, _ in folds]
    evals = [load_eval_images(ev, meta) for _, ev in folds]
    rows = []
    base = [r for r in load_rules().values() if not r.opt_in]
    for layout in ["none", *LAYOUTS]:
        rules = base if layout == "none" else int8_rules(layout)
        model, _ = build_keras(cfg, weights, rules)
        groups = head_groups(model, meta)
        fdets, qdets, paths = [], [], []
        for arr, (batch, fp, sizes, _) in zip(arrays, evals):
            data, *_ = int8_from_keras(model, arr, QuantizeOptions(), lambda _m: None)
            for tfl, acc in ((convert(model, mode="float32"), fdets), (data, qdets)):
                acc += detect(tflite_heads(tfl, model, meta, groups, batch), meta, sizes)
            paths += fp
        fa, qa = _ap(meta, fdets, paths, annotations), _ap(meta, qdets, paths, annotations)
        row = {"layout": layout, "float_AP": fa["AP"], "int8_AP": qa["AP"],
               "dAP": round(qa["AP"] - fa["AP"], 3), "dAP50": round(qa["AP50"] - fa["AP50"], 3)}
        progress(f"layout {layout}: {row}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="yolov4-tiny,yolov3-tiny")
    ap.add_argument("--images", default=str(SHARED / "images" / "coco"))
    ap.add_argument("--annotations", default=str(SHARED / "images" / "coco" / "instances.json"))
    ap.add_argument("--names", default=str(SHARED / "darknet" / "cfg" / "coco.names"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "accuracy.json"))
    ap.add_argument("--out", default=None, help="keep converted models here (default: temp)")
    ap.add_argument("--layouts", action="store_true", help="also compare head-split layouts")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    results: dict = {"targets": TARGETS, "models": [], "layouts": {}}
    with tempfile.TemporaryDirectory(prefix="d2t-bench-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        for name in args.models.split(","):
            results["models"].append(bench_model(name, Path(args.images), Path(args.annotations),
                                                 Path(args.names), root, progress))
            if args.layouts:
                results["layouts"][name] = bench_layouts(
                    name, Path(args.images), Path(args.annotations), Path(args.names), progress)

    hdr = ("model", "float AP/AP50", "int8 AP/AP50", "dAP", "dAP50", "OpenCV AP", "f32 ms 1t/2t",
           "int8 ms 1t/2t", "speedup", "f32/int8 MB", "conv s")
    print("\n| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
    for r in results["models"]:
        lat, sz = r["latency_ms"], r["size_bytes"]
        print(f"| {r['model']} | {r['float_AP']:.2f}/{r['float_AP50']:.2f} | "
              f"{r['int8_AP']:.2f}/{r['int8_AP50']:.2f} | {r['dAP']:+.2f} | {r['dAP50']:+.2f} | "
              f"{r['opencv_AP']:.2f} | {lat['float32']['1']:.1f}/{lat['float32']['2']:.1f} | "
              f"{lat['int8']['1']:.1f}/{lat['int8']['2']:.1f} | {r['speedup_1thread']:.1f}x | "
              f"{sz['float32'] / 2**20:.1f}/{sz['int8'] / 2**20:.1f} | {r['int8_conversion_s']:.0f} |")
    print("\nAP: cross-calibrated over all annotated photos (each scored by an int8 model "
          "calibrated without it); held-out half of the shipped model:")
    for r in results["models"]:
        print(f"  {r['model']}: held-out {r['heldout_images']} images dAP {r['heldout_dAP']:+.2f} "
              f"dAP50 {r['heldout_dAP50']:+.2f}; targets met: {r['targets_met']}")
    for name, rows in results["layouts"].items():
        print(f"\nhead-split layouts ({name}, cross-calibrated):")
        for row in rows:
            print(f"  {row['layout']:>14}: int8 AP {row['int8_AP']:.2f} dAP {row['dAP']:+.2f} "
                  f"dAP50 {row['dAP50']:+.2f}")
    out = Path(args.json)
    save_json(out, results, indent=2)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
