"""The floor under int8 AP: what weight rounding alone costs, and whether one int8 model's
luck carries over to other photos.

Why: after the head split, MSE ranges, channel split and mirrored calibration, yolov4-tiny's
held-out int8 AP50 loss (0.41 mean over six halvings, bench/int8_splits.py) is still above
the 0.3 target, and every further change measured since moved it by less than its own noise.
Two questions decide whether more conversion work can close the gap (docs/int8.md, "The
floor"):

``weights``: the float Keras model with every convolution's kernel rounded exactly as
TFLite's converter rounds it (per output channel, symmetric, max|w| / 127; checked against a
converted model in tests/test_bench.py) and activations left float. No calibration is
involved, so the score on all annotated photos is neither in-sample nor held out. ``--draws``
redraws the rounding by coarsening every channel's scale by 1 + 0.002 k (k = 0 is the
converter's own rounding). With ``--bias-correction`` each draw is also scored with the mean
output offset of the rounding (E[conv(x, dW)] over 16 calibration photos' float inputs)
removed from every bias: the systematic part of the weight error, computed, not fitted.

``layers``: which layers' weight rounding costs the most: each layer alone rounded as in
``weights`` (k = 0), the head's objectness and w/h squared error at the cells with float
objectness > 0.05 (where detections come from) over every other photo, as a share of the
error with every layer rounded.

``draws``: per 2-fold split (``--seeds``), calibrate on one half as the product does, make
``--draws`` int8 models that differ only in their rounding pattern (ranges scaled by
1 + k * 1e-6, bench/int8_noise.py) and score each on its calibration half and on the other
half. If some rounding patterns were better models, the one scoring best on its calibration
photos would score better than the others on the held-out half too; printed: the held-out
spread per fold, the correlation of held-out with calibration-half loss (within folds), and
what picking the best calibration-half draw gains held out.

Usage: .venv/bin/python bench/int8_floor.py [--models yolov4-tiny] [--mode weights,layers,draws]
       [--draws 10] [--bias-correction] [--seeds 0,1] [--json bench/results/int8_floor.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# also sets up TF logging and sys.path
from accuracy import (  # noqa: E402
    SHARED, head_errors, int8_bench_model, save_json, shared_photos_missing,
    tflite_heads)

#: calibration photos whose float layer inputs give the bias correction's offsets
STAT_IMAGES = 16
#: weight draw k coarsens every channel's scale by 1 + WEIGHT_STEP * k
WEIGHT_STEP = 0.002


def _kernel_axes(layer: Any) -> tuple[int, ...] | None:
    """Kernel axes reduced per output channel (TFLite's per-channel weight scale), or None
    for layers without a quantized kernel."""
    import keras
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return (0, 1)          # (kh, kw, cin, mult): TFLite's channel is cin * mult
    if isinstance(layer, keras.layers.Conv2D):
        return (0, 1, 2)       # (kh, kw, cin / groups, cout)
    return None


def rounding_error(kernel: Any, axes: tuple[int, ...], coarsen: float = 1.0) -> Any:
    """int8-rounded kernel minus kernel: scale max|w| / 127 per output channel (times
    ``coarsen``), round half away from zero, in float32 as the converter computes it."""
    import numpy as np
    from darknet2tflite.int8.box_rounding import channel_scale, nearest
    k = np.asarray(kernel, dtype=np.float32)
    return (nearest(k, channel_scale(k, axes) * np.float32(coarsen)) - k).astype(np.float32)


def _error_conv(layer: Any, delta: Any) -> Any:
    """``layer``'s convolution (strides, padding, dilation, groups) without bias or
    activation, holding the weight error ``delta``."""
    cfg = dict(layer.get_config(), use_bias=False, activation="linear",
               name=f"{layer.name}_dw", trainable=False)
    copy = layer.__class__.from_config(cfg)
    copy.build(tuple(layer.input.shape))
    copy.set_weights([delta])
    return copy


def rounding_offsets(model: Any, images: Any, deltas: dict[str, Any], batch: int = 4
                     ) -> dict[str, Any]:
    """Per layer in ``deltas``: the mean over ``images`` and positions of conv(x, dW) per
    output channel, x the layer's float input: the systematic output change of rounding."""
    import keras
    import numpy as np
    layers = [model.get_layer(name) for name in deltas]
    probe = keras.Model(model.inputs, [layer.input for layer in layers])
    convs = [_error_conv(layer, deltas[layer.name]) for layer in layers]
    sums: list[Any] = [0.0] * len(layers)
    count = [0] * len(layers)
    for start in range(0, len(images), batch):
        x = np.asarray(images[start:start + batch], dtype=np.float32)
        ins = probe(x, training=False)
        ins = ins if isinstance(ins, (list, tuple)) else [ins]
        for i, (conv, inp) in enumerate(zip(convs, ins)):
            y = np.asarray(conv(inp), dtype=np.float64)
            sums[i] += y.sum(axis=(0, 1, 2))
            count[i] += y.shape[0] * y.shape[1] * y.shape[2]
    return {layer.name: s / n for layer, s, n in zip(layers, sums, count)}


def rounding_deltas(model: Any, coarsen: float = 1.0) -> dict[str, Any]:
    """Per quantized layer of ``model``: its kernel's int8 rounding error (rounding_error)."""
    deltas = {}
    for layer in model.layers:
        axes = _kernel_axes(layer)
        if axes is not None:
            deltas[layer.name] = rounding_error(layer.get_weights()[0], axes, coarsen)
    return deltas


def remove_rounding_offsets(model: Any, stats: Any, deltas: dict[str, Any]) -> None:
    """Subtract each channel's mean rounding offset over ``stats`` (float32 NHWC photos,
    inputs taken from ``model`` as it is) from its bias, in place; kernels are untouched, so
    a converter that rounds them reproduces ``deltas``."""
    offsets = rounding_offsets(model, stats, deltas)
    for name, offset in offsets.items():
        layer = model.get_layer(name)
        w = layer.get_weights()
        if len(w) > 1:
            w[1] = (w[1] - offset).astype(w[1].dtype)
            layer.set_weights(w)


def round_weights(model: Any, coarsen: float = 1.0, stats: Any = None) -> None:
    """Replace every kernel of ``model`` by its int8 rounding (in place); with ``stats``
    (float32 NHWC photos) also subtract each channel's rounding offset from its bias."""
    deltas = rounding_deltas(model, coarsen)
    if stats is not None:   # offsets from the float model's layer inputs
        remove_rounding_offsets(model, stats, deltas)
    for name, delta in deltas.items():
        layer = model.get_layer(name)
        w = layer.get_weights()
        layer.set_weights([w[0] + delta] + w[1:])


def keras_heads(model: Any, groups: list, batch: Any) -> list:
    """Raw heads (the contract's layout) of the Keras model: its split outputs concatenated."""
    import numpy as np
    outs = model.predict(batch, batch_size=8, verbose=0)
    named = dict(zip(model.output_names, outs if isinstance(outs, list) else [outs]))
    return [np.concatenate([named[n] for n in g], axis=-1) for g in groups]


def bench_weights(name: str, draws: int, bias_correction: bool, say) -> dict:
    import numpy as np
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.evaluation.evaluate import _ap, detect, load_eval_images
    images = SHARED / "images" / "coco"
    annotations = images / "instances.json"
    cfg, meta, model, groups = int8_bench_model(name)
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    batch, paths, sizes, _ = load_eval_images(paths, meta)
    stats = load_calibration(calibrate(cfg, images, None, STAT_IMAGES, progress=None).npy) \
        if bias_correction else None
    fa = _ap(meta, detect(keras_heads(model, groups, batch), meta, sizes), paths, annotations)
    original = {layer.name: layer.get_weights() for layer in model.layers}
    rows = []
    for k in range(draws):
        for corrected in ((False, True) if bias_correction else (False,)):
            round_weights(model, 1.0 + WEIGHT_STEP * k, stats if corrected else None)
            qa = _ap(meta, detect(keras_heads(model, groups, batch), meta, sizes), paths,
                     annotations)
            for layer in model.layers:
                layer.set_weights(original[layer.name])
            row = {"draw": k, "scale_factor": 1.0 + WEIGHT_STEP * k,
                   "bias_correction": corrected,
                   "AP_loss": round(fa["AP"] - qa["AP"], 3),
                   "AP50_loss": round(fa["AP50"] - qa["AP50"], 3)}
            say(json.dumps(row))
            rows.append(row)
    out = {"model": name, "mode": "weights", "images": len(paths), "float_AP": fa["AP"],
           "float_AP50": fa["AP50"], "rows": rows, "summary": {}}
    for corrected in dict.fromkeys(r["bias_correction"] for r in rows):
        rs = [r for r in rows if r["bias_correction"] == corrected]
        out["summary"]["bias_corrected" if corrected else "plain"] = {"draws": len(rs)} | {
            m: {"mean": round(float(np.mean([r[m] for r in rs])), 3),
                "std": round(float(np.std([r[m] for r in rs], ddof=1)), 3) if len(rs) > 1 else 0.0}
            for m in ("AP_loss", "AP50_loss")}
    if bias_correction:
        d = np.array([[a[m] - b[m] for m in ("AP_loss", "AP50_loss")] for a, b in zip(
            [r for r in rows if r["bias_correction"]],
            [r for r in rows if not r["bias_correction"]])])
        out["summary"]["paired_change"] = {
            "AP": round(float(d[:, 0].mean()), 3), "AP50": round(float(d[:, 1].mean()), 3),
            "AP_se": round(float(d[:, 0].std(ddof=1) / np.sqrt(len(d))), 3) if len(d) > 1 else None,
            "AP50_se": round(float(d[:, 1].std(ddof=1) / np.sqrt(len(d))), 3) if len(d) > 1 else None}
    return out


def bench_layers(name: str, say) -> dict:
    from darknet2tflite.evaluation.evaluate import load_eval_images
    images = SHARED / "images" / "coco"
    cfg, meta, model, groups = int8_bench_model(name)
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))[::2]
    batch, *_ = load_eval_images(paths, meta)
    ref = keras_heads(model, groups, batch)
    deltas = rounding_deltas(model)

    def rounded(names: list[str]) -> tuple[float, float]:
        for n in names:
            layer = model.get_layer(n)
            w = layer.get_weights()
            layer.set_weights([w[0] + deltas[n]] + w[1:])
        err = head_errors(meta, ref, keras_heads(model, groups, batch))
        for n in names:
            layer = model.get_layer(n)
            w = layer.get_weights()
            layer.set_weights([w[0] - deltas[n]] + w[1:])
        return err

    total = rounded(list(deltas))
    rows = []
    for n in deltas:
        obj, wh = rounded([n])
        rows.append({"layer": n, "obj_share": round(obj / total[0], 3),
                     "wh_share": round(wh / total[1], 3)})
        say(json.dumps(rows[-1]))
    return {"model": name, "mode": "layers", "images": len(batch),
            "all_layers": {"obj_mse": total[0], "wh_mse": total[1]}, "rows": rows}


def draw_summary(rows: list[dict]) -> dict:
    """Held-out spread per fold, the within-fold correlation of held-out with
    calibration-half loss, and the held-out gain of picking the draw that scores best on its
    calibration half (its held-out loss minus the fold's mean; negative = picking helps)."""
    import numpy as np
    out: dict[str, Any] = {"folds": []}
    for metric in ("AP", "AP50"):
        xs, ys, gains = [], [], []
        for fold in dict.fromkeys((r["seed"], r["fold"]) for r in rows):
            rs = [r for r in rows if (r["seed"], r["fold"]) == fold]
            cal = np.array([r[f"{metric}_loss_calibration"] for r in rs])
            held = np.array([r[f"{metric}_loss_heldout"] for r in rs])
            xs.append(cal - cal.mean())
            ys.append(held - held.mean())
            gains.append(float(held[int(np.argmin(cal))] - held.mean()))
            if metric == "AP":
                out["folds"].append({"seed": fold[0], "fold": fold[1], "draws": len(rs)})
            out["folds"][len(gains) - 1][f"{metric}_heldout_mean"] = round(float(held.mean()), 3)
            out["folds"][len(gains) - 1][f"{metric}_heldout_std"] = round(
                float(held.std(ddof=1)), 3) if len(held) > 1 else 0.0
        x, y = np.concatenate(xs), np.concatenate(ys)
        out[f"{metric}_correlation"] = round(float(np.corrcoef(x, y)[0, 1]), 3) \
            if x.std() > 0 and y.std() > 0 else None
        out[f"{metric}_pick_gain"] = round(float(np.mean(gains)), 3)
    return out


def bench_draws(name: str, seeds: list[int], draws: int, say) -> dict:
    from darknet2tflite.int8.augment import mirror_augment
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.int8.channel_split import split_outlier_channels
    from darknet2tflite.evaluation.evaluate import _ap, detect, load_eval_images
    from darknet2tflite.tflite.export import convert
    from darknet2tflite.int8.quantize import QuantizeOptions
    from darknet2tflite.int8.ranges import calibrate_model, quantize_calibrated, refine_ranges
    from int8_noise import redraw
    from int8_splits import folds_for
    images = SHARED / "images" / "coco"
    annotations = images / "instances.json"
    cfg, meta, model, groups = int8_bench_model(name)
    fl = convert(model, mode="float32")
    opts = QuantizeOptions()
    rows = []
    for seed in seeds:
        folds = folds_for(seed, images, annotations, 2)
        every = sorted({str(p) for _, ev in folds for p in ev})
        for fi, (exclude, held) in enumerate(folds):
            held_set = {str(p) for p in held}
            own = [Path(p) for p in every if p not in held_set]
            arr = load_calibration(calibrate(cfg, images, None, 500, exclude=exclude,
                                             progress=None).npy)
            sets = {"calibration": load_eval_images(own, meta),
                    "heldout": load_eval_images(held, meta)}
            fscores = {s: _ap(meta, detect(tflite_heads(fl, model, meta, groups, b[0]), meta,
                                           b[2]), b[1], annotations) for s, b in sets.items()}
            split, _ = split_outlier_channels(model, arr, budget=opts.channel_split)
            calib = mirror_augment(arr, opts.calibration_mirror)
            refined, _ = refine_ranges(calibrate_model(split, calib), calib, opts.ranges)
            for k in range(draws):
                data = quantize_calibrated(redraw(refined, k))
                row: dict[str, Any] = {"model": name, "seed": seed, "fold": fi, "draw": k}
                for s, b in sets.items():
                    qa = _ap(meta, detect(tflite_heads(data, model, meta, groups, b[0]), meta,
                                          b[2]), b[1], annotations)
                    row[f"AP_loss_{s}"] = round(fscores[s]["AP"] - qa["AP"], 3)
                    row[f"AP50_loss_{s}"] = round(fscores[s]["AP50"] - qa["AP50"], 3)
                say(json.dumps(row))
                rows.append(row)
    return {"model": name, "mode": "draws", "seeds": seeds, "rows": rows,
            "summary": draw_summary(rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="yolov4-tiny")
    p.add_argument("--mode", default="weights,draws")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--bias-correction", action="store_true",
                   help="weights mode: also score every draw with the rounding offsets "
                   "removed from the biases")
    p.add_argument("--seeds", default="0,1", help="draws mode: 2-fold splits")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    modes = a.mode.split(",")
    if set(modes) - {"weights", "layers", "draws"} or a.draws < 2:
        p.error("--mode takes weights, layers and/or draws; --draws must be >= 2")
    if shared_photos_missing():
        return 2
    say = lambda m: print(m, flush=True)  # noqa: E731
    results = []
    for name in a.models.split(","):
        if "weights" in modes:
            results.append(bench_weights(name, a.draws, a.bias_correction, say))
        if "layers" in modes:
            results.append(bench_layers(name, say))
        if "draws" in modes:
            results.append(bench_draws(name, [int(s) for s in a.seeds.split(",")], a.draws,
                                       say))
    print()
    for r in results:
        if r["mode"] == "weights":
            for kind, s in r["summary"].items():
                if kind == "paired_change":
                    print(f"{r['model']:<12} weights, bias-corrected - plain: AP {s['AP']:+.2f} "
                          f"(se {s['AP_se']}), AP50 {s['AP50']:+.2f} (se {s['AP50_se']})")
                    continue
                print(f"{r['model']:<12} int8 weights only ({kind}, {s['draws']} draws): AP loss "
                      f"{s['AP_loss']['mean']:.2f} (std {s['AP_loss']['std']:.2f}), AP50 loss "
                      f"{s['AP50_loss']['mean']:.2f} (std {s['AP50_loss']['std']:.2f})")
        elif r["mode"] == "layers":
            top = sorted(r["rows"], key=lambda x: -x["wh_share"])[:8]
            print(f"{r['model']:<12} w/h error share of one layer's int8 weights (largest): "
                  + ", ".join(f"{x['layer']} {100 * x['wh_share']:.0f}%" for x in top))
            top = sorted(r["rows"], key=lambda x: -x["obj_share"])[:5]
            print(f"{r['model']:<12} objectness error share (largest): "
                  + ", ".join(f"{x['layer']} {100 * x['obj_share']:.0f}%" for x in top))
        else:
            s = r["summary"]
            for f in s["folds"]:
                print(f"{r['model']:<12} seed {f['seed']} fold {f['fold']}: held-out loss over "
                      f"{f['draws']} draws AP {f['AP_heldout_mean']:.2f} (std "
                      f"{f['AP_heldout_std']:.2f}), AP50 {f['AP50_heldout_mean']:.2f} (std "
                      f"{f['AP50_heldout_std']:.2f})")
            print(f"{r['model']:<12} held-out vs calibration-half loss, correlation within "
                  f"folds: AP {s['AP_correlation']}, AP50 {s['AP50_correlation']}; picking the "
                  f"best calibration-half draw changes held-out loss by AP {s['AP_pick_gain']:+.2f}, "
                  f"AP50 {s['AP50_pick_gain']:+.2f}")
    if a.json:
        save_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
