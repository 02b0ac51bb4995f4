"""ONNX export and the onnx2tf int8 backend on the real tiny YOLOs, offline.

Each model goes Keras -> ONNX (parity vs Keras within 1e-5) -> onnx2tf -> float32 and int8
TFLite on real COCO calibration images, with the network blocked: onnx2tf asks for its
GitHub sample images on every image-shaped model, and the test proves that request is
served from our calibration data and that no socket or curl is ever opened.
yolov4-tiny runs onnx2tf's own int8 path from the NHWC contract ONNX, yolov3-tiny an NCHW
ONNX calibrated with TFLiteConverter, so both layouts and both quantizers are covered.
"""
from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from darknet2tflite.int8.backends import compare, onnx_export, outcome
from darknet2tflite.int8.backends import onnx2tf as o2t
from darknet2tflite.tflite import inspect, metrics as tflite_metrics

N_CALIB = 32
N_EVAL = 4


# --------------------------------------------------------------------------- helpers

class NetworkGuard:
    """Records (and refuses) every socket connect and curl/wget subprocess."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def install(self, mp: pytest.MonkeyPatch) -> None:
        guard = self

        def connect(sock, addr, *a, **k):
            guard.attempts.append(f"connect {addr}")
            raise OSError(f"network blocked by test: {addr}")

        real_popen_init = subprocess.Popen.__init__

        def popen_init(self_, args, *a, **k):
            argv = [args] if isinstance(args, (str, bytes)) else list(args)
            if argv and any(t in str(argv[0]) for t in ("curl", "wget")):
                guard.attempts.append(f"subprocess {argv}")
                raise OSError("network tool blocked by test")
            return real_popen_init(self_, args, *a, **k)

        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect)
        mp.setattr(subprocess.Popen, "__init__", popen_init)


def _images(folder: Path, cfg, first: int, n: int) -> np.ndarray:
    from darknet2tflite.images import find_images, load_batch
    paths = sorted(find_images(folder, limit=None))[first:first + n]
    batch, _ = load_batch(paths, cfg.width, cfg.height, cfg.letter_box)
    return batch


def _build(cfg_path: Path, weights_path: Path):
    """The rewritten float model the int8 backends start from (exact rules only)."""
    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.darknet.metadata import decode_metadata
    from darknet2tflite.rewrites import load_rules
    from darknet2tflite.darknet.weights import read_weights
    cfg = parse_cfg(cfg_path)
    rules = load_rules()
    chosen = [rules[n] for n in ("route_groups", "maxpool_pad") if n in rules]
    model, applied = build_keras(cfg, read_weights(weights_path, cfg), chosen)
    return cfg, model, decode_metadata(cfg)


def _run(cfg_pair, coco: Path, out: Path, layout: str, quantizer: str, from_path: bool):
    cfg, model, meta = _build(*cfg_pair)
    calib = _images(coco, cfg, 0, N_CALIB)
    evalb = _images(coco, cfg, N_CALIB, N_EVAL)
    src = model
    if from_path:
        src = out / "model.keras"
        model.save(src)
    onnx_path = onnx_export.export_onnx(src, out / "model.onnx", opset=17, layout=layout)
    parity = onnx_export.onnx_parity(onnx_path, model, evalb)
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        res = o2t.onnx2tf_convert(onnx_path, out, calib, "uint8", meta, quantizer=quantizer,
                                 keras_model=model, eval_batch=evalb, latency_runs=3)
    return {"cfg": cfg, "model": model, "meta": meta, "calib": calib, "eval": evalb,
            "onnx": onnx_path, "parity": parity, "result": res, "guard": guard}


@pytest.fixture(scope="module")
def v4(yolov4_tiny, coco_images, tmp_path_factory):
    return _run(yolov4_tiny, coco_images, tmp_path_factory.mktemp("v4"), "NHWC", "onnx2tf",
                from_path=False)


@pytest.fixture(scope="module")
def v3(yolov3_tiny, coco_images, tmp_path_factory):
    return _run(yolov3_tiny, coco_images, tmp_path_factory.mktemp("v3"), "NCHW", "tflite",
                from_path=True)


def _report(name: str, run: dict) -> None:
    r = run["result"]
    print(f"\n[{name}] onnx parity max_rel {max(p['max_rel'] for p in run['parity']):.2e}; "
          f"float32 onnx2tf max_rel {r['float32'].get('max_rel')}; int8 SQNR "
          f"{r['int8'].get('sqnr_db')} dB; seconds {r['conversion_seconds']}", file=sys.stderr)


# --------------------------------------------------------------------------- real models

@pytest.mark.slow
@pytest.mark.parametrize("which", ["v4", "v3"])
def test_onnx_export_contract_and_parity(which, request):
    run = request.getfixturevalue(which)
    io_ = onnx_export.onnx_io(run["onnx"])
    model, cfg = run["model"], run["cfg"]
    assert io_["opset"] >= onnx_export.ONNX_MIN_OPSET
    assert [n for n, _ in io_["inputs"]] == ["image"]
    assert [n for n, _ in io_["outputs"]] == list(model.output_names)
    assert [n for n, _ in io_["outputs"]] == [h["output"] for h in run["meta"]["heads"]]
    want_in = [1, cfg.height, cfg.width, 3]
    if io_["layout"] == "NCHW":
        want_in = [1, 3, cfg.height, cfg.width]
    assert io_["inputs"][0][1] == want_in
    for (_, shape), head in zip(io_["outputs"], run["meta"]["heads"]):
        grid = shape[2:] if io_["layout"] == "NCHW" else shape[1:3]
        assert grid == head["grid"]
    for row in run["parity"]:
        assert row["max_rel"] <= 1e-5, row
    _report(which, run)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["v4", "v3"])
def test_onnx2tf_int8_contract_full_integer(which, request):
    from darknet2tflite.tflite.export import run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    from darknet2tflite.darknet.metadata import read_tflite_metadata
    run = request.getfixturevalue(which)
    r, cfg, meta = run["result"], run["cfg"], run["meta"]
    assert r["status"] == "ok", r.get("reason")
    i8 = r["int8"]
    assert i8["status"] == "ok", i8.get("reason")
    assert i8["float_ops"] == [] and i8["full_integer"] is True
    assert i8["input"]["dtype"] == "uint8"
    assert i8["input"]["shape"] == [1, cfg.height, cfg.width, 3]
    assert math.isclose(i8["input"]["scale"], 1 / 255, rel_tol=1e-6)
    assert i8["input"]["zero_point"] == 0

    it = interpreter(i8["path"])
    d = it.get_input_details()[0]
    assert d["dtype"] == np.uint8 and tuple(d["shape"]) == (1, cfg.height, cfg.width, 3)
    # heads in cfg order, NHWC, through the returned meta copy and the embedded one
    m = r["meta"]
    assert [h["output"] for h in m["heads"]] == [h["output"] for h in meta["heads"]]
    assert all(h["tflite_output"] for h in m["heads"])
    assert read_tflite_metadata(i8["path"])["heads"] == m["heads"]
    outs = {o["name"]: o for o in it.get_output_details()}
    heads = run_tflite(it, run["eval"][:2], m)
    for h, y in zip(m["heads"], heads):
        assert outs[h["tflite_output"]]["dtype"] == np.int8
        n_anchor = len(h["mask"])
        assert y.shape == (2, *h["grid"], n_anchor * (5 + h["classes"]))
    # the int8 model tracks the float one (real-image SQNR), the float one matches Keras
    assert len(i8["sqnr_db"]) == len(meta["heads"])
    assert min(i8["sqnr_db"]) > 15.0, i8["sqnr_db"]
    f32 = r["float32"]
    assert f32["status"] == "ok", f32.get("reason")
    assert r["reference"] == "keras"
    assert f32["max_rel"] <= 1e-5, f32["parity"]
    f_heads = run_tflite(interpreter(f32["path"]), run["eval"][:1], f32["meta"])
    assert [y.shape[1:3] for y in f_heads] == [tuple(h["grid"]) for h in meta["heads"]]
    assert i8["latency_ms"] > 0 and i8["size_bytes"] < f32["size_bytes"]
    # the result report is on disk next to the artifacts
    assert (Path(i8["path"]).parent / "onnx2tf_report.json").exists()
    _report(which, run)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["v4", "v3"])
def test_onnx2tf_never_touches_the_network(which, request):
    run = request.getfixturevalue(which)
    assert run["guard"].attempts == []
    # onnx2tf did ask for its sample images; we served our own
    assert run["result"]["network"]["sample_requests_served_locally"] >= 1
    import importlib
    common = importlib.import_module("onnx2tf.utils.common_functions")
    assert not isinstance(common.requests, o2t._NoNetwork)  # patch was undone


@pytest.mark.slow
def test_compare_with_direct_backend_on_real_model(v4):
    """compare_backends on real results: the direct TFLiteConverter int8 model vs onnx2tf."""
    from darknet2tflite.tflite.export import convert, run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    model, meta, calib, evalb = v4["model"], v4["meta"], v4["calib"], v4["eval"]
    data = convert(model, mode="int8",
                   representative=lambda: ([x[None]] for x in o2t._pin_input_range(calib)))
    ref = model.predict(evalb, batch_size=1, verbose=0)
    from darknet2tflite.tflite.export import head_tensor_names
    it = interpreter(data)
    m = dict(meta, heads=[dict(h, tflite_output=t) for h, t in zip(
        meta["heads"], head_tensor_names(it, list(model.output_names),
                                         [h["output"] for h in meta["heads"]]))])
    got = run_tflite(it, evalb, m)
    direct = {"status": "ok", "conversion_seconds": None,
              "int8": {"status": "ok", "size_bytes": len(data), "float_ops": inspect.float_ops(data),
                       "sqnr_db": [tflite_metrics.sqnr_db(r, g) for r, g in zip(ref, got)],
                       "latency_ms": tflite_metrics.latency_ms(data, runs=3, warmup=1)}}
    cmp = compare.compare_backends(direct, v4["result"])
    assert cmp["winner"] in ("direct", "onnx2tf")
    assert cmp["decided_by"] in ("float_ops", "ap", "sqnr", "latency", "tie")
    metrics = [row["metric"] for row in cmp["table"]]
    for want in ("float ops", "size (bytes)", "latency (ms)", "SQNR per head (dB)",
                 "AP float / int8", "conversion (s)"):
        assert want in metrics
    print(f"\n[v4 compare] {cmp['winner']} by {cmp['decided_by']}: {cmp['reason']}; "
          f"direct SQNR {direct['int8']['sqnr_db']}", file=sys.stderr)


# --------------------------------------------------------------------------- failures

def _tiny_meta() -> dict:
    return {"input": {"width": 32, "height": 32, "channels": 3},
            "heads": [{"output": "head_001_yolo", "grid": [1, 1], "mask": [0], "classes": 1}]}


def test_bad_onnx_path_is_reported_not_raised(tmp_path):
    cal = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    res = o2t.onnx2tf_convert(tmp_path / "missing.onnx", tmp_path / "out", cal, "uint8",
                             _tiny_meta())
    assert res["status"] == "failed"
    assert res["reason"] and "\n" not in res["reason"]
    assert res["int8"]["status"] == "not run"

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    res = o2t.onnx2tf_convert(garbage, tmp_path / "out2", cal, "uint8", _tiny_meta())
    assert res["status"] == "failed" and "\n" not in res["reason"]


def test_onnx2tf_sys_exit_is_reported(tmp_path, monkeypatch):
    """onnx2tf calls sys.exit on some errors; that must become a reported failure too."""
    import keras
    import onnx2tf
    inp = keras.Input((32, 32, 3), batch_size=1, name="image")
    y = keras.layers.Conv2D(18, 1, name="head_001_yolo")(inp)
    model = keras.Model(inp, y)
    onnx_path = onnx_export.export_onnx(model, tmp_path / "m.onnx")

    def boom(**kw):
        print("ERROR: simulated onnx2tf failure")
        sys.exit(1)

    monkeypatch.setattr(onnx2tf, "convert", boom)
    cal = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    res = o2t.onnx2tf_convert(onnx_path, tmp_path / "out", cal, "uint8", _tiny_meta())
    assert res["status"] == "failed"
    assert "simulated onnx2tf failure" in res["reason"] and "\n" not in res["reason"]
    # the temporary onnx2tf work dir is gone, the log is kept
    assert not list((tmp_path / "out").glob(".onnx2tf-*"))
    assert (tmp_path / "out" / "onnx2tf.log").exists()


def test_run_backend_captures_failure_and_keeps_other_result():
    def direct() -> dict:
        return {"status": "ok", "int8": {"status": "ok", "size_bytes": 10, "float_ops": [],
                                         "sqnr_db": [30.0], "latency_ms": 5.0}}

    def broken() -> dict:
        raise RuntimeError("converter exploded\nwith a long traceback")

    d = outcome.run_backend("direct", direct)
    o = outcome.run_backend("onnx2tf", broken)
    assert d["status"] == "ok"
    assert o["status"] == "failed" and o["reason"] == "RuntimeError: converter exploded"
    cmp = compare.compare_backends(d, o)
    assert cmp["winner"] == "direct" and cmp["decided_by"] == "availability"
    assert "converter exploded" in cmp["reason"]
    assert cmp["backends"]["direct"]["min_sqnr_db"] == 30.0
    both = compare.compare_backends(o, {"status": "failed", "reason": "x"})
    assert both["winner"] is None


def _res(float_ops=0, sqnr=(30.0, 30.0), latency=10.0, ap=None) -> dict:
    r = {"status": "ok", "int8": {"status": "ok", "size_bytes": 100, "float_ops": ["X"] * float_ops,
                                  "sqnr_db": list(sqnr), "latency_ms": latency}}
    if ap is not None:
        r["ap"] = {"float": 0.40, "int8": ap}
    return r


@pytest.mark.parametrize("direct,onnx2tf,winner,by", [
    (_res(float_ops=2, sqnr=(40, 40)), _res(), "onnx2tf", "float_ops"),
    (_res(sqnr=(30, 20)), _res(sqnr=(25, 25)), "onnx2tf", "sqnr"),       # worst head counts
    (_res(sqnr=(30, 30)), _res(sqnr=(30.3, 30.3), latency=5), "onnx2tf", "latency"),
    (_res(sqnr=(20, 20), ap=0.38), _res(sqnr=(30, 30), ap=0.36), "direct", "ap"),  # AP first
    (_res(ap=0.380), _res(ap=0.383, latency=10.2), "direct", "tie"),
])
def test_compare_backends_rule(direct, onnx2tf, winner, by):
    cmp = compare.compare_backends(direct, onnx2tf)
    assert (cmp["winner"], cmp["decided_by"]) == (winner, by), cmp["reason"]


def test_export_onnx_rejects_low_opset(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        onnx_export.export_onnx(object(), tmp_path / "m.onnx", opset=11)


# --------------------------------------------------------------------------- tiny model

def _tiny_model():
    import keras
    inp = keras.Input((32, 32, 3), batch_size=1, name="image")
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)))(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, name="L000_conv")(x)
    x = keras.layers.LeakyReLU(negative_slope=0.1)(x)
    y = keras.layers.Conv2D(18, 1, name="L001_conv")(x)
    y = keras.layers.Identity(name="head_002_yolo")(y)
    model = keras.Model(inp, [y])
    meta = {"input": {"width": 32, "height": 32, "channels": 3, "letter_box": False},
            "heads": [{"index": 2, "type": "yolo", "output": "head_002_yolo", "grid": [16, 16],
                       "mask": [0], "anchors": [[10.0, 14.0]], "classes": 13}]}
    return model, meta


@pytest.mark.parametrize("quantizer,layout", [("tflite", "NHWC"), ("onnx2tf", "NCHW")])
def test_int8_input_type_on_tiny_model(tmp_path, quantizer, layout):
    """input_type='int8': scale 1/255 with zero point -128, through both quantizers."""
    from darknet2tflite.tflite.export import run_tflite
    from darknet2tflite.tflite.interpreter import interpreter
    model, meta = _tiny_model()
    onnx_path = onnx_export.export_onnx(model, tmp_path / "m.onnx", layout=layout)
    rng = np.random.default_rng(0)
    cal = rng.random((8, 32, 32, 3), dtype=np.float32)
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        res = o2t.onnx2tf_convert(onnx_path, tmp_path / "out", cal, "int8", meta,
                                 quantizer=quantizer, latency_runs=1)
    assert guard.attempts == []
    assert res["status"] == "ok", res["reason"]
    assert res["reference"] == "onnxruntime"
    i8 = res["int8"]
    assert i8["full_integer"] and i8["input"]["dtype"] == "int8"
    assert i8["input"]["zero_point"] == -128
    assert math.isclose(i8["input"]["scale"], 1 / 255, rel_tol=1e-6)
    y = run_tflite(interpreter(i8["path"]), cal[:2], res["meta"])
    assert y[0].shape == (2, 16, 16, 18)
    assert res["float32"]["max_rel"] <= 1e-5


def test_pin_input_range():
    x = np.full((2, 4, 4, 3), 0.5, np.float32)
    y = o2t._pin_input_range(x)
    assert y.min() == 0.0 and y.max() == 1.0
    assert np.count_nonzero(y != 0.5) == 6  # one pixel (3 channels) per missing extreme
    z = np.concatenate([np.zeros((1, 4, 4, 3)), np.ones((1, 4, 4, 3))]).astype(np.float32)
    assert np.array_equal(o2t._pin_input_range(z), z)
