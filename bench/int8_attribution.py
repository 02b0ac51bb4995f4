"""Where does the int8 error of the heads come from?  (analysis, prints only)

Calibrates yolov4-tiny exactly as the pipeline does (head split, MSE ranges) on one half of
the shared COCO photos and measures, on the other half, the RMS error of objectness and w/h
logits at the cells that matter (float objectness > 0.05, where detections come from; AP@[.5:.95]
reacts to these two, see docs/int8.md):

* the shipped int8 model;
* the same model with one Darknet layer at a time left float (converter denylist): the share of
  the objectness / w/h squared error that layer's quantization causes;
* int16 activations with int8 weights (16x8) and int8 weights with float activations
  (dynamic range: activations quantized per invocation, conv outputs float), which split the
  error into its weight and activation parts.

Usage: .venv/bin/python bench/int8_attribution.py [--model yolov4-tiny|yolov3-tiny] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import head_errors  # noqa: E402  (the head error the int8 benches share)

SHARED = REPO.parent / "shared"
MODELS = {"yolov4-tiny": ("darknet/cfg/yolov4-tiny.cfg", "darknet/weights/yolov4-tiny.weights"),
          "yolov3-tiny": ("darknet/cfg/yolov3-tiny.mask123.cfg",
                          "darknet/weights/yolov3-tiny.weights")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="yolov4-tiny", choices=sorted(MODELS))
    ap.add_argument("--images", default=str(SHARED / "images" / "coco"))
    ap.add_argument("--annotations", default=str(SHARED / "images" / "coco" / "instances.json"))
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.int8.calibration import calibrate, load_calibration, representative_dataset
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.evaluation.evaluate import load_eval_images
    from darknet2tflite.tflite.export import convert, head_groups, run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    from darknet2tflite.darknet.metadata import decode_metadata
    from darknet2tflite.int8.ranges import calibrate_model, calibrated_ranges, quantize_calibrated, refine_ranges
    from darknet2tflite.int8.quantize import int8_rules, tflite_head_outputs
    from darknet2tflite.tflite.names import layer_of_tensor, layer_tensors, output_layer_map
    from darknet2tflite.int8.planning import plan_images
    from darknet2tflite.darknet.weights import read_weights

    cfg_path, w_path = (SHARED / p for p in MODELS[args.model])
    cfg = parse_cfg(cfg_path)
    meta = decode_metadata(cfg, None)
    plan = plan_images(args.images, args.images, args.annotations)
    calib = load_calibration(calibrate(cfg, args.images, None, 500, exclude=plan["exclude"],
                                       progress=None).npy)
    batch, *_ = load_eval_images(plan["eval"], meta)
    print(f"{args.model}: calibrated on {len(calib)} photos, measured on {len(batch)} others",
          flush=True)
    model, _ = build_keras(cfg, read_weights(w_path, cfg), int8_rules())
    groups = head_groups(model, meta)

    def heads(data: bytes) -> list:
        m = dict(meta, head_outputs=tflite_head_outputs(data, model.output_names, groups))
        return run_tflite(interpreter(data, 2), batch, m)

    ref = heads(convert(model, mode="float32"))

    def errors(data: bytes) -> dict[str, float]:
        """Squared error summed over heads: objectness and w/h logits at relevant cells."""
        obj, wh = head_errors(meta, ref, heads(data))
        return {"obj_mse": obj, "wh_mse": wh}

    calibrated = calibrate_model(model, calib)
    refined, _ = refine_ranges(calibrated, calib)  # the product's method
    omap = output_layer_map(meta, tflite_head_outputs(refined, model.output_names, groups))
    base = errors(quantize_calibrated(refined, "uint8"))
    doc: dict = {"model": args.model, "int8": base, "layers": [], "variants": {}}
    print(f"int8: objectness MSE {base['obj_mse']:.4f}, w/h MSE {base['wh_mse']:.5f} "
          "(summed over heads)", flush=True)
    print(f"{'layer':>5s} {'section':14s} {'act':8s} {'obj share':>9s} {'wh share':>8s}")
    layers = sorted({layer_of_tensor(n, omap) for n in calibrated_ranges(refined)} - {None})
    for idx in layers:
        sec = cfg.layers[idx]
        if sec.kind in ("route", "maxpool", "upsample"):  # share their input's scale
            continue
        e = errors(quantize_calibrated(refined, "uint8", layer_tensors(refined, [idx], omap)))
        row = {"layer": idx, "section": sec.kind, "activation": sec.params.get("activation"),
               "obj_share": round(1 - e["obj_mse"] / base["obj_mse"], 3),
               "wh_share": round(1 - e["wh_mse"] / base["wh_mse"], 3)}
        doc["layers"].append(row)
        print(f"{idx:5d} {sec.kind:14s} {str(row['activation']):8s} "
              f"{100 * row['obj_share']:8.1f}% {100 * row['wh_share']:7.1f}%", flush=True)
    for name, data in (("int16 activations, int8 weights (16x8)",
                        convert(model, mode="int16x8",
                                representative=representative_dataset(calib))),
                       ("int8 weights, activations quantized per invocation (dynamic range)",
                        convert(model, mode="dynamic"))):
        e = errors(data)
        doc["variants"][name] = e
        print(f"{name}: objectness MSE {e['obj_mse']:.4f} "
              f"({100 * e['obj_mse'] / base['obj_mse']:.0f}% of int8), w/h MSE "
              f"{e['wh_mse']:.5f} ({100 * e['wh_mse'] / base['wh_mse']:.0f}%)", flush=True)
    if args.json:
        from darknet2tflite.store.atomic import atomic_write_bytes
        atomic_write_bytes(args.json, (json.dumps(doc, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
