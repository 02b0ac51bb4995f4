"""quantize: calibrate on the image folder and convert the rewritten model to full-integer
int8 (mode "int8": model.int8.tflite, model.json, quantize.json, plan.json, optionally
model.int8-fallback.tflite) or to one extra variant (mode float16 / dynamic / int16x8:
model.<mode>.tflite), so the variants convert concurrently with the int8 model.

``fold=2`` is the swapped calibration fold (int8 only): when the evaluation photos are also
calibration photos, the shipped model (fold 1) is calibrated without one half and scored on
it; the fold-2 model is calibrated without the other half, so evaluate can score every
annotated photo with an int8 model that never saw it (quantize.plan_images)."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from darknet2tflite.options import value

from ._common import TASK_OPTIONS, artifact, log, run_stage
from darknet2tflite.stages.quantize import (
    BOX_ROUNDING, INT8_OPTIONS, RANGES, quantize_int8_stage, quantize_variant_stage)

STAGE = "quantize"


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    rw = p["rewrite"]
    mode = p.get("mode") or "int8"
    inputs = {"cfg": p["cfg"], "keras": artifact(rw, "keras"), "meta": artifact(rw, "meta")}
    options: dict[str, Any] = {"mode": mode}
    if int(p.get("fold") or 1) != 1:
        options["fold"] = int(p["fold"])
    if mode in ("int8", "int16x8"):
        # which images calibrate depends on the evaluation set too (held-out split)
        inputs.update(calibration=p["calibration"], eval_images=p.get("eval_images"),
                      eval_annotations=p.get("eval_annotations"))
        options.update(calibration_limit=value(p, "calibration_limit"))
    if mode == "int8":
        from darknet2tflite.int8.box_rounding import SCARCITY  # the damping rule: small sets change
        options.update({k: value(p, k) for k in INT8_OPTIONS})
        options.update(ranges=RANGES, box_rounding=BOX_ROUNDING, box_scarcity=SCARCITY)
        if value(p, "equalize"):  # keys of conversions without it stay as they were
            from darknet2tflite.int8.equalize import ALPHAS, MAX_ERROR_RATIO
            options.update(equalize=[list(ALPHAS), MAX_ERROR_RATIO])
        else:
            options.pop("equalize", None)
    return inputs, options


@task(name=STAGE, task_run_name="quantize-{mode}", **TASK_OPTIONS)
def quantize(cfg: str, rewrite: dict, calibration: str, mode: str = "int8",
             calibration_limit: int | None = 500, input_type: str = "uint8",
             float_fallback: int = 0, channel_split: float | None = None,
             equalize: bool = False,
             calibration_mirror: int | None = None, backend: str = "direct", fold: int = 1,
             eval_images: str | None = None, eval_annotations: str | None = None,
             plan: dict | None = None,
             store: str | None = None, refresh: bool = False, require_cached: bool = False):
    p = locals()
    body = quantize_int8_stage if mode == "int8" else quantize_variant_stage
    produce = lambda tmp: body(p, tmp, log)  # noqa: E731
    return run_stage(STAGE, store, *key_parts(p), produce, refresh=refresh,
                     require_cached=require_cached)
