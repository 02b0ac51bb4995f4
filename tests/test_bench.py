"""bench/run.py keeps its published interface (issue 8): one real, reduced benchmark run.

Only the JSON's structure and the run semantics are checked (every stage Cached on the second
run, the quantize rerun recomputing nothing earlier); the figures themselves are never
asserted: they are the benchmark's output, not a test's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared_path

STAGES = ("parse", "build", "parity", "probe", "rewrite", "quantize", "evaluate", "report")


@pytest.mark.slow
def test_bench_run_writes_the_documented_json(tmp_path: Path) -> None:
    shared_path("images", "coco", "instances.json")
    shared_path("darknet", "weights", "yolov3-tiny.weights")
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--models", "yolov3-tiny",
         "--isolate", "none", "--latency-runs", "3", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== Totals" in proc.stdout  # the printed table

    doc = json.loads(out.read_text())
    m = doc["models"]["yolov3-tiny"]
    for k in ("cold_s", "cached_s", "quantize_rerun_s"):
        assert isinstance(m[k], (int, float)) and m[k] > 0, k
    assert set(m["stages"]) == set(STAGES)
    for s, row in m["stages"].items():
        assert row["cold_s"] >= 0 and row["peak_rss_mb"] > 0, s
    for kind in ("float32", "int8"):
        assert set(m["latency_ms"][kind]) == {"1", "2"}
        assert all(v > 0 for v in m["latency_ms"][kind].values())
        assert m["size_mb"][kind] > 0
    # semantics behind the figures: a cached run computes nothing, a quantize rerun nothing
    # before quantize
    assert set(m["cached"]["states"].values()) == {"Cached"} and m["cached"]["produced"] == []
    rerun = m["quantize_rerun"]
    assert all(rerun["states"][s] == "Cached" for s in STAGES[:5])
    assert not set(rerun["produced"]) & set(STAGES[:5])
    assert "orchestration" in doc and "targets" in doc
