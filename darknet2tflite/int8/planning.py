"""Which photos calibrate and which are scored (held-out split, the swapped calibration fold)."""
from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Any

from darknet2tflite.errors import InputError

#: recent plans by (inputs, listing fingerprint): one conversion plans once, though the
#: CLI's checks, the flow's checks and the flow's plan_run all ask for it
_MEMO: dict[tuple[Any, ...], dict[str, Any]] = {}
_MEMO_SIZE = 16
_memo_lock = threading.Lock()
#: how many plans this process actually worked out (a diagnostic for the tests)
computed = 0


def _listing(calibration_dir: str | Path, eval_images: str | Path | None,
             eval_annotations: str | Path | None) -> tuple[Any, ...] | None:
    """What a plan depends on besides its arguments: the image files of both folders (with
    where they really are: overlap is decided on real paths) and the annotation file's
    identity (size, mtime, inode).  None when an input is missing or not a plain folder /
    file: then nothing is remembered and plan_images reports the problem."""
    from darknet2tflite.images import image_walk
    walks = []
    for folder in (calibration_dir, eval_images):
        if folder is None:
            walks.append(None)
            continue
        if not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(folder):
            return None
        walks.append(tuple((str(p), os.path.realpath(p)) for p in image_walk(folder).files))
    ann = None
    if eval_annotations is not None:
        try:
            st = os.stat(eval_annotations)
        except OSError:
            return None
        ann = (os.path.realpath(eval_annotations), st.st_size, st.st_mtime_ns, st.st_ino,
               st.st_dev)
    return (*walks, ann)


def plan_images(calibration_dir: str | Path, eval_images: str | Path | None,
                eval_annotations: str | Path | None, eval_fraction: float = 0.5,
                seed: int = 0) -> dict[str, Any]:
    """Which images calibrate and which evaluate; raises InputError before any work.

    Remembered per process for the same arguments and the same folder listings (a file
    added, removed or renamed, or a changed annotation file, plans again), so the checks
    before a run and the run itself share one plan.

    Images present in both sets are split deterministically (calibration.holdout_split)
    so the int8 model is never evaluated on its own calibration images. Without explicit
    evaluation images a smaller hold-out of the calibration folder (20 %, at most 50)
    serves for the SQNR numbers."""
    listing = _listing(calibration_dir, eval_images, eval_annotations)
    key = (str(calibration_dir), None if eval_images is None else str(eval_images),
           None if eval_annotations is None else str(eval_annotations), eval_fraction, seed,
           listing)
    with _memo_lock:
        hit = _MEMO.get(key) if listing is not None else None
    if hit is not None:
        return copy.deepcopy(hit)
    plan = _plan(calibration_dir, eval_images, eval_annotations, eval_fraction, seed)
    global computed
    with _memo_lock:
        computed += 1
        if listing is not None:
            while len(_MEMO) >= _MEMO_SIZE:
                _MEMO.pop(next(iter(_MEMO)))
            _MEMO[key] = copy.deepcopy(plan)
    return plan


def _plan(calibration_dir: str | Path, eval_images: str | Path | None,
          eval_annotations: str | Path | None, eval_fraction: float, seed: int
          ) -> dict[str, Any]:
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
