"""The convert flow with --backend both: direct and onnx2tf int8 models, the
winner shipped as model.int8.tflite, the other beside it, backends.json and the comparison
in the report. One real yolov3-tiny run (split heads) against a Prefect test server."""
from __future__ import annotations

import json
import shutil
import time

import pytest

# (Prefect's home is a per-session temp dir: tests/conftest.py)

from conftest import CFG_DIR, shared_path  # noqa: E402


@pytest.mark.slow
def test_convert_backend_both_ships_winner_and_keeps_both(prefect_server, yolov3_tiny,
                                                          tmp_path):
    import flows  # noqa: F401  (Prefect env defaults)
    from cli.main import main
    from darknet2tflite.evaluation.evaluate import file_meta
    from darknet2tflite.tflite.export import run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    from darknet2tflite.tflite.inspect import check_integer

    cfg, weights = yolov3_tiny
    photos = sorted(shared_path("images", "coco").glob("*.jpg"))
    calib, ev = tmp_path / "calib", tmp_path / "eval"
    for folder, chosen in ((calib, photos[:8]), (ev, photos[8:10])):
        folder.mkdir()
        for p in chosen:
            shutil.copyfile(p, folder / p.name)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    rc = main(["--debug", "convert", str(cfg), str(weights), "--out", str(out), "--calibration",
               str(calib), "--eval-images", str(ev), "--calibration-limit", "8",
               "--names", str(CFG_DIR / "coco.names"), "--backend", "both",
               "--store", str(tmp_path / "store")])
    print(f"convert --backend both: {time.perf_counter() - t0:.1f} s")
    assert rc == 0

    data = (out / "model.int8.tflite").read_bytes()
    assert check_integer(data, "uint8")["full_integer"] is True
    b = json.loads((out / "backends.json").read_text())
    assert b["winner"] in ("direct", "onnx2tf") and b["reason"] and b["decided_by"]
    assert b["direct"]["status"] == "ok" and b["onnx2tf"]["status"] == "ok", b
    loser = "onnx2tf" if b["winner"] == "direct" else "direct"
    other = out / f"model.int8.{loser}.tflite"
    assert other.is_file()
    assert check_integer(other.read_bytes(), "uint8")["full_integer"] is True
    assert (out / "model.onnx").is_file()
    assert json.loads((out / "onnx_parity.json").read_text())["max_rel"] <= 1e-4
    # both int8 files run through the shipped model.json (split heads mapped per file)
    meta = json.loads((out / "model.json").read_text())
    import numpy as np
    x = np.random.default_rng(0).random((1, 416, 416, 3), dtype=np.float32)
    for f in (out / "model.int8.tflite", other):
        heads = run_tflite(interpreter(f.read_bytes()), x, file_meta(f, meta))
        assert [h.shape[1:3] for h in heads] == [tuple(h["grid"]) for h in meta["heads"]]
    md = (out / "report.md").read_text()
    assert "## Int8 backends" in md and f"**{b['winner']}**" in md and "| float ops |" in md
    report = json.loads((out / "report.json").read_text())
    assert report["backends"]["winner"] == b["winner"]
    assert f"int8-{loser}" in report["evaluation"]["sizes"]
