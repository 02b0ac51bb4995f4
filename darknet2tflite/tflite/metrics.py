"""How close and how fast a TFLite model is: SQNR against a reference, median invoke latency."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np



# --------------------------------------------------------------------------- numerics

def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = float(((got.astype(np.float64) - ref) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def latency_ms(tflite: str | Path | bytes, threads: int = 1, runs: int = 20, warmup: int = 3
               ) -> float:
    """Median wall time of ``invoke`` on a fixed input (XNNPACK default delegate on)."""
    from darknet2tflite.tflite.interpreter import interpreter
    it = interpreter(tflite, threads=threads)
    d = it.get_input_details()[0]
    x = np.zeros(d["shape"], d["dtype"])
    it.set_tensor(d["index"], x)
    for _ in range(warmup):
        it.invoke()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t) * 1000.0)
    return round(statistics.median(times), 3)
