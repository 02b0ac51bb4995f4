"""bench/run.py keeps its published interface: one real, reduced benchmark run.

Only the JSON's structure and the run semantics are checked (every stage Cached on the second
run, the quantize rerun recomputing nothing earlier); the figures themselves are never
asserted: they are the benchmark's output, not a test's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
         "--isolate", "none", "--latency-runs", "3", "--photos", "6", "--keep",
         "--peers", "shipped,plain,onnx2tf",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== Totals" in proc.stdout  # the printed table

    doc = json.loads(out.read_text())
    try:
        _check_run(doc, proc.stdout)
    finally:
        shutil.rmtree(doc.get("work_folder") or tmp_path / "none", ignore_errors=True)


def _check_run(doc: dict, stdout: str) -> None:
    m = doc["models"]["yolov3-tiny"]
    for k in ("cold_s", "cached_s", "quantize_rerun_s"):
        assert isinstance(m[k], (int, float)) and m[k] > 0, k
    # --photos 6: six photos in a folder of their own, nothing to score AP on
    assert doc["settings"]["photos"] == 6 and m["settings"]["eval_annotations"] is None
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
    passes = m["passes"]  # the shipped conversion's passes over the calibration photos
    assert passes["passes"] and passes["floor"]["seconds"] > 0 and passes["passes_over_floor"] > 1
    _check_peers(m, stdout)


def _check_peers(m: dict, stdout: str) -> None:
    """The peers block: shipped, plain and onnx2tf measured side by side; the plain and
    onnx2tf files really converted (valid int8 TFLite, uint8 input, on the shipped model's
    calibration photos), all three scored on the same held-out photo (real weights, COCO
    annotations) and timed in one process."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    peers = m["peers"]
    assert set(peers) == {"shipped", "plain", "onnx2tf"}
    assert "== Peers" in stdout
    setup = m["peers_setup"]
    assert setup["annotations"] and setup["images"] >= 1
    for name, row in peers.items():
        assert not row.get("error"), (name, row.get("error"))
        for k in ("latency_ms_1thread", "latency_ms_2threads", "convert_s", "size_bytes"):
            assert isinstance(row[k], (int, float)) and row[k] > 0, (name, k)
        if row.get("xnnpack_error"):  # LiteRT's default delegate refuses the file: timed on
            # the builtin kernels, and left out of evaluate() (which runs XNNPACK)
            assert row["latency_delegate"].startswith("builtin kernels"), name
            assert row["AP"] is None and "XNNPACK" in row["score_error"], name
        else:
            assert row["latency_delegate"] == "xnnpack", name
            for k in ("AP", "AP50"):
                assert isinstance(row[k], float), (name, k)
        spread = row["latency_spread_ms"]["1"]
        assert spread["min"] <= row["latency_ms_1thread"] <= spread["max"]
        assert Path(row["path"]).stat().st_size == row["size_bytes"]
        it = Interpreter(model_path=row["path"], experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))  # XNNPACK may refuse plain
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, 416, 416, 3], name
        assert {np.dtype(d["dtype"]).name for d in it.get_output_details()} == {"int8"}, name
    for name in ("plain", "onnx2tf"):
        assert peers[name]["steps"]["same_calibration_photos"], name
        assert Path(peers[name]["path"]).name == f"peer-{name}.int8.tflite"
    # every peer is full integer (plain: with the probe's exact rules), as the shipped model
    assert all(peers[p]["full_integer"] for p in ("shipped", "plain", "onnx2tf"))


def test_int8_splits_pairs_a_setting_with_its_baseline_split_by_split() -> None:
    """bench/int8_splits.py --baseline: differences are taken on the same splits (model,
    folds, seed), so one unlucky split moves both sides; a baseline with two settings for a
    model is refused rather than silently mixed."""
    sys.path.insert(0, str(REPO / "bench"))
    from int8_splits import paired

    def row(model, seed, dap, dap50, ranges="mse", folds=2):
        return {"model": model, "seed": seed, "folds": folds, "budget": 0.15, "mirror": 256,
                "ranges": ranges, "dAP": dap, "dAP50": dap50}

    base = [row("m", 0, -1.0, -0.5), row("m", 1, -0.2, -0.1), row("m", 2, -0.6, 0.0),
            row("m", 0, -9.0, -9.0, folds=3)]
    new = [row("m", 0, -0.8, -0.7, "x"), row("m", 1, -0.4, -0.1, "x"),
           row("m", 2, -0.3, 0.2, "x"), row("m", 5, -5.0, -5.0, "x")]
    (p,) = paired(new, base)
    assert p["pairs"] == 3 and p["ranges"] == "x"  # seed 5 has no partner, folds=3 differs
    # loss change = loss(new) - loss(base) = dAP(base) - dAP(new), per split, then averaged
    diffs = np.array([-0.2, 0.2, -0.3])
    assert p["AP_loss_change"] == pytest.approx(diffs.mean(), abs=1e-3)
    assert p["AP_se"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(3), abs=1e-3)
    assert p["AP_better"] == 2 and p["AP50_better"] == 1
    with pytest.raises(ValueError, match="2 settings"):
        paired(new, base + [row("m", 0, -1.0, -0.5, "other")])


def _small_convs(seed: int = 0):
    """A float Keras model with a plain, a grouped and a depthwise convolution whose weights
    have very unequal channel ranges (the case per-channel scales exist for)."""
    import keras
    rng = np.random.default_rng(seed)
    x = inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="plain")(x)
    x = keras.layers.LeakyReLU(0.1)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", groups=2, name="grouped")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(x)
    model = keras.Model(inp, x)
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            k = rng.normal(size=w[0].shape) * rng.uniform(0.05, 3.0, size=w[0].shape[-1])
            layer.set_weights([k.astype(np.float32), rng.normal(size=w[1].shape)
                               .astype(np.float32)])
    return model


def test_int8_floor_rounds_weights_exactly_as_the_converter_does() -> None:
    """bench/int8_floor.py's weight floor is only a floor if its rounding is the converter's:
    every int8 kernel TFLite writes (plain, grouped, depthwise) equals ours."""
    sys.path.insert(0, str(REPO / "bench"))
    from int8_floor import _kernel_axes, rounding_error

    from darknet2tflite.tflite.export import convert
    from darknet2tflite.tflite.interpreter import interpreter
    model = _small_convs()
    rng = np.random.default_rng(1)
    data = convert(model, mode="int8", representative=lambda: (
        [rng.uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)] for _ in range(4)))
    it = interpreter(data)
    kernels = {}
    for d in it.get_tensor_details():
        if d["dtype"] == np.int8 and len(d["shape"]) == 4 and \
                len(d["quantization_parameters"]["scales"]) > 1:
            kernels[tuple(d["shape"])] = (it.get_tensor(d["index"]).astype(np.float32),
                                  d["quantization_parameters"]["scales"])
    checked = 0
    for layer in model.layers:
        axes = _kernel_axes(layer)
        if axes is None:
            continue
        k = layer.get_weights()[0]
        ours = k + rounding_error(k, axes)
        # TFLite layouts: conv (cout, kh, kw, cin); depthwise (1, kh, kw, cin * mult)
        layout = (lambda a: a.transpose(3, 0, 1, 2)) if len(axes) == 3 else \
            (lambda a: a.reshape(1, *a.shape[:2], -1))
        want = layout(ours)
        q, scales = kernels[want.shape]   # the three kernels' shapes differ
        shape = (-1, 1, 1, 1) if len(axes) == 3 else (1, 1, 1, -1)
        got = q * scales.reshape(shape).astype(np.float32)
        step = np.abs(k).max() / 127
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-3 * step, layer.name
        assert np.abs(got - layout(k)).max() > 0.1 * step   # and it did round
        checked += 1
    assert checked == 3


def test_int8_floor_bias_correction_removes_the_mean_rounding_offset() -> None:
    """The first convolution's output with rounded weights and corrected bias has the float
    output's per-channel mean on the statistics images; without the correction it does not."""
    sys.path.insert(0, str(REPO / "bench"))
    import keras
    from int8_floor import round_weights
    images = np.random.default_rng(2).uniform(0, 1, (6, 16, 16, 3)).astype(np.float32)
    means = {}
    for corrected in (False, True):
        model = _small_convs()
        first = keras.Model(model.inputs, model.get_layer("plain").output)
        before = np.asarray(first(images)).mean(axis=(0, 1, 2))
        round_weights(model, stats=images if corrected else None)
        means[corrected] = np.asarray(first(images)).mean(axis=(0, 1, 2)) - before
    scale = np.abs(means[False]).max()
    assert scale > 1e-3                       # rounding does shift the channel means
    assert np.abs(means[True]).max() < 1e-4 * max(scale, 1.0)
