"""Calibrated full-integer int8 TFLite conversion: the direct backend (TFLiteConverter).

Steps (each a function, so the stage bodies and the benchmarks can reuse them; 2-4 live in
int8/ranges.py, 5 in tflite/inspect.py):

1. :func:`build_int8_model` -- the Keras model with every default (exact) rewrite plus the
   ``head_split`` rule: each head leaves the model as several outputs (per anchor
   ``box | obj+classes``), each with its own int8 scale. Box w/h go through exp(), so
   they need a fine step that they cannot get when they share a scale with class logits.
2. :func:`calibrate_model` -- TFLite's own calibrator (``_experimental_calibrate_only``, the
   hook ``tf.lite.experimental.QuantizationDebugger`` uses) marks the tensors that need
   ranges, on one image; :func:`observe_ranges` then records each one's min/max over all
   calibration images with a plain interpreter, ~5x faster than the calibrator, and in
   the same pass each one's histogram.
3. :func:`refine_ranges` -- replaces the min/max ranges by clipping ranges computed from
   those per-tensor histograms, and pins the input range to exactly [0, 1].
   Min/max ranges are dominated by rare outliers (a leaky-ReLU conv output spans e.g.
   [-52, 42] while almost all values lie within a few units), which wastes most of the 256
   levels. The default ``ranges="mse"`` takes the MSE-optimal clipping range; measured on
   yolov4-tiny it halves the AP loss. ``"mse-tail"`` (upper clip only halfway from the MSE
   optimum to the calibrated maximum) recovers ~0.7 AP50 when the scored photos also
   calibrated, but not on held-out photos, so it is a bench option, not the default
   (docs/int8.md, "Activation ranges"). The float model is untouched: only quantization
   parameters change.
4. :func:`quantize_calibrated` -- TFLite's MLIR quantizer (per-channel weights, int8
   activations, uint8 or int8 input, int8 outputs), optionally keeping named layers float.
5. :func:`check_integer` -- walks the written flatbuffer: no float tensor on any operator
   and input/output types as promised, else :class:`NotFullyIntegerError`.

Input quantization: with the input range pinned to [0, 1] the converter derives scale
1/255 and zero point 0 (uint8) or -128 (int8), so raw 0..255 pixels go straight in; this
is verified on every converted model (:func:`input_quantization`).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from darknet2tflite.int8.augment import mirrored_count
from darknet2tflite.errors import InputError, UserError
from darknet2tflite.model.load import load_keras
from darknet2tflite.options import BY_NAME, check as check_options
from darknet2tflite.int8.peak_rss import PeakRSS
from darknet2tflite.int8.passes import PassLog
from darknet2tflite.int8.ranges import Progress, quantize_calibrated, refine_ranges
from darknet2tflite.tflite.inspect import check_integer
from darknet2tflite.tflite.names import layer_tensors, output_layer_map
from darknet2tflite.int8.result import QuantizeResult


@dataclass
class QuantizeOptions:
    input_type: str = BY_NAME["input_type"].default  # "uint8" (raw pixels) or "int8"
    ranges: str = "mse"                  # options.RANGE_METHODS (refine_ranges)
    variants: tuple[str, ...] = ()       # any of options.VARIANTS
    float_fallback: int = BY_NAME["float_fallback"].default  # keep the N worst layers float
    calibration_limit: int | None = None  # use only the first N images of the array
    #: images for the QuantizationDebugger layer table; its cost is per image (yolov4-tiny:
    #: 6.5 s for 16, 3.2 s for 8) and 8 name the same five worst layers as 16 there
    debug_images: int = 8
    #: extra MACs allowed for outlier channel splitting (channel_split.py); 0 turns it off
    channel_split: float = BY_NAME["channel_split"].default
    #: calibration sets of fewer photos also calibrate on their mirrored copies (augment.py)
    calibration_mirror: int = BY_NAME["calibration_mirror"].default
    #: round the heads' box weights with error feedback (box_rounding.py)
    box_rounding: bool = True
    #: equalize outlier channel ranges into the consumers' weights (equalize.py) instead of
    #: splitting channels: with it the channel split does not run
    equalize: bool = BY_NAME["equalize"].default

    def validate(self) -> None:
        check_options(asdict(self))


# --------------------------------------------------------------------------- model build

def int8_rules(layout: str | None = None) -> list[Any]:
    """Every default (non-opt-in, exact) rewrite plus the head split."""
    from darknet2tflite.rewrites import load_rules
    from darknet2tflite.rewrites.head_split import DEFAULT_LAYOUT, RULE, make_rule
    registry = load_rules()
    rules = [r for r in registry.values() if not r.opt_in]
    split = RULE if layout in (None, DEFAULT_LAYOUT) else make_rule(layout, f"head_split_{layout}")
    return rules + [split]


def tflite_head_outputs(data: bytes | str | Path, keras_outputs: Sequence[str],
                        groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """The .tflite output tensor names of each head's outputs (interpreter order is not
    Keras order; resolved through the signature)."""
    from darknet2tflite.tflite.export import head_tensor_names
    from darknet2tflite.tflite.interpreter import interpreter
    it = interpreter(data)
    return [head_tensor_names(it, list(keras_outputs), list(g)) for g in groups]


def build_int8_model(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                     names_path: str | Path | None = None, rules: Sequence[Any] | None = None,
                     progress: Progress = print) -> dict[str, Path]:
    """model.keras, model.float32.tflite and model.json of the head-split model."""
    from darknet2tflite.stages.build import build_stage
    try:
        return build_stage(cfg_path, weights_path, out_dir, names_path,
                           int8_rules() if rules is None else rules, progress=progress)
    except UserError as e:
        raise InputError(str(e)) from None


def int8_from_keras(model: Any, images: np.ndarray, opts: QuantizeOptions,
                    progress: Progress = print, passes: PassLog | None = None
                    ) -> tuple[bytes, bytes, dict[str, Any], dict[str, Any], dict[str, Any],
                               dict[str, Any]]:
    """Equalize channel ranges, split outlier channels (if budgeted), round the box weights,
    calibrate (on ``images`` and, for sets below ``opts.calibration_mirror``, their mirrored
    copies), refine ranges, quantize and verify: (int8 model, refined calibrated model, range
    table, integer check, channel split report, box rounding report). Each pass over the
    photos is recorded in ``passes``."""
    from darknet2tflite.int8.augment import mirror_augment
    from darknet2tflite.int8.box_rounding import STAT_IMAGES as BOX_IMAGES, round_box_weights
    from darknet2tflite.int8.channel_split import STAT_IMAGES as SPLIT_IMAGES
    from darknet2tflite.int8.channel_split import split_outlier_channels
    from darknet2tflite.int8.equalize import STAT_IMAGES as EQ_IMAGES, equalize_ranges
    from darknet2tflite.int8.ranges import (
        ANNOTATE_IMAGES, HIST_MAX_IMAGES, annotate_for_calibration, observe_ranges)
    log = passes if passes is not None else PassLog()
    n = len(images)
    t0 = time.perf_counter()
    if opts.equalize:
        with log.timed("range equalization statistics", min(n, EQ_IMAGES)):
            model, eq = equalize_ranges(model, images, progress=progress)
        log.transforms["equalize"] = eq.to_dict()
    if opts.channel_split > 0 and not opts.equalize:  # alternatives: the split would undo
        with log.timed("channel split statistics", min(n, SPLIT_IMAGES)):
            model, split = split_outlier_channels(model, images, budget=opts.channel_split,
                                                  progress=progress)
    else:
        model, split = split_outlier_channels(model, images, budget=0.0)
    boxes: dict[str, Any] = {}
    # equalization moved range into its consumers' weights: they are rounded with error
    # feedback too, which takes back much of the weight precision it cost them
    consumers = [c for v in log.transforms.get("equalize", {}).get("layers", {}).values()
                 for c in v["consumers"]]
    if opts.box_rounding or consumers:  # after the split: box convs read its copied channels
        with log.timed("error-feedback rounding statistics", min(n, BOX_IMAGES)):
            model, box_report = round_box_weights(model, images, progress=progress,
                                                  extra=consumers, boxes=opts.box_rounding)
        boxes = box_report.to_dict()
    mirrored = mirrored_count(n, opts.calibration_mirror)
    progress(f"int8: calibrating on {n} images" + (f" + {mirrored} mirrored" if mirrored else ""))
    images = mirror_augment(images, opts.calibration_mirror)
    if not len(images):
        raise InputError("no calibration images")
    with log.timed("calibrator: which tensors need ranges", min(len(images), ANNOTATE_IMAGES)):
        annotated = annotate_for_calibration(model, images[:ANNOTATE_IMAGES])
    hist_images = min(len(images), HIST_MAX_IMAGES) if opts.ranges != "minmax" else 0
    with log.timed("min/max ranges and histograms" if hist_images else "min/max ranges",
                   len(images)):
        observed = observe_ranges(annotated, images, progress, hist_images=hist_images)
    log.floor_s_per_image = observed.invoke_s_per_image
    progress(f"int8: calibrated in {time.perf_counter() - t0:.1f}s")
    refined, table = refine_ranges(observed.model, images, opts.ranges, progress, hist_images,
                                   observed.hists)
    data = quantize_calibrated(refined, opts.input_type)
    return data, refined, table, check_integer(data, opts.input_type), split.to_dict(), boxes


def quantize(keras_path: str | Path, calib_npy: str | Path, meta_path: str | Path,
             out_dir: str | Path, options: QuantizeOptions | None = None,
             progress: Progress = print) -> QuantizeResult:
    """model.int8.tflite (+ variants, + model.int8-fallback.tflite) and an updated
    model.json in ``out_dir``; the int8 model is verified full-integer before it is written.
    Also writes quantize.json (timings, memory, ranges, per-layer errors)."""
    from darknet2tflite.int8.calibration import load_calibration, representative_dataset
    from darknet2tflite.tflite.export import convert, save_tflite
    from darknet2tflite.darknet.metadata import write_json

    opts = options or QuantizeOptions()
    opts.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    images = load_calibration(calib_npy)
    if opts.calibration_limit:
        images = images[:opts.calibration_limit]
    model = load_keras(keras_path)
    groups = [h.get("outputs") or [h["output"]] for h in meta["heads"]]

    t0 = time.perf_counter()
    passes = PassLog()
    with PeakRSS() as mem:
        data, refined, table, check, split, boxes = int8_from_keras(model, images, opts,
                                                                    progress, passes)
    seconds = time.perf_counter() - t0
    progress(f"int8: full-integer model in {seconds:.1f}s "
             f"({sum(check['ops'].values())} ops, peak RSS {mem.peak / 2**20:.0f} MB)")

    heads_int8 = tflite_head_outputs(data, model.output_names, groups)
    by_file = dict(meta.get("head_outputs_by_file") or {})
    by_file["model.int8.tflite"] = heads_int8
    paths: dict[str, Path] = {}
    imeta = dict(meta, head_outputs=heads_int8, quantization={
        "input_type": opts.input_type, "ranges": opts.ranges, "calibration_images": len(images),
        "mirrored_images": mirrored_count(len(images), opts.calibration_mirror),
        "channel_split": {k: v["channels"] for k, v in split["layers"].items()},
        "equalized": sorted((passes.transforms.get("equalize") or {}).get("layers", {})),
        "box_rounding": sorted(boxes.get("layers", {}))})
    paths["tflite_int8"] = save_tflite(data, out / "model.int8.tflite", imeta)

    layer_errs: list[dict[str, Any]] = []
    debugger: dict[str, Any] = {}
    debug_paths: dict[str, Path] = {}
    fallback = None
    if opts.debug_images or opts.float_fallback:
        from darknet2tflite.int8.debugger import DEBUG_PASS, layer_errors, save_debug_inputs
        cal_out_map = output_layer_map(meta, tflite_head_outputs(
            refined, model.output_names, groups))
        debug = images[:max(opts.debug_images, 4)]
        if opts.float_fallback:  # the fallback's layers are the ranking's worst: needed now
            progress("int8: QuantizationDebugger per-layer error")
            with passes.timed(DEBUG_PASS, len(debug)):
                layer_errs = layer_errors(refined, debug, cal_out_map)
        else:  # a report table, not part of the model: the evaluate stage runs it
            debug_paths, debugger = save_debug_inputs(refined, debug, cal_out_map, out)
    if opts.float_fallback:
        worst = []
        for row in layer_errs:
            if row["layer"] is not None and row["layer"] not in worst:
                worst.append(row["layer"])
            if len(worst) == opts.float_fallback:
                break
        deny = layer_tensors(refined, worst, cal_out_map)
        progress(f"int8: float fallback for Darknet layers {worst}")
        fb = quantize_calibrated(refined, opts.input_type, deny)
        fcheck = check_integer(fb, opts.input_type, allow_float_layers=deny)
        fb_heads = tflite_head_outputs(fb, model.output_names, groups)
        by_file["model.int8-fallback.tflite"] = fb_heads
        paths["tflite_int8_fallback"] = save_tflite(
            fb, out / "model.int8-fallback.tflite",
            dict(meta, head_outputs=fb_heads, float_layers=worst))
        fallback = {"layers": worst, "tensors": deny, "check": fcheck}

    variants: dict[str, Any] = {}
    for v in opts.variants:
        progress(f"variant {v}")
        tv = time.perf_counter()
        vd = convert(model, mode=v, representative=representative_dataset(images)
                     if v == "int16x8" else None)
        vh = tflite_head_outputs(vd, model.output_names, groups)
        fname = f"model.{v}.tflite"
        by_file[fname] = vh
        paths[f"tflite_{v}"] = save_tflite(vd, out / fname, dict(meta, head_outputs=vh))
        variants[v] = {"file": fname, "seconds": round(time.perf_counter() - tv, 2)}

    meta["head_outputs"] = heads_int8
    meta["head_outputs_by_file"] = by_file
    meta["quantization"] = imeta["quantization"]
    write_json(out / "model.json", meta)
    paths["meta"] = out / "model.json"
    result = QuantizeResult(paths, round(seconds, 2), mem.to_dict(), check, table, layer_errs,
                            fallback, variants, split, imeta["quantization"]["mirrored_images"],
                            opts.ranges, boxes, passes.transforms.get("equalize", {}),
                            passes.to_dict(passes.floor_s_per_image, len(images)), debugger)
    write_json(out / "quantize.json", result.to_dict())  # names the deliverables beside it
    paths.update(debug_paths, quantize=out / "quantize.json")  # store artifacts, for evaluate
    return result
