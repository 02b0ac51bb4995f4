"""What the target checks share: C++ diagnostics captured from stderr, LiteRT's reference
kernels as the arithmetic every microcontroller / NPU target is compared against, and
raw (quantized) model inputs."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator, Sequence

import numpy as np

from darknet2tflite.tflite.interpreter import interpreter


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """fd-level capture: TFLite Micro and LiteRT report why they refuse a model (missing
    kernel, dtype at Prepare, arena too small) on C++ stderr, not in the exception."""
    lines: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(ln.strip() for ln in tmp.read().decode("utf-8", "replace")
                         .splitlines() if ln.strip())


def first_reason(lines: Sequence[str], fallback: str) -> str:
    """The informative line of a C++ error dump (the first one naming an op or kernel)."""
    for ln in lines:
        if any(w in ln for w in ("Didn't find op", "not supported", "Type ", "failed to prepare",
                                 "was not true")):
            return ln[:300]
    return (lines[0] if lines else fallback)[:300]


def run_reference(model: bytes, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Raw outputs (model output order) per input, with the reference kernels."""
    it = interpreter(model, threads=None, kernels="reference")
    ind = it.get_input_details()[0]
    outs = it.get_output_details()
    res = []
    for x in inputs:
        it.set_tensor(ind["index"], x)
        it.invoke()
        res.append([it.get_tensor(d["index"]).copy() for d in outs])
    return res


def quantized_inputs(model: bytes, batch: np.ndarray) -> list[np.ndarray]:
    """float32 NHWC pixels/255 -> the model's raw input tensors (uint8/int8), as
    export.run_tflite feeds them."""
    it = interpreter(model, threads=None, kernels="reference")
    d = it.get_input_details()[0]
    if d["dtype"] == np.float32:
        return [img[None].astype(np.float32) for img in batch]
    scale, zp = d["quantization"]
    info = np.iinfo(d["dtype"])
    return [np.clip(np.round(img[None] / scale + zp), info.min, info.max).astype(d["dtype"])
            for img in batch]


def step_difference(a: Sequence[Sequence[np.ndarray]], b: Sequence[Sequence[np.ndarray]]
                    ) -> tuple[int, float]:
    """(max |a - b| in quantization steps, fraction of output elements that differ)."""
    worst, diff, total = 0, 0, 0
    for xa, xb in zip(a, b):
        for ya, yb in zip(xa, xb):
            d = np.abs(ya.astype(np.int64) - yb.astype(np.int64))
            worst = max(worst, int(d.max()) if d.size else 0)
            diff += int(np.count_nonzero(d))
            total += d.size
    return worst, (diff / total if total else 0.0)
