"""int8 AP loss over several calibration splits, per conversion setting (outlier channel
splitting, mirrored calibration photos).

Why: on 86 photos the cross-calibrated AP loss of one 2-fold split moves by several tenths
with the split alone (docs/int8.md, "noise floor"), so one split cannot tell whether a
conversion change helps. This script repeats the 2-fold cross-calibration over ``--seeds``
different random halvings of the annotated photos (seed 0 = the product's own
``holdout_split``) and scores each conversion setting on all of them: every photo is scored
by an int8 model calibrated without it, float32 on the same photos.

Settings, every combination of ``--budgets``: the outlier channel split budget (extra MACs
as a fraction of the model's, darknet2tflite/int8/channel_split.py; 0 = off, 0.15 = the default),
``--mirrors``: calibration sets smaller than this also calibrate on a mirrored copy of each
photo (darknet2tflite/int8/augment.py; 0 = off, 50 = the default; every figure recorded here
calibrates on 43-86 photos, where the earlier setting 256, which completed sets up to 256
photos, also meant one copy of each) and ``--ranges``: the activation
range methods (quantize.refine_ranges; default: the product's) and ``--box-rounding``:
error-feedback rounding of the heads' box weights on and/or off (box_rounding.py; default
on, the product's; rows without the field were converted before it existed, i.e. off) and
``--equalize``: cross-layer range equalization on and/or off (equalize.py; rows without the
field: off).

``--draws R`` scores R int8 models per calibration that differ only in their rounding
pattern (ranges scaled by 1 + k*1e-6, bench/int8_noise.py) and takes the mean loss: one
model's AP on 43 photos moves by 0.3-0.5 AP50 with its rounding pattern alone
(bench/int8_floor.py), as much as most settings' effects.

``--baseline RUN.json`` (an earlier ``--json``) also prints each setting's loss change
against it split by split, with its standard error: the photos a split scores are the same
on both sides, so the split-to-split spread (as large as most effects) cancels.

Usage: .venv/bin/python bench/int8_splits.py [--models yolov4-tiny,yolov3-tiny]
       [--seeds 0,1,2] [--folds 2] [--budgets 0,0.15] [--mirrors 0,256] [--ranges mse,mse-tail]
       [--box-rounding on,off] [--draws 1]
       [--json bench/results/int8_splits.json] [--baseline bench/results/int8_splits_rangepass.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# same models, shared paths, folds and environment set-up (TF log level, repo on sys.path)
from accuracy import (  # noqa: E402
    SHARED, cross_folds, int8_bench_model, save_json, shared_photos_missing, tflite_heads)


def folds_for(seed: int, images: Path, annotations: Path, k: int = 2
              ) -> list[tuple[list, list]]:
    """(calibration exclude, evaluation) pairs of one k-fold split: each part is scored by
    a model calibrated on the other parts (k = 2: half the photos calibrate; k = 3: two
    thirds, closer to a model calibrated on all of them)."""
    import numpy as np
    folds = cross_folds(images, annotations)
    if seed == 0 and k == 2:
        return folds
    every = sorted({str(p) for _, ev in folds for p in ev})
    if k == 2:   # the layout the published 2-fold figures were measured with
        np.random.default_rng(seed).shuffle(every)
        half = len(every) // 2
        parts = [every[:half], every[half:]]
    else:        # k-fold partitions unrelated to the 2-fold ones of the same seed
        np.random.default_rng(100 + seed).shuffle(every)
        parts = [every[i::k] for i in range(k)]
    return [([Path(p) for p in part], [Path(p) for p in part]) for part in parts]


def bench(name: str, seeds: list[int], settings: list[tuple[float, int, str, bool, bool]], say,
          k: int = 2, draws: int = 1) -> list[dict]:
    import numpy as np
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.evaluation.evaluate import _ap, detect, load_eval_images
    from darknet2tflite.tflite.export import convert
    from darknet2tflite.int8.quantize import QuantizeOptions, int8_from_keras
    from darknet2tflite.int8.ranges import quantize_calibrated
    from int8_noise import redraw
    images = SHARED / "images" / "coco"
    annotations = images / "instances.json"
    cfg, meta, model, groups = int8_bench_model(name)
    fl = convert(model, mode="float32")
    rows = []
    for seed in seeds:
        folds = folds_for(seed, images, annotations, k)
        arrays = [load_calibration(calibrate(cfg, images, None, 500, exclude=ex,
                                             progress=None).npy) for ex, _ in folds]
        evals = [load_eval_images(ev, meta) for _, ev in folds]
        fdets, paths = [], []
        for batch, fp, sizes, _ in evals:
            fdets += detect(tflite_heads(fl, model, meta, groups, batch), meta, sizes)
            paths += fp
        fa = _ap(meta, fdets, paths, annotations)
        for budget, mirror, ranges, boxes, equal in settings:
            t0 = time.perf_counter()
            qdets: list[list] = [[] for _ in range(draws)]
            split: dict = {}
            for arr, (batch, fp, sizes, _) in zip(arrays, evals):
                data, refined, _, _, split, _ = int8_from_keras(model, arr, QuantizeOptions(
                    channel_split=budget, calibration_mirror=mirror, ranges=ranges,
                    box_rounding=boxes, equalize=equal, debug_images=0),
                    lambda _m: None)
                for d in range(draws):
                    if d:  # the same calibration, rounding pattern redrawn (int8_noise.py)
                        data = quantize_calibrated(redraw(refined, d))
                    qdets[d] += detect(tflite_heads(data, model, meta, groups, batch), meta,
                                       sizes)
            scores = [_ap(meta, q, paths, annotations) for q in qdets]
            qa = {m: float(np.mean([s[m] for s in scores])) for m in ("AP", "AP50")}
            qa["AP_by_size"] = {size: (None if any(s["AP_by_size"][size] is None for s in scores)
                                       else float(np.mean([s["AP_by_size"][size]
                                                           for s in scores])))
                                for size in scores[0]["AP_by_size"]}
            row = {"model": name, "seed": seed, "folds": k, "budget": budget, "mirror": mirror,
                   "ranges": ranges, "box_rounding": boxes, "equalize": equal,
                   "images": len(paths),
                   "float_AP": fa["AP"], "float_AP50": fa["AP50"],
                   "int8_AP": qa["AP"], "int8_AP50": qa["AP50"],
                   "dAP": round(qa["AP"] - fa["AP"], 3), "dAP50": round(qa["AP50"] - fa["AP50"], 3),
                   "draws": draws,
                   "dAP_draws": [round(x["AP"] - fa["AP"], 3) for x in scores],
                   "dAP50_draws": [round(x["AP50"] - fa["AP50"], 3) for x in scores],
                   "dAP_by_size": {k: (None if fa["AP_by_size"][k] is None
                                       or qa["AP_by_size"][k] is None else
                                       round(qa["AP_by_size"][k] - fa["AP_by_size"][k], 3))
                                   for k in fa["AP_by_size"]},
                   "split_layers": {k: v["channels"] for k, v in split.get("layers", {}).items()},
                   "extra_mac_fraction": split.get("extra_mac_fraction", 0.0),
                   "seconds": round(time.perf_counter() - t0, 1)}
            say(json.dumps(row))
            rows.append(row)
    return rows


def _setting(r: dict) -> tuple:
    """(budget, mirror, ranges, box rounding) of a row or summary entry (older rows lack the
    last three; rows before box rounding existed were converted without it)."""
    return (r["budget"], r.get("mirror", 0), r.get("ranges", "mse"), r.get("box_rounding", False),
            r.get("equalize", False))


def summary(rows: list[dict]) -> list[dict]:
    import numpy as np
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for setting in dict.fromkeys(_setting(r) for r in rows):
            rs = [r for r in rows if r["model"] == model and _setting(r) == setting]
            if rs:
                out.append({"model": model, "budget": setting[0], "mirror": setting[1],
                            "ranges": setting[2], "box_rounding": setting[3],
                            "equalize": setting[4],
                            "splits": len(rs),
                            "mean_AP_loss": round(-float(np.mean([r["dAP"] for r in rs])), 3),
                            "mean_AP50_loss": round(-float(np.mean([r["dAP50"] for r in rs])), 3),
                            "AP_losses": [-r["dAP"] for r in rs],
                            "AP50_losses": [-r["dAP50"] for r in rs]})
                sized = [r["dAP_by_size"] for r in rs if r.get("dAP_by_size")]
                if sized:  # rows of runs before the per-size figures have none
                    out[-1]["mean_AP_loss_by_size"] = {
                        k: round(-float(np.mean([d[k] for d in sized if d[k] is not None])), 3)
                        for k in sized[0] if any(d[k] is not None for d in sized)}
    return out


def paired(rows: list[dict], baseline: list[dict]) -> list[dict]:
    """Per model and setting of ``rows``: the loss differences against ``baseline`` (rows of
    an earlier --json run) on the same splits (model, folds, seed), i.e. the photos each int8
    model is scored on are the same on both sides and the split-to-split spread cancels.
    Positive = the new setting loses more. The baseline must hold one setting per model."""
    import numpy as np
    out = []
    for s in summary(rows):
        base = [b for b in baseline if b["model"] == s["model"]]
        settings = {_setting(b) for b in base}
        if len(settings) > 1:
            raise ValueError(f"baseline has {len(settings)} settings for {s['model']}; "
                             "pass a run with one")
        by_split = {(b.get("folds", 2), b["seed"]): b for b in base}
        mine = [r for r in rows if r["model"] == s["model"] and _setting(r) == _setting(s)]
        pairs = [(r, by_split[(r.get("folds", 2), r["seed"])]) for r in mine
                 if (r.get("folds", 2), r["seed"]) in by_split]
        if not pairs:
            continue
        row = {"model": s["model"], "budget": s["budget"], "mirror": s["mirror"],
               "ranges": s["ranges"], "box_rounding": s["box_rounding"],
               "equalize": s["equalize"], "pairs": len(pairs)}
        for name in ("AP", "AP50"):
            d = np.array([b["d" + name] - r["d" + name] for r, b in pairs])  # new - base loss
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            row.update({f"{name}_loss_change": round(float(d.mean()), 3),
                        f"{name}_se": round(se, 3), f"{name}_better": int((d < 0).sum())})
        out.append(row)
    return out


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="yolov4-tiny,yolov3-tiny")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", type=int, default=2, help="k of the k-fold split (>= 2)")
    ap.add_argument("--budgets", default="0,0.15")
    ap.add_argument("--mirrors", default="0,256")
    ap.add_argument("--ranges", default=None, help="comma list of range methods "
                    "(default: the product's)")
    ap.add_argument("--box-rounding", default=None,
                    help="comma list of on/off: error-feedback rounding of the heads' box "
                    "weights (box_rounding.py; default: the product's)")
    ap.add_argument("--equalize", default=None,
                    help="comma list of on/off: cross-layer range equalization (equalize.py; "
                    "default: the product's)")
    ap.add_argument("--draws", type=int, default=1,
                    help="int8 models per calibration, differing only in their rounding "
                    "pattern (ranges scaled by 1 + k*1e-6, as in int8_noise.py); a row's loss "
                    "is their mean, which halves the rounding luck at 4 draws")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="an earlier --json run (one setting per model): also print the paired "
                    "loss change per setting, split by split")
    a = ap.parse_args(argv)
    if a.folds < 2 or a.draws < 1:
        ap.error("--folds must be >= 2 and --draws >= 1")
    if shared_photos_missing():
        return 2
    base_rows = None
    if a.baseline is not None:
        try:
            base_rows = json.loads(a.baseline.read_text(encoding="utf-8"))["rows"]
        except (OSError, ValueError, KeyError) as e:
            print(f"--baseline {a.baseline}: not an int8_splits --json run ({e})",
                  file=sys.stderr)
            return 2
    seeds = [int(s) for s in a.seeds.split(",")]
    from darknet2tflite.int8.quantize import QuantizeOptions
    methods = (a.ranges or QuantizeOptions().ranges).split(",")
    box_spec = (a.box_rounding or _onoff(QuantizeOptions().box_rounding)).split(",")
    if set(box_spec) - {"on", "off"}:
        ap.error("--box-rounding takes on and/or off")
    boxes = [v == "on" for v in box_spec]
    eq_spec = (a.equalize or _onoff(QuantizeOptions().equalize)).split(",")
    if set(eq_spec) - {"on", "off"}:
        ap.error("--equalize takes on and/or off")
    settings = [(float(b), int(m), r, x, e == "on") for b in a.budgets.split(",")
                for m in a.mirrors.split(",") for r in methods for x in boxes for e in eq_spec]
    rows = []
    for name in a.models.split(","):
        rows += bench(name, seeds, settings, lambda m: print(m, flush=True), a.folds, a.draws)
    summ = summary(rows)
    print("\nmodel        budget  mirror  ranges    boxes  equal  splits  mean AP loss  mean AP50 loss  "
          "per split (AP / AP50)")
    for s in summ:
        per = ", ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(s["AP_losses"], s["AP50_losses"]))
        print(f"{s['model']:<12} {s['budget']:<7} {s['mirror']:<7} {s['ranges']:<9} "
              f"{_onoff(s['box_rounding']):<6} {_onoff(s['equalize']):<6} {s['splits']:<7} "
              f"{s['mean_AP_loss']:<13} {s['mean_AP50_loss']:<15} {per}")
        if s.get("mean_AP_loss_by_size"):
            print(" " * 13 + "mean AP loss by object size: " + ", ".join(
                f"{k} {v:.2f}" for k, v in s["mean_AP_loss_by_size"].items()))
    doc = {"rows": rows, "summary": summ}
    if base_rows is not None:
        doc["paired"] = paired(rows, base_rows)
        print(f"\npaired with {a.baseline} (loss change, new - baseline; standard error; "
              "splits where the new setting loses less)")
        for p in doc["paired"]:
            print(f"{p['model']:<12} {p['budget']:<7} {p['mirror']:<7} {p['ranges']:<9} "
                  f"{_onoff(p['box_rounding']):<6} {_onoff(p['equalize']):<6} AP {p['AP_loss_change']:+.3f} (se {p['AP_se']:.3f}, "
                  f"{p['AP_better']}/{p['pairs']})  AP50 {p['AP50_loss_change']:+.3f} "
                  f"(se {p['AP50_se']:.3f}, {p['AP50_better']}/{p['pairs']})")
    if a.json:
        save_json(a.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
