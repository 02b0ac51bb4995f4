"""quantize: calibrate on the image folder and convert the rewritten model to full-integer
int8 (mode "int8": model.int8.tflite, model.json, quantize.json, plan.json, optionally
model.int8-fallback.tflite) or to one extra variant (mode float16 / dynamic / int16x8:
model.<mode>.tflite), so the variants convert concurrently with the int8 model.

``fold=2`` is the swapped calibration fold (int8 only): when the evaluation photos are also
calibration photos, the shipped model (fold 1) is calibrated without one half and scored on
it; the fold-2 model is calibrated without the other half, so evaluate can score every
annotated photo with an int8 model that never saw it (quantize.plan_images)."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from prefect import task

from darknet2tflite.errors import UserError
from darknet2tflite.options import check as check_options, value

from ._common import TASK_OPTIONS, StoreCachePolicy, artifact, log, run_stage

STAGE = "quantize"
RANGES = "mse"
#: QuantizeOptions.box_rounding as this stage runs it; in the cache key too, so models
#: quantized before it existed recompute
BOX_ROUNDING = True
#: the convert options (options.py) an int8 conversion depends on: in its cache key and
#: its QuantizeOptions (backend: which route runs them)
INT8_OPTIONS = ("input_type", "float_fallback", "backend", "channel_split", "calibration_mirror")


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
    return inputs, options


def _plan_and_calibrate(cfg: str, calibration: str, eval_images: str | None,
                        eval_annotations: str | None, limit: int | None, npy: Path,
                        fold: int = 1):
    """(plan, calibration set) of ``fold``: 1 the shipped model's, 2 the swapped one's
    (its plan's "eval" are the photos it must score; calibration set None if there is no
    second fold, i.e. no evaluation photo is a calibration photo)."""
    from darknet2tflite.int8.calibration import calibrate
    from darknet2tflite.int8.planning import plan_images

    plan = plan_images(calibration, eval_images, eval_annotations)
    if fold != 1:
        folds = plan["cross"]
        if len(folds) < fold - 1:
            return dict(plan, eval=[], exclude=[], warnings=[]), None
        plan = dict(plan, **folds[fold - 2], warnings=[])
    for w in plan["warnings"]:
        log(f"warning: {w}")
    calib = calibrate(cfg, calibration, npy, limit, exclude=plan["exclude"], progress=log)
    return plan, calib


def has_cross_fold(calibration: str, eval_images: str | None,
                   eval_annotations: str | None) -> bool:
    """Whether a fold-2 model is worth converting: annotated evaluation photos that are
    also calibration photos (listing files only; input errors are left to the stage)."""
    from darknet2tflite.errors import UserError
    from darknet2tflite.int8.planning import plan_images

    if not (eval_images and eval_annotations):
        return False
    try:
        return bool(plan_images(calibration, eval_images, eval_annotations)["cross"])
    except UserError:
        return False


@contextmanager
def scratch(out: Path) -> Iterator[Path]:
    """Working space (the calibration array) inside the stage's own temp dir in the store:
    removed before the entry is published, and if the process is killed it goes with the
    stale temp dir (the store's gc_tmp), instead of piling up in /tmp."""
    d = out / ".scratch"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def quantize_int8_stage(p: Mapping[str, Any], out: Path) -> dict[str, Path]:
    from darknet2tflite.int8.backends.dispatch import quantize_with_backend
    from darknet2tflite.int8.quantize import QuantizeOptions

    backend = value(p, "backend")
    check_options({"backend": backend}, error=UserError)
    rw = p["rewrite"]
    fold = int(p.get("fold") or 1)
    paths: dict[str, Path] = {}
    with scratch(out) as td:
        plan, calib = _plan_and_calibrate(p["cfg"], p["calibration"], p.get("eval_images"),
                                          p.get("eval_annotations"), p.get("calibration_limit"),
                                          Path(td) / "calibration.npy", fold)
        if calib is not None:
            if fold != 1:
                log(f"cross-calibration fold {fold}: int8 model calibrated without the "
                    f"{len(plan['eval'])} photos it will score")
            opts = QuantizeOptions(**{k: value(p, k) for k in INT8_OPTIONS if k != "backend"},
                                   ranges=RANGES, box_rounding=BOX_ROUNDING)
            if fold != 1:
                # the fallback model and the per-layer debugger table (~8 s) are deliverables
                # of the shipped fold only: nothing reads the swapped fold's
                opts = replace(opts, float_fallback=0, debug_images=0)
            paths = quantize_with_backend(backend, artifact(rw, "keras"), calib.npy,
                                          artifact(rw, "meta"), out, opts, progress=log)
        else:
            log(f"fold {fold}: no evaluation photo is a calibration photo, nothing to convert")
    cal = calib.to_dict() if calib is not None else {"images": 0, "skipped": []}
    cal.pop("npy", None)
    (out / "plan.json").write_text(json.dumps({
        "eval": [str(x) for x in plan["eval"]], "exclude": [str(x) for x in plan["exclude"]],
        "warnings": plan["warnings"], "calibration": cal}, indent=1) + "\n", encoding="utf-8")
    return {**paths, "plan": out / "plan.json"}


def quantize_variant_stage(p: Mapping[str, Any], out: Path) -> dict[str, Path]:
    from darknet2tflite.int8.calibration import load_calibration, representative_dataset
    from darknet2tflite.tflite.export import convert, save_tflite
    from darknet2tflite.int8.quantize import load_keras, tflite_head_outputs

    mode, rw = p["mode"], p["rewrite"]
    meta = json.loads(Path(artifact(rw, "meta")).read_text(encoding="utf-8"))
    model = load_keras(artifact(rw, "keras"))
    groups = [h.get("outputs") or [h["output"]] for h in meta["heads"]]
    log(f"variant {mode}")
    with scratch(out) as td:
        rep = None
        if mode == "int16x8":
            _, calib = _plan_and_calibrate(p["cfg"], p["calibration"], p.get("eval_images"),
                                           p.get("eval_annotations"),
                                           p.get("calibration_limit"),
                                           Path(td) / "calibration.npy")
            rep = representative_dataset(load_calibration(calib.npy))
        data = convert(model, mode=mode, representative=rep)
    heads = tflite_head_outputs(data, model.output_names, groups)
    path = save_tflite(data, out / f"model.{mode}.tflite", dict(meta, head_outputs=heads))
    return {f"tflite_{mode}": path}


@task(name=STAGE, cache_policy=StoreCachePolicy(stage=STAGE, key_parts=key_parts),
      task_run_name="quantize-{mode}", **TASK_OPTIONS)
def quantize(cfg: str, rewrite: dict, calibration: str, mode: str = "int8",
             calibration_limit: int | None = 500, input_type: str = "uint8",
             float_fallback: int = 0, channel_split: float | None = None,
             calibration_mirror: int | None = None, backend: str = "direct", fold: int = 1,
             eval_images: str | None = None, eval_annotations: str | None = None,
             store: str | None = None, refresh: bool = False, require_cached: bool = False):
    p = locals()
    produce = (lambda tmp: quantize_int8_stage(p, tmp)) if mode == "int8" else \
        (lambda tmp: quantize_variant_stage(p, tmp))
    return run_stage(STAGE, store, *key_parts(p), produce, refresh=refresh,
                     require_cached=require_cached)
