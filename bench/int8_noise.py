"""How much of one int8 model's AP is luck: the same calibration, rounding pattern redrawn.

Why: two int8 conversions whose activation scales differ by ~5e-7 relative (the range pass
vs TFLite's calibrator, docs/int8.md) scored 0.45 AP apart on the same photos. A change in
the last bits of a scale flips a few roundings, each flip changes the next layer's inputs,
and the whole rounding pattern is redrawn. This script measures that spread directly: it
calibrates once (all the shared COCO photos, as the product does, mirrors and channel split
included), then quantizes ``--draws`` times with every activation range scaled by
(1 + k * 1e-6), k = 0, 1, ...; nothing else changes. Each draw is scored on the same photos
(in-sample: the photos also calibrated it; the spread, not the level, is the point).

``--jitter SIGMA`` draws differently: each range bound is scaled by its own 1 + SIGMA*z
(z ~ N(0, 1)); with SIGMA ~0.02 (how far the ranges of two calibration sets lie apart) the
mean also averages over the calibration-set spread, which is what comparing two range
methods needs (the same seeds are used for every method, so the draws are paired).

Prints per draw AP / AP50 loss vs float32 and the RMS difference of its raw heads from draw 0
relative to the RMS int8 error of draw 0; then mean, standard deviation and range.

Usage: .venv/bin/python bench/int8_noise.py [--models yolov4-tiny] [--draws 8]
       [--budget B] [--mirror N] [--hist-images N] [--ranges METHOD] [--jitter SIGMA]
       [--calibration-limit N [--subset-seed S]] [--box-rounding on|off]
       [--json bench/results/int8_noise.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# also sets up TF logging and sys.path
from accuracy import (  # noqa: E402
    SHARED, int8_bench_model, save_json, shared_photos_missing, tflite_heads)

STEP = 1e-6


def redraw(refined: bytes, k: int, jitter: float = 0.0) -> bytes:
    """``refined`` with every activation range except the input's scaled by 1 + k*STEP, or
    with ``jitter`` > 0 each range bound by its own 1 + jitter*z (z ~ N(0, 1), seed k):
    ranges a few percent off, as another calibration set would give them."""
    import numpy as np
    from darknet2tflite.tflite.flatbuffer import _to_bytes, _to_obj
    if k == 0 and not jitter:
        return refined
    m = _to_obj(refined)
    g = m.subgraphs[0]
    inputs = {int(i) for i in g.inputs}
    rng = np.random.default_rng(1000 + k)
    for i, t in enumerate(g.tensors):
        q = t.quantization
        if i in inputs or q is None or q.min is None or len(q.min) != 1:
            continue
        f = 1.0 + jitter * rng.standard_normal(2) if jitter else (1.0 + k * STEP,) * 2
        q.min, q.max = [float(q.min[0]) * f[0]], [float(q.max[0]) * f[1]]
    return _to_bytes(m)


def bench(name: str, draws: int, say, budget: float | None = None, mirror: int | None = None,
          hist_images: int | None = None, limit: int | None = None,
          subset_seed: int | None = None, ranges: str | None = None,
          jitter: float = 0.0, box_rounding: bool | None = None) -> dict:
    import numpy as np
    from darknet2tflite.int8.augment import mirror_augment
    from darknet2tflite.int8.box_rounding import round_box_weights
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.int8.channel_split import split_outlier_channels
    from darknet2tflite.evaluation.evaluate import _ap, detect, load_eval_images
    from darknet2tflite.tflite.export import convert
    from darknet2tflite.int8.ranges import HIST_MAX_IMAGES, calibrate_model, quantize_calibrated, refine_ranges
    from darknet2tflite.int8.quantize import QuantizeOptions
    images = SHARED / "images" / "coco"
    annotations = images / "instances.json"
    cfg, meta, model, groups = int8_bench_model(name)
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    batch, paths, sizes, _ = load_eval_images(paths, meta)

    def heads_of(data: bytes) -> list:
        return tflite_heads(data, model, meta, groups, batch)

    fheads = heads_of(convert(model, mode="float32"))
    fa = _ap(meta, detect(fheads, meta, sizes), paths, annotations)
    arr = load_calibration(calibrate(cfg, images, None, 500, progress=None).npy)
    if subset_seed is not None and limit:   # a random subset instead of the first photos
        pick = np.random.default_rng(subset_seed).choice(len(arr), min(limit, len(arr)),
                                                         replace=False)
        arr = np.asarray(arr)[np.sort(pick)]
    arr = arr[:limit]
    opts = QuantizeOptions()
    budget = opts.channel_split if budget is None else budget
    mirror = opts.calibration_mirror if mirror is None else mirror
    hist_images = HIST_MAX_IMAGES if hist_images is None else hist_images
    ranges = opts.ranges if ranges is None else ranges
    box_rounding = opts.box_rounding if box_rounding is None else box_rounding
    split_model, _ = split_outlier_channels(model, arr, budget=budget)
    if box_rounding:   # as quantize.int8_from_keras does
        split_model, _ = round_box_weights(split_model, arr)
    calib = mirror_augment(arr, mirror)
    refined, _ = refine_ranges(calibrate_model(split_model, calib), calib, ranges,
                               hist_images=hist_images)
    rows, base = [], None
    for k in range(draws):
        heads = heads_of(quantize_calibrated(redraw(refined, k, jitter)))
        qa = _ap(meta, detect(heads, meta, sizes), paths, annotations)
        flat = np.concatenate([h.ravel() for h in heads])
        if base is None:
            base = flat
            err = float(np.sqrt(np.mean((flat - np.concatenate(
                [h.ravel() for h in fheads])) ** 2)))
        row = {"draw": k, "scale_factor": None if jitter else 1.0 + k * STEP,
               "dAP": round(qa["AP"] - fa["AP"], 3), "dAP50": round(qa["AP50"] - fa["AP50"], 3),
               "head_rms_diff_vs_draw0": round(float(np.sqrt(np.mean((flat - base) ** 2))), 5),
               "relative_to_int8_error": round(float(np.sqrt(np.mean((flat - base) ** 2))) / err,
                                               3)}
        say(json.dumps(row))
        rows.append(row)
    ap = np.array([-r["dAP"] for r in rows])
    ap50 = np.array([-r["dAP50"] for r in rows])
    return {"model": name, "images": len(paths), "float_AP": fa["AP"], "float_AP50": fa["AP50"],
            "setting": {"channel_split": budget, "calibration_mirror": mirror,
                        "hist_images": hist_images, "calibration_images": len(arr),
                        "subset_seed": subset_seed, "ranges": ranges, "jitter": jitter,
                        "box_rounding": box_rounding},
            "int8_head_rms_error": round(err, 5), "draws": rows,
            "AP_loss": {"mean": round(float(ap.mean()), 3), "std": round(float(ap.std(ddof=1)), 3)
                        if len(ap) > 1 else 0.0, "min": float(ap.min()), "max": float(ap.max())},
            "AP50_loss": {"mean": round(float(ap50.mean()), 3),
                          "std": round(float(ap50.std(ddof=1)), 3) if len(ap50) > 1 else 0.0,
                          "min": float(ap50.min()), "max": float(ap50.max())}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="yolov4-tiny")
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--budget", type=float, default=None,
                   help="channel split budget (default: the product's)")
    p.add_argument("--mirror", type=int, default=None,
                   help="calibration sets below this get mirrored copies (default: the product's)")
    p.add_argument("--hist-images", type=int, default=None,
                   help="images for the MSE histograms (default: the product's)")
    p.add_argument("--calibration-limit", type=int, default=None,
                   help="calibrate on the first N photos only (default: all)")
    p.add_argument("--subset-seed", type=int, default=None,
                   help="with --calibration-limit: a seeded random subset of the photos")
    p.add_argument("--ranges", default=None,
                   help="activation range method (default: the product's)")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="draws scale each range bound by 1 + JITTER*N(0,1) instead of "
                   "1 + k*1e-6 (e.g. 0.02: range changes as large as another calibration "
                   "set makes, so the mean also averages over calibrations)")
    p.add_argument("--box-rounding", choices=("on", "off"), default=None,
                   help="error-feedback rounding of the heads' box weights (default: the "
                   "product's)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.draws < 2:
        p.error("--draws must be >= 2")
    if shared_photos_missing():
        return 2
    results = [bench(n, a.draws, lambda m: print(m, flush=True), a.budget, a.mirror,
                     a.hist_images, a.calibration_limit, a.subset_seed, a.ranges, a.jitter,
                     None if a.box_rounding is None else a.box_rounding == "on")
               for n in a.models.split(",")]
    print("\nmodel        draws  AP loss mean (std, range)     AP50 loss mean (std, range)")
    for r in results:
        s, s50 = r["AP_loss"], r["AP50_loss"]
        print(f"{r['model']:<12} {len(r['draws']):<6} {s['mean']:.2f} ({s['std']:.2f}, "
              f"{s['min']:.2f}..{s['max']:.2f})      {s50['mean']:.2f} ({s50['std']:.2f}, "
              f"{s50['min']:.2f}..{s50['max']:.2f})")
    if a.json:
        save_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
