"""evaluate: float32 vs int8 (and variants) on the held-out / evaluation images -> report.json
(conversion facts + evaluation: head SQNR, AP/AP50 with annotations, sizes, latency; with
``cross``, the swapped calibration fold's int8 model, AP over both folds; the per-layer
QuantizationDebugger ranking from quantize's calibrated model and debug photos) and
side-by-side detection images."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, artifact, log, run_stage
from darknet2tflite.stages.evaluate import DRAW, LATENCY_RUNS, evaluate_stage

STAGE = "evaluate"


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    q, rw = p["quantize"], p["rewrite"]
    inputs = {"cfg": p["cfg"], "float32": artifact(rw, "tflite_float32"),
              "int8": artifact(q, "tflite_int8"), "meta": artifact(q, "meta"),
              "quantize": artifact(q, "quantize"), "plan": artifact(q, "plan"),
              "calibrated": artifact(q, "tflite_calibrated"),
              "debug_images": artifact(q, "debug_images"),
              "fallback": artifact(q, "tflite_int8_fallback"),
              "backends": artifact(q, "backends"),
              "int8_direct": artifact(q, "tflite_int8_direct"),
              "int8_onnx2tf": artifact(q, "tflite_int8_onnx2tf"),
              "calibration": p.get("calibration"), "eval_images": p.get("eval_images"),
              "eval_annotations": p.get("eval_annotations")}
    for v, vp in sorted((p.get("variants") or {}).items()):
        inputs[f"variant_{v}"] = artifact(vp, f"tflite_{v}")
    if artifact(p.get("cross"), "tflite_int8"):
        inputs.update(cross_int8=artifact(p["cross"], "tflite_int8"),
                      cross_plan=artifact(p["cross"], "plan"))
    return inputs, {"latency_runs": LATENCY_RUNS, "draw": DRAW}


@task(name=STAGE, **TASK_OPTIONS)
def evaluate(cfg: str, quantize: dict, rewrite: dict, variants: dict | None = None,
             cross: dict | None = None,
             calibration: str | None = None, eval_images: str | None = None,
             eval_annotations: str | None = None, store: str | None = None,
             refresh: bool = False, require_cached: bool = False):
    p = locals()
    return run_stage(STAGE, store, *key_parts(p), lambda tmp: evaluate_stage(p, tmp, log),
                     refresh=refresh, require_cached=require_cached)
