"""Which photos calibrate and which are scored (held-out split, the swapped calibration fold)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


from darknet2tflite.errors import InputError


def _existing(path: str | Path | None, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    return p


def plan_images(calibration_dir: str | Path, eval_images: str | Path | None,
                eval_annotations: str | Path | None, eval_fraction: float = 0.5,
                seed: int = 0) -> dict[str, Any]:
    """Which images calibrate and which evaluate; raises InputError before any work.

    Images present in both sets are split deterministically (calibration.holdout_split)
    so the int8 model is never evaluated on its own calibration images. Without explicit
    evaluation images a smaller hold-out of the calibration folder (20 %, at most 50)
    serves for the SQNR numbers."""
    from darknet2tflite.int8.calibration import calibration_images, holdout_split
    from darknet2tflite.evaluation.evaluate import eval_image_list
    calib_all = calibration_images(calibration_dir, limit=None, seed=seed)
    warnings: list[str] = []
    if eval_images is None:
        if eval_annotations is not None:
            raise InputError("evaluation annotations need evaluation images (eval_images)")
        n = len(calib_all)
        if n < 2:
            return {"exclude": [], "eval": list(calib_all), "cross": [], "warnings": [
                "only one calibration image: evaluated on the calibration image itself"]}
        frac = min(0.2, 50 / n) if n > 5 else 1 / n
        _, held = holdout_split(calib_all, frac, seed)
        return {"exclude": held, "eval": held, "cross": [], "warnings": warnings}
    paths, warnings = eval_image_list(eval_images, eval_annotations)
    real_cal = {os.path.realpath(p) for p in calib_all}
    overlap = [p for p in paths if os.path.realpath(p) in real_cal]
    if not overlap:
        return {"exclude": [], "eval": paths, "cross": [], "warnings": warnings}
    if len(overlap) == len(calib_all) and len(calib_all) < 2:
        raise InputError("the only calibration image is also the only evaluation image; "
                         "give more images or a separate evaluation folder")
    _, held = holdout_split(overlap, eval_fraction, seed)
    held_real = {os.path.realpath(p) for p in held}
    evals = [p for p in paths if os.path.realpath(p) not in real_cal
             or os.path.realpath(p) in held_real]
    rest = [p for p in overlap if os.path.realpath(p) not in held_real]
    warnings.append(f"{len(overlap)} evaluation image(s) are also calibration images: "
                    f"{len(held)} held out from calibration for evaluation, "
                    f"{len(rest)} used for calibration only")
    return {"exclude": held, "eval": evals, "warnings": warnings,
            # the swapped fold: calibrate without ``rest``, evaluate on ``rest``
            "cross": [{"exclude": rest, "eval": rest}] if rest else []}
