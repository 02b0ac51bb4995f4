"""Error-feedback rounding of the heads' box weights (darknet2tflite/int8/box_rounding.py): the
weights stay on the converter's int8 grid (so the converter keeps them exactly), and the box
outputs' error from int8 weights drops on photos the rounding never saw."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from darknet2tflite.int8.box_rounding import (  # noqa: E402
    QMAX, _patches, box_convs, feedback_round, feedback_round_layer, nearest,
    per_channel_affordable, round_box_weights)


def _on_grid(q: np.ndarray, w: np.ndarray) -> None:
    """Each output channel of ``q`` is integer levels of max|w| / 127, reaching +-127."""
    scale = np.abs(w).max(axis=0) / QMAX
    levels = q / scale
    assert np.allclose(levels, np.round(levels), atol=1e-3)
    assert np.all(np.abs(np.round(levels)) <= QMAX)
    assert np.allclose(np.abs(q).max(axis=0), np.abs(w).max(axis=0), rtol=1e-6)


def _correlated_layer(seed: int, n_in: int, n_out: int, samples: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(kernel with heavy tails like real kernels, second moment of correlated inputs)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, size=(n_in, n_out)).astype(np.float32)
    x = rng.normal(size=(samples, n_in)) @ rng.normal(size=(n_in, n_in)) + 0.5
    return w, x.T @ x / len(x)


def _error_vs_nearest(q: np.ndarray, w: np.ndarray, h: np.ndarray) -> float:
    """Output error of ``q``'s rounding through the inputs' covariance, relative to the
    converter's nearest rounding of ``w``."""
    err = lambda d: float(np.einsum("ic,ij,jc->", d, h, d))  # noqa: E731
    scale = np.abs(w).max(axis=0) / QMAX
    return err(q - w) / err(nearest(w.astype(np.float64), scale) - w)


def test_feedback_rounding_stays_on_the_converters_grid() -> None:
    w, h = _correlated_layer(0, 64, 5, 4000)
    q = feedback_round(w, h)
    _on_grid(q, w)
    # the inputs' covariance decides, and the output error is what drops
    assert _error_vs_nearest(q, w, h) < 0.7


def test_one_inverse_for_all_channels_rounds_the_same() -> None:
    """Permuting one inverse per channel gives the per-channel inversion's rounding."""
    rng = np.random.default_rng(1)
    w = rng.standard_t(3, size=(96, 40)).astype(np.float32)
    x = rng.normal(size=(4000, 96)) @ rng.normal(size=(96, 96)) + 0.5
    h = x.T @ x / len(x)
    q = feedback_round(w, h, shared_inverse=True)
    _on_grid(q, w)
    scale = np.abs(w).max(axis=0) / QMAX
    same = np.isclose(q, feedback_round(w, h), rtol=0, atol=1e-3 * scale)
    assert same.mean() > 0.999     # a tie decided by the last bit may round the other way


def test_one_order_for_a_large_layer_stays_on_the_grid_and_helps() -> None:
    """Layers too large for a per-channel order (a 3x3 convolution over 512 channels) share
    one: still the converter's grid (largest weight held at +-127), still a lower output error
    than nearest rounding."""
    assert per_channel_affordable(576, 64)           # yolov4-tiny's equalized consumers
    assert not per_channel_affordable(3 * 3 * 512, 1024)
    w, h = _correlated_layer(3, 128, 48, 6000)
    q = feedback_round_layer(w, h)
    _on_grid(q, w)
    assert _error_vs_nearest(q, w, h) < 0.7


def test_patches_are_the_convolutions_inputs() -> None:
    """Input vectors of a strided 3x3 'same' convolution, in the kernel's (kh, kw, C) order:
    their dot product with the flattened kernel is the convolution."""
    rng = np.random.default_rng(2)
    conv = keras.layers.Conv2D(5, 3, strides=2, padding="same", use_bias=False)
    x = rng.normal(size=(1, 9, 9, 4)).astype(np.float32)
    y = np.asarray(conv(x))
    k = conv.get_weights()[0]
    np.testing.assert_allclose(_patches(x, conv) @ k.reshape(-1, 5), y.reshape(-1, 5),
                               rtol=1e-4, atol=1e-4)


def test_uncorrelated_inputs_leave_nothing_to_feed_back() -> None:
    """With independent, equally strong inputs the best rounding is the nearest level."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(32, 3)).astype(np.float32)
    q = feedback_round(w, np.eye(32))
    scale = np.abs(w).max(axis=0) / QMAX
    assert np.allclose(q, nearest(w.astype(np.float64), scale), atol=1e-7)


@pytest.fixture(scope="module")
def yolov4_tiny_int8_model(yolov4_tiny, coco_images, tmp_path_factory):
    """yolov4-tiny as the int8 path builds it (head split), and 32 + 16 real photos."""
    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.darknet.metadata import decode_metadata
    from darknet2tflite.int8.quantize import int8_rules
    from darknet2tflite.darknet.weights import read_weights
    cfg_path, weights_path = yolov4_tiny
    cfg = parse_cfg(cfg_path)
    model, _ = build_keras(cfg, read_weights(weights_path, cfg), int8_rules())
    npy = tmp_path_factory.mktemp("box-rounding") / "calibration.npy"
    photos = load_calibration(calibrate(cfg, coco_images, npy, 48, progress=None).npy)
    return model, decode_metadata(cfg, None), photos[:32], photos[32:48]


def _box_error(model, rounded, photos) -> float:
    """Mean squared error of the box outputs of ``rounded`` vs ``model`` (float activations:
    only the weights differ)."""
    names = [n for n in model.output_names if n.endswith("_box")]
    a = keras.Model(model.inputs, [model.get_layer(n).output for n in names])(photos)
    b = keras.Model(rounded.inputs, [rounded.get_layer(n).output for n in names])(photos)
    return float(np.mean([np.mean((np.asarray(u) - np.asarray(v)) ** 2) for u, v in zip(a, b)]))


def test_box_outputs_lose_less_to_int8_weights_on_unseen_photos(yolov4_tiny_int8_model):
    model, meta, seen, unseen = yolov4_tiny_int8_model
    convs = box_convs(model)
    assert len(convs) == sum(len(h["anchors"]) for h in meta["heads"])   # one per anchor
    before = {c.name: c.get_weights()[0].copy() for c in convs}
    rounded, report = round_box_weights(model, seen)
    assert report.images == len(seen) and set(report.layers) == set(before)
    for c in convs:   # the caller's model is left alone
        assert np.array_equal(model.get_layer(c.name).get_weights()[0], before[c.name])
    for c in convs:
        _on_grid(rounded.get_layer(c.name).get_weights()[0][0, 0], c.get_weights()[0][0, 0])
    err_feedback = _box_error(model, rounded, unseen)
    err_nearest = _box_error(model, _nearest_rounded(model), unseen)
    assert err_feedback < 0.8 * err_nearest, (err_feedback, err_nearest)


def _nearest_rounded(model):
    """``model`` with its box convolutions rounded as the converter would (nearest level)."""
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    for c in box_convs(model):
        k, *rest = c.get_weights()
        scale = np.abs(k).max(axis=(0, 1, 2)) / QMAX
        plain.get_layer(c.name).set_weights([nearest(k.astype(np.float64), scale)
                                             .astype(np.float32)] + rest)
    return plain


def test_a_single_calibration_photo_does_no_harm(yolov4_tiny_int8_model):
    """One photo gives 169 input vectors for the 13x13 head's ~560 inputs: fitted to that
    covariance with the usual 1 % damping, the rounding did worse than nearest on other
    photos (1.23x); the damping grows with the shortage of samples instead."""
    from darknet2tflite.int8.box_rounding import DAMPING, damping
    model, _, seen, unseen = yolov4_tiny_int8_model
    rounded, report = round_box_weights(model, seen[:1])
    err_nearest = _box_error(model, _nearest_rounded(model), unseen)
    assert _box_error(model, rounded, unseen) < err_nearest
    assert all(v["damping"] > DAMPING for v in report.layers.values())
    # plenty of samples: the usual damping (the figures in docs/int8.md were measured so)
    assert damping(567, 32 * 13 * 13) == DAMPING


def test_the_converter_keeps_the_rounded_weights(yolov4_tiny_int8_model):
    """The int8 kernels TFLite writes are exactly the fed-back ones: no second rounding."""
    from darknet2tflite.tflite.interpreter import interpreter
    from darknet2tflite.int8.ranges import calibrate_model, quantize_calibrated
    model, _, seen, _ = yolov4_tiny_int8_model
    rounded, _ = round_box_weights(model, seen[:8])
    it = interpreter(quantize_calibrated(calibrate_model(rounded, seen[:2])))
    kernels = {}
    for d in it.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if d["dtype"] == np.int8 and len(d["shape"]) == 4 and len(scales) > 1:
            kernels[d["name"]] = it.get_tensor(d["index"]) * scales[:, None, None, None]
    checked = 0
    for conv in box_convs(rounded):
        (name,) = [n for n in kernels if f"/{conv.name}" in n]
        ours = conv.get_weights()[0][0, 0]                 # (inputs, outputs)
        step = np.abs(ours).max(axis=0) / QMAX
        assert np.all(np.abs(kernels[name][:, 0, 0, :].T - ours) <= 1e-4 * step)
        checked += 1
    assert checked == len(box_convs(model))


def test_no_box_outputs_no_change(yolov4_tiny, coco_images):
    """A model whose heads are not split (plain contract outputs) has nothing to round."""
    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.darknet.weights import read_weights
    cfg_path, weights_path = yolov4_tiny
    cfg = parse_cfg(cfg_path)
    model, _ = build_keras(cfg, read_weights(weights_path, cfg))
    photos = np.random.default_rng(0).uniform(0, 1, (2, 416, 416, 3)).astype(np.float32)
    same, report = round_box_weights(model, photos)
    assert same is model and report.layers == {} and box_convs(model) == []
