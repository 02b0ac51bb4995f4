"""Probe-stage cost vs model depth: yolov4-tiny (38 layers) vs yolov4 (162 layers).

Runs the probe stage function (tasks/probe.py:probe_stage, exactly what the flow runs) once
per model after a warm-up, and prints seconds and the ratio. Figures are printed, never
asserted. Usage: .venv/bin/python bench/probe_scaling.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.darknet.fetch import fetch_weights
    from darknet2tflite.darknet.weights import random_weights, write_weights
    from darknet2tflite.stages.probe import probe_stage

    with tempfile.TemporaryDirectory() as tmp:
        tiny = fetch_weights("yolov4-tiny", ROOT / "weights", progress=lambda m: None)
        cfg4 = parse_cfg(ROOT / "cfg" / "yolov4.cfg")
        w4 = Path(tmp) / "yolov4.weights"
        write_weights(w4, cfg4, random_weights(cfg4, 0))
        runs = [("warm-up", ROOT / "cfg" / "yolov4-tiny.cfg", tiny),
                ("yolov4-tiny", ROOT / "cfg" / "yolov4-tiny.cfg", tiny),
                ("yolov4", ROOT / "cfg" / "yolov4.cfg", w4)]
        secs = {}
        for name, cfg, weights in runs:
            with tempfile.TemporaryDirectory(dir=tmp) as d:
                t = time.perf_counter()
                probe_stage(str(cfg), str(weights), Path(d))
                secs[name] = time.perf_counter() - t
        print(f"probe yolov4-tiny (38 layers): {secs['yolov4-tiny']:.2f} s")
        print(f"probe yolov4 (162 layers):     {secs['yolov4']:.2f} s")
        print(f"ratio: {secs['yolov4'] / secs['yolov4-tiny']:.2f}x (target < 3x)")


if __name__ == "__main__":
    main()
