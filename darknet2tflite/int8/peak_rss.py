"""Peak resident memory of this process during a conversion step."""
from __future__ import annotations

import threading
from typing import Any




# --------------------------------------------------------------------------- memory

class PeakRSS:
    """Peak resident set size of THIS process, sampled every ``interval`` s while active.

    What it measures: process-wide RSS (TensorFlow runtime, the model, the calibration
    array and the converter's buffers), so ``peak_mb`` is an upper bound on what the
    conversion needs and ``delta_mb`` = peak - RSS at start is what it added. Sampling can
    miss a spike shorter than the interval."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRSS":
        import psutil
        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    def to_dict(self) -> dict[str, Any]:
        return {"peak_mb": round(self.peak / 2**20, 1), "start_mb": round(self.start / 2**20, 1),
                "delta_mb": round((self.peak - self.start) / 2**20, 1),
                "method": f"psutil RSS of the converting process sampled every "
                          f"{self.interval * 1000:.0f} ms (process-wide: includes the "
                          "TensorFlow runtime and the calibration array)"}
