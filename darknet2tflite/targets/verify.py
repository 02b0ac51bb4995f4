"""Verify the final int8 model on every requested target with the target's own tool, and
score it with the arithmetic the target runs.

Why a second accuracy figure: LiteRT's default interpreter (XNNPACK) rounds int8 differently
from TFLite's reference kernels (up to ~24 steps on yolov4-tiny), and TFLite Micro and the
Ethos-U NPUs follow the reference kernels. The evaluate stage's AP is the desktop's; this
one is the device's. Both are measured on the same evaluation images.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


from . import TargetError, parse_targets, verified_targets
from ._runtime import quantized_inputs, run_reference

#: images the device runs are compared on (TFLite Micro runs a yolov4-tiny image in seconds)
COMPARE_IMAGES = 8


def reference_accuracy(int8_tflite: Path, float_tflite: Path | None, meta: Mapping[str, Any],
                       paths: Sequence[Path], annotations: str | None,
                       progress: Callable[[str], None]) -> dict[str, Any]:
    """AP/AP50 (with annotations) and head SQNR/cosine against float, of the int8 model
    run with the reference kernels: what a TFLite Micro or Ethos-U device scores."""
    from darknet2tflite.evaluation.evaluate import _ap, detect, file_meta, head_errors, load_eval_images, run_model
    from darknet2tflite.tflite.export import run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    m = file_meta(int8_tflite, meta)
    batch, kept, sizes, _ = load_eval_images(list(paths), meta)
    t0 = time.perf_counter()
    heads = run_tflite(interpreter(int8_tflite, threads=None, kernels="reference"), batch, m)
    doc: dict[str, Any] = {"arithmetic": "reference", "images": len(kept),
                           "seconds_per_image": round((time.perf_counter() - t0)
                                                      / max(1, len(kept)), 3)}
    if float_tflite is not None:
        ref = run_model(float_tflite, batch, file_meta(float_tflite, meta))
        rows = head_errors(ref, heads, meta)
        doc["min_head_sqnr_db"] = min(r["sqnr_db"] for r in rows)
        doc["min_head_cosine"] = min(r["cosine"] for r in rows)
    if annotations:
        progress(f"verify: COCO AP with the reference kernels on {len(kept)} images")
        ap = _ap(meta, detect(heads, meta, sizes), kept, annotations)
        doc.update(AP=ap["AP"], AP50=ap["AP50"])
        xnn = run_model(int8_tflite, batch, m)
        ax = _ap(meta, detect(xnn, meta, sizes), kept, annotations)
        doc["xnnpack"] = {"AP": ax["AP"], "AP50": ax["AP50"]}
    return doc


def verify_targets(targets: str | Sequence[str], int8_tflite: str | Path,
                   meta: Mapping[str, Any], eval_paths: Sequence[str | Path], out_dir: str | Path,
                   *, float_tflite: str | Path | None = None,
                   annotations: str | None = None, npu_only: bool = False,
                   compare_images: int = COMPARE_IMAGES,
                   progress: Callable[[str], None] = print) -> dict[str, Any]:
    """{"targets": [per-target result], "accuracy_reference": {...}} for every non-cpu
    target in ``targets``; compiled models (Ethos-U) are written into ``out_dir``."""
    from darknet2tflite.evaluation.evaluate import load_eval_images
    from darknet2tflite.tflite.names import output_layer_map
    out = Path(out_dir)
    model = Path(int8_tflite).read_bytes()
    wanted = parse_targets(verified_targets(targets))
    paths = [Path(p) for p in eval_paths]
    batch, kept, _, _ = load_eval_images(paths[:compare_images], meta)
    inputs = quantized_inputs(model, batch)
    t0 = time.perf_counter()
    reference = run_reference(model, inputs)
    t_ref = time.perf_counter() - t0
    output_layers = output_layer_map(meta, meta.get("head_outputs") or
                                     [[h.get("tflite_output", h["output"])]
                                      for h in meta["heads"]])
    results = []
    for t in wanted:
        progress(f"verify: {t.name} with {t.tool()['name']} {t.tool()['version']}")
        t1 = time.perf_counter()
        kw = {"output_layers": output_layers} if t.name.startswith("ethos-u") else {}
        r = t.verify(model, inputs, out, reference, **kw)
        r = {"target": t.name, "tool": t.tool(), "arithmetic": t.arithmetic,
             "images_compared": [p.name for p in kept], **r,
             "seconds": round(time.perf_counter() - t1, 2)}
        results.append(r)
    doc: dict[str, Any] = {"targets": results, "seconds_reference_run": round(t_ref, 2)}
    if any(t.arithmetic == "reference" for t in wanted):
        t1 = time.perf_counter()
        doc["accuracy_reference"] = reference_accuracy(
            Path(int8_tflite), Path(float_tflite) if float_tflite else None, meta, paths,
            annotations, progress)
        doc["accuracy_reference"]["seconds"] = round(time.perf_counter() - t1, 2)
    if npu_only:
        bad = [r for r in results if r.get("ops_cpu")]
        if bad:
            r = bad[0]
            layers = sorted({i for c in r["cpu_ops"] for i in c["layers"]})
            raise TargetError(
                f"--npu-only: {r['target']} leaves {r['ops_cpu']} operator(s) on the CPU ("
                + ", ".join(sorted({c['op'] for c in r['cpu_ops']}))
                + (f"; Darknet layers {', '.join(map(str, layers))}" if layers else "") + ")")
    return doc
