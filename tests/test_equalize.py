"""Cross-layer range equalization (darknet2tflite/int8/equalize.py): exact in float, chosen by
its error model only where it pays, and lowering the int8 error it exists for."""
from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from darknet2tflite.int8.equalize import (  # noqa: E402
    MAX_ERROR_RATIO, best_scales, equalize_ranges, layer_error)
from darknet2tflite.model.layers import ConstantPad, DarknetActivation  # noqa: E402


def _toy(outlier: float) -> keras.Model:
    """conv a -> leaky -> pad -> maxpool -> conv b -> leaky -> conv head (output)."""
    x0 = keras.Input((16, 16, 4), batch_size=1, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="a")(x0)
    x = DarknetActivation("leaky", name="a_act")(x)
    x = ConstantPad([[0, 1], [0, 1]], -3.4e38, name="a_pad")(x)
    x = keras.layers.MaxPooling2D(2, 1, name="a_pool")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="b")(x)
    y = DarknetActivation("leaky", name="b_act")(y)
    model = keras.Model(x0, keras.layers.Conv2D(6, 1, name="head")(y))
    k, b = model.get_layer("a").get_weights()
    k[..., 0] *= outlier
    b[0] *= outlier
    model.get_layer("a").set_weights([k, b])
    return model


def _images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (n, 16, 16, 4)).astype(np.float32)


def test_toy_outlier_channel_is_scaled_exactly():
    model, x = _toy(20.0), _images()
    before = [w.copy() for w in model.get_layer("a").get_weights()]
    new, rep = equalize_ranges(model, x)
    assert "a" in rep.layers and rep.layers["a"]["scaled_channels"] >= 1
    assert rep.layers["a"]["error_ratio"] <= MAX_ERROR_RATIO
    ref, out = model.predict(x, verbose=0), new.predict(x, verbose=0)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    # the producer's output range (one int8 scale) shrinks; the input model is untouched
    def act_range(m):
        sub = keras.Model(m.inputs, m.get_layer("a_act").output)
        return float(np.abs(sub.predict(x, verbose=0)).max())
    assert act_range(new) < 0.75 * act_range(model)
    for w, b in zip(model.get_layer("a").get_weights(), before):
        assert np.array_equal(w, b)


def test_alike_channels_are_left_alone():
    # no channel stands out: scaling any of them costs the consumer more than it buys
    r = np.full(8, 10.0)
    q = np.full(8, 4.0)
    k = np.random.default_rng(1).normal(size=(3, 3, 8, 8))
    s, _, _, ratio = best_scales(r, q, [k])
    assert ratio == 1.0 and np.all(s == 1.0)


def test_error_model_counts_the_consumer_weight_cost():
    """Shrinking a channel by s moves 1/s into the consumer's weights: past some point the
    modelled weight error outgrows the activation gain."""
    rng = np.random.default_rng(2)
    r = np.array([40.0] + [5.0] * 7)
    q = (r / 3) ** 2
    k = rng.normal(size=(3, 3, 8, 16))
    ones = np.ones(8)
    mild, harsh = ones.copy(), ones.copy()
    mild[0], harsh[0] = 0.5, 0.01
    assert layer_error(mild, r, q, [k]) < layer_error(ones, r, q, [k])
    assert layer_error(harsh, r, q, [k]) > layer_error(mild, r, q, [k])


@pytest.fixture(scope="module")
def v4(yolov4_tiny, coco_images):
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.darknet.weights import read_weights
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.int8.quantize import int8_rules
    from darknet2tflite.model.builder import build_keras
    cfg_path, w_path = yolov4_tiny
    cfg = parse_cfg(cfg_path)
    model, _ = build_keras(cfg, read_weights(w_path, cfg), int8_rules())
    images = load_calibration(calibrate(cfg, coco_images, None, 24, progress=None).npy)
    new, rep = equalize_ranges(model, images)
    return model, new, rep, images


def test_yolov4_tiny_equalized_model_is_the_same_function(v4):
    model, new, rep, images = v4
    assert "L000_conv" in rep.layers          # layer 0's per-channel maxima run ~7..50
    assert new is not model
    for r, o in zip(model.predict(images[:4], verbose=0), new.predict(images[:4], verbose=0)):
        assert np.abs(o - r).max() <= 1e-5 * np.abs(r).max()


def test_yolov4_tiny_int8_error_drops_where_the_scaled_range_is_read(v4):
    """Layer 2 reads layer 1, which reads the equalized layer 0 (and is equalized itself):
    its output is the same float function either way, so its int8 error measures what the
    equalization buys (activations) net of what it costs (the consumers' weights)."""
    import tensorflow as tf
    from darknet2tflite.int8.quantize import QuantizeOptions, int8_from_keras
    model, _, rep, images = v4
    assert {"L000_conv", "L001_conv"} <= set(rep.layers)
    sub = keras.Model(model.inputs, model.get_layer("L002_leaky").output)
    errs = {}
    for equalize in (False, True):
        data, _, _, check, _, _ = int8_from_keras(model, images, QuantizeOptions(
            channel_split=0.0, equalize=equalize, box_rounding=False, debug_images=0),
            lambda _m: None)
        assert check["full_integer"]
        it = tf.lite.Interpreter(model_content=data, experimental_preserve_all_tensors=True)
        it.allocate_tensors()
        det = [d for d in it.get_tensor_details() if "L002_leaky" in d["name"]
               and d["dtype"] == np.int8 and len(d["shape"]) == 4]
        assert det, "layer 2 activation tensor not found"
        e = []
        for i in range(8, 16):  # photos the statistics did not use first
            x = images[i:i + 1]
            it.set_tensor(it.get_input_details()[0]["index"], np.round(x * 255).astype(np.uint8))
            it.invoke()
            s, z = det[0]["quantization"]
            q = (it.get_tensor(det[0]["index"]).astype(np.float32) - z) * s
            ref = sub.predict(x, verbose=0)
            e.append(float(((q - ref) ** 2).mean() / (ref ** 2).mean()))
        errs[equalize] = float(np.mean(e))
    assert errs[True] < 0.9 * errs[False], errs


def test_equalize_option_through_the_quantize_stage(v4, yolov4_tiny, coco_images, tmp_path):
    """``--equalize`` as the quantize stage runs it: the int8 model keeps the float model's
    channel counts (no split copies: the plain graph's MACs), says what was equalized and
    rounded, and records the equalization pass."""
    from darknet2tflite.int8.calibration import calibrate
    from darknet2tflite.int8.quantize import QuantizeOptions, build_int8_model, quantize
    cfg_path, w_path = yolov4_tiny
    arts = build_int8_model(cfg_path, w_path, tmp_path / "build", progress=lambda _m: None)
    npy = calibrate(cfg_path, coco_images, tmp_path / "c.npy", 24, progress=None).npy
    res = quantize(arts["keras"], npy, arts["meta"], tmp_path / "q",
                   QuantizeOptions(equalize=True, debug_images=0), progress=lambda _m: None)
    assert res.integer_check["full_integer"]
    assert not res.channel_split["layers"] and "L000_conv" in res.equalize["layers"]
    # the consumers of every equalized layer were rounded with error feedback
    consumers = {c for v in res.equalize["layers"].values() for c in v["consumers"]}
    assert consumers <= set(res.box_rounding["layers"])
    assert "range equalization statistics" in [p["pass"] for p in res.passes["passes"]]
    meta = json.loads((tmp_path / "q" / "model.json").read_text())
    assert meta["quantization"]["equalized"] == sorted(res.equalize["layers"])
    from darknet2tflite.tflite.interpreter import interpreter
    it = interpreter(tmp_path / "q" / "model.int8.tflite")
    layer0 = [d["shape"][-1] for d in it.get_tensor_details()
              if "L000_leaky" in d["name"] and len(d["shape"]) == 4]
    assert layer0 == [32]           # the split would make it 63
