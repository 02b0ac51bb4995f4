"""Outlier channel splitting (darknet2tflite/int8/channel_split.py): which layers qualify, that the
split model computes the same float function, and that it shrinks the int8 ranges it targets."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from darknet2tflite.int8.channel_split import (MAX_ERROR_RATIO, channel_maxima,  # noqa: E402
                                          copies, find_candidates, split_outlier_channels)
from darknet2tflite.model.layers import ConstantPad, DarknetActivation  # noqa: E402


def _conv(n, name, size=3, groups=1):
    return keras.layers.Conv2D(n, size, padding="same", groups=groups, name=name)


def _toy(middle: str) -> keras.Model:
    """conv a -> <middle> -> conv b (-> conv head as the model output)."""
    x0 = keras.Input((16, 16, 4), batch_size=1, name="image")
    x = _conv(8, "a")(x0)
    extra_out = []
    if middle == "leaky":
        x = DarknetActivation("leaky", name="a_act")(x)
    elif middle == "mish":
        x = DarknetActivation("mish", name="a_act")(x)
    elif middle == "pad_maxpool":
        x = DarknetActivation("relu", name="a_act")(x)
        x = ConstantPad([[0, 1], [0, 1]], -3.4e38, name="a_pad")(x)
        x = keras.layers.MaxPooling2D(2, 1, name="a_pool")(x)
    elif middle == "concat":
        x = keras.layers.Concatenate(name="a_cat")([x, x0])
    elif middle == "output":
        x = DarknetActivation("leaky", name="a_act")(x)
        extra_out = [x]
    y = _conv(8, "b", groups=2 if middle == "grouped" else 1)(x)
    y = DarknetActivation("leaky", name="b_act")(y)
    head = _conv(6, "head", size=1)(y)
    return keras.Model(x0, [head] + extra_out)


@pytest.mark.parametrize("middle, expected", [
    ("leaky", ["a", "b"]), ("pad_maxpool", ["a", "b"]), ("mish", ["b"]), ("concat", ["b"]),
    ("output", ["b"]), ("grouped", [])])
def test_candidates_only_where_the_split_is_exact(middle, expected):
    model = _toy(middle)
    assert [c.producer for c in find_candidates(model)] == expected


def test_copies_only_where_they_cut_the_rounding_error():
    # alike maxima: identical copies round identically, so splitting buys too little
    assert copies(np.array([40.0, 45.0, 50.0, 60.0]))[2] > MAX_ERROR_RATIO
    k, t, ratio = copies(np.array([50.0, 50.0, 50.0]))
    assert ratio == 1.0 and k.tolist() == [1, 1, 1]
    # one channel far above the rest: it is split, the range drops to the others' level
    m = np.array([5.0, 6.0, 7.0, 8.0, 40.0])
    k, t, ratio = copies(m, max_copies=4)
    assert k[:4].tolist() == [1, 1, 1, 1] and 1 < k[4] <= 4
    assert ratio < 0.5 and np.all(m / k <= t + 1e-9)
    # added channels stay within what the budget leaves
    k, _, _ = copies(m, max_copies=4, max_extra=1)
    assert (k - 1).sum() <= 1


def test_toy_split_is_exact_and_shrinks_range():
    rng = np.random.default_rng(0)
    model = _toy("pad_maxpool")
    k, b = model.get_layer("a").get_weights()
    k[..., 0] *= 20.0                       # one outlier channel
    model.get_layer("a").set_weights([k, b])
    x = rng.uniform(0, 1, (6, 16, 16, 4)).astype(np.float32)
    new, rep = split_outlier_channels(model, x, budget=1.0, param_budget=1.0)
    assert "a" in rep.layers and rep.layers["a"]["channels"][1] > 8
    assert new.get_layer("a").filters == rep.layers["a"]["channels"][1]
    ref, out = model.predict(x, verbose=0), new.predict(x, verbose=0)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    before, = channel_maxima(model, ["a"], x)
    after, = channel_maxima(new, ["a"], x)
    assert after.max() < before.max() / 2


def test_budget_zero_changes_nothing():
    model = _toy("leaky")
    x = np.zeros((2, 16, 16, 4), np.float32)
    new, rep = split_outlier_channels(model, x, budget=0.0)
    assert new is model and not rep.layers and rep.skipped


@pytest.fixture(scope="module")
def v4_model(yolov4_tiny, coco_images):
    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.int8.quantize import int8_rules
    from darknet2tflite.darknet.weights import read_weights
    cfg_path, w_path = yolov4_tiny
    cfg = parse_cfg(cfg_path)
    model, _ = build_keras(cfg, read_weights(w_path, cfg), int8_rules())
    images = load_calibration(calibrate(cfg, coco_images, None, 24, progress=None).npy)
    return model, images


def test_yolov4_tiny_first_layers_split_within_budget(v4_model):
    model, images = v4_model
    new, rep = split_outlier_channels(model, images, budget=0.15)
    d = rep.to_dict()
    assert 0 < d["extra_mac_fraction"] <= 0.15
    assert "L000_conv" in rep.layers                      # the 208x208 map, maxima 7..50
    ref = model.predict(images[:2], verbose=0)
    out = new.predict(images[:2], verbose=0)
    for r, o in zip(ref, out):
        assert np.abs(o - r).max() <= 1e-4 * np.abs(r).max()
    # the split tensor's range, which sets its single int8 scale, is what shrinks
    before, = channel_maxima(model, ["L000_conv"], images[:8])
    after, = channel_maxima(new, ["L000_conv"], images[:8])
    assert after.max() < 0.75 * before.max()
    assert len(after) == rep.layers["L000_conv"]["channels"][1]


def test_split_int8_model_is_full_integer_and_closer_at_layer0(v4_model):
    """The int8 quantization error of layer 0's output (relative to its float value) drops
    when its outlier channels are split: the effect the rewrite exists for."""
    import tensorflow as tf
    from darknet2tflite.int8.quantize import QuantizeOptions, int8_from_keras
    model, images = v4_model
    errs = {}
    for budget in (0.0, 0.15):
        data, _, _, check, split, _ = int8_from_keras(model, images, QuantizeOptions(
            channel_split=budget, equalize=False, debug_images=0), lambda _m: None)
        assert check["full_integer"]
        it = tf.lite.Interpreter(model_content=data, experimental_preserve_all_tensors=True)
        it.allocate_tensors()
        det = [d for d in it.get_tensor_details() if "L000_leaky" in d["name"]
               and d["dtype"] == np.int8]
        assert det, "layer 0 activation tensor not found"
        sub = keras.Model(model.inputs, model.get_layer("L000_leaky").output)
        e = []
        for i in range(4):
            x = images[i:i + 1]
            it.set_tensor(it.get_input_details()[0]["index"], np.round(x * 255).astype(np.uint8))
            it.invoke()
            s, z = det[0]["quantization"]
            q = (it.get_tensor(det[0]["index"]).astype(np.float32) - z) * s
            ref = sub.predict(x, verbose=0)
            if budget:  # fold the copies back: channel c = sum of its copies
                src = _sources(split)
                q = np.stack([q[..., src == c].sum(-1) for c in range(ref.shape[-1])], -1)
            e.append(float(((q - ref) ** 2).mean() / (ref ** 2).mean()))
        errs[budget] = np.mean(e)
    assert errs[0.15] < 0.9 * errs[0.0], errs  # measured: -16 %


def _sources(split, layer="L000_conv"):
    """New channel -> original channel, from the report's copies."""
    info = split["layers"][layer]
    k = np.ones(info["channels"][0], dtype=int)
    for c, n in info["copies"].items():
        k[int(c)] = n
    assert int(k.sum()) == info["channels"][1]
    return np.repeat(np.arange(len(k)), k)
