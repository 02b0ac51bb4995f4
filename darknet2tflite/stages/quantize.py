"""quantize stage: calibrate on the image folder and convert the rewritten model to full-integer int8 (model.int8.tflite, model.json, quantize.json, plan.json; the calibrated float model and debug photos the evaluate stage ranks layers with; optionally model.int8-fallback.tflite), or to one extra variant (float16 / dynamic / int16x8: model.<mode>.tflite)."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping


from darknet2tflite.errors import UserError
from darknet2tflite.options import check as check_options, value

from darknet2tflite.stages.payload import artifact, Progress, quiet
RANGES = "mse"
#: QuantizeOptions.box_rounding as this stage runs it (in the cache key too)
BOX_ROUNDING = True
#: the convert options (options.py) an int8 conversion depends on: in its cache key and
#: its QuantizeOptions (backend: which route runs them)
INT8_OPTIONS = ("input_type", "float_fallback", "backend", "channel_split", "equalize",
                "calibration_mirror")


def _plan_and_calibrate(cfg: str, calibration: str, eval_images: str | None,
                        eval_annotations: str | None, limit: int | None, npy: Path,
                        fold: int = 1, plan: dict[str, Any] | None = None,
                        progress: Progress = quiet):
    """(plan, calibration set) of ``fold``: 1 the shipped model's, 2 the swapped one's
    (its plan's "eval" are the photos it must score; calibration set None if there is no
    second fold, i.e. no evaluation photo is a calibration photo)."""
    from darknet2tflite.int8.calibration import calibrate
    from darknet2tflite.int8.planning import plan_images

    if plan is None:  # not planned by the caller (the flow plans once per run)
        plan = plan_images(calibration, eval_images, eval_annotations)
    if fold != 1:
        folds = plan["cross"]
        if len(folds) < fold - 1:
            return dict(plan, eval=[], exclude=[], warnings=[]), None
        plan = dict(plan, **folds[fold - 2], warnings=[])
    for w in plan["warnings"]:
        progress(f"warning: {w}")
    calib = calibrate(cfg, calibration, npy, limit, exclude=plan["exclude"], progress=progress)
    return plan, calib


def plan_run(calibration: str, eval_images: str | None,
             eval_annotations: str | None) -> dict[str, Any] | None:
    """The run's plan (int8.planning.plan_images: which photos calibrate, which are scored,
    the swapped fold), worked out once by the flow and handed to every quantize task.  None
    when the inputs are wrong: the quantize stage then plans itself and reports the error
    (listing files only; nothing is read here)."""
    from darknet2tflite.int8.planning import plan_images
    try:
        return plan_images(calibration, eval_images, eval_annotations)
    except UserError:
        return None


def has_cross_fold(plan: dict[str, Any] | None, eval_images: str | None,
                   eval_annotations: str | None) -> bool:
    """Whether a fold-2 model is worth converting: annotated evaluation photos that are
    also calibration photos."""
    return bool(eval_images and eval_annotations and plan and plan["cross"])


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


def quantize_int8_stage(p: Mapping[str, Any], out: Path, progress: Progress = quiet
                        ) -> dict[str, Path]:
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
                                          Path(td) / "calibration.npy", fold, p.get("plan"),
                                          progress)
        if calib is not None:
            if fold != 1:
                progress(f"cross-calibration fold {fold}: int8 model calibrated without the "
                    f"{len(plan['eval'])} photos it will score")
            opts = QuantizeOptions(**{k: value(p, k) for k in INT8_OPTIONS if k != "backend"},
                                   ranges=RANGES, box_rounding=BOX_ROUNDING)
            if fold != 1:
                # the fallback model and the per-layer debugger table are deliverables of
                # the shipped fold only: nothing reads the swapped fold's
                opts = replace(opts, float_fallback=0, debug_images=0)
            paths = quantize_with_backend(backend, artifact(rw, "keras"), calib.npy,
                                          artifact(rw, "meta"), out, opts, progress=progress)
        else:
            progress(f"fold {fold}: no evaluation photo is a calibration photo, nothing to convert")
    cal = calib.to_dict() if calib is not None else {"images": 0, "skipped": []}
    cal.pop("npy", None)
    (out / "plan.json").write_text(json.dumps({
        "eval": [str(x) for x in plan["eval"]], "exclude": [str(x) for x in plan["exclude"]],
        "warnings": plan["warnings"], "calibration": cal}, indent=1) + "\n", encoding="utf-8")
    return {**paths, "plan": out / "plan.json"}


def quantize_variant_stage(p: Mapping[str, Any], out: Path, progress: Progress = quiet
                           ) -> dict[str, Path]:
    from darknet2tflite.int8.calibration import load_calibration, representative_dataset
    from darknet2tflite.tflite.export import convert, save_tflite
    from darknet2tflite.int8.quantize import tflite_head_outputs
    from darknet2tflite.model.load import load_keras

    mode, rw = p["mode"], p["rewrite"]
    meta = json.loads(Path(artifact(rw, "meta")).read_text(encoding="utf-8"))
    model = load_keras(artifact(rw, "keras"))
    groups = [h.get("outputs") or [h["output"]] for h in meta["heads"]]
    progress(f"variant {mode}")
    with scratch(out) as td:
        rep = None
        if mode == "int16x8":
            _, calib = _plan_and_calibrate(p["cfg"], p["calibration"], p.get("eval_images"),
                                           p.get("eval_annotations"),
                                           p.get("calibration_limit"),
                                           Path(td) / "calibration.npy", 1, p.get("plan"),
                                           progress)
            rep = representative_dataset(load_calibration(calib.npy))
        data = convert(model, mode=mode, representative=rep)
    heads = tflite_head_outputs(data, model.output_names, groups)
    path = save_tflite(data, out / f"model.{mode}.tflite", dict(meta, head_outputs=heads))
    return {f"tflite_{mode}": path}
