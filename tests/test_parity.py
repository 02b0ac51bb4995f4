"""Float32 parity of the Keras builder and float32 TFLite against OpenCV DNN's own Darknet
importer (with Darknet's BN epsilon), on real photos: real weights, generated weights for the
big cfgs, and synthetic cfgs exercising every supported section and option."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from darknet2tflite.model.builder import build_keras
from darknet2tflite.darknet.cfg import ACTIVATIONS, parse_cfg
from darknet2tflite.tflite.export import convert, run_tflite
from darknet2tflite.tflite.interpreter import interpreter
from darknet2tflite.darknet.metadata import decode_metadata
from darknet2tflite.reference.parity import PARITY_TOLERANCE, compare_heads
from darknet2tflite.stages.build import build_stage
from darknet2tflite.stages.parity import parity_images, parity_stage
from darknet2tflite.reference.opencv import opencv_heads, opencv_supports
from darknet2tflite.darknet.weights import random_weights, read_weights, write_weights

from conftest import CFG_DIR
from test_cfg import cfg_text


def _synthetic(tmp_path: Path, body: str, size: int = 32, seed: int = 0,
               channels: int = 3) -> tuple[Path, Path]:
    cfg_path = tmp_path / "synthetic.cfg"
    cfg_path.write_text(cfg_text(body, net=f"width={size}\nheight={size}\nchannels={channels}"))
    cfg = parse_cfg(cfg_path)
    w_path = tmp_path / "synthetic.weights"
    write_weights(w_path, cfg, random_weights(cfg, seed))
    return cfg_path, w_path


def _keras_heads(cfg_path: Path, w_path: Path, batch: np.ndarray) -> list[np.ndarray]:
    cfg = parse_cfg(cfg_path)
    model, _ = build_keras(cfg, read_weights(w_path, cfg))
    out = model.predict(batch, batch_size=1, verbose=0)
    return out if isinstance(out, list) else [out]


def _assert_opencv_parity(cfg_path: Path, w_path: Path, n_images: int = 2) -> float:
    cfg = parse_cfg(cfg_path)
    ok, reason = opencv_supports(cfg_path)
    assert ok, reason
    batch, _ = parity_images(None, cfg.width, cfg.height, cfg.letter_box, limit=n_images,
                             channels=cfg.channels)
    ref = opencv_heads(cfg_path, w_path, batch)
    rows = compare_heads(ref, _keras_heads(cfg_path, w_path, batch))
    worst = max(r.max_rel for r in rows)
    assert worst <= PARITY_TOLERANCE, [r.as_dict() for r in rows]
    return worst


# --------------------------------------------------------------------------- real models

@pytest.mark.parametrize("model", ["yolov4_tiny", "yolov3_tiny"])
def test_real_model_build_and_parity(tmp_path: Path, request, model: str) -> None:
    cfg, weights = request.getfixturevalue(model)
    arts = build_stage(cfg, weights, tmp_path, CFG_DIR / "coco.names")
    res = parity_stage(cfg, weights, arts["keras"], arts["tflite_float32"], arts["meta"],
                       tmp_path)
    import json
    parity = json.loads(Path(res["parity"]).read_text())
    assert parity["status"] == "pass"
    assert parity["max_rel"] <= PARITY_TOLERANCE
    for kind in ("keras", "tflite_float32"):
        assert [tuple(r["shape"][1:]) for r in parity[kind]] == [(13, 13, 255), (26, 26, 255)]
    meta = json.loads(Path(arts["meta"]).read_text())
    assert [h["mask"] for h in meta["heads"]] == ([[3, 4, 5], [1, 2, 3]] if "v4" in model
                                                  else [[3, 4, 5], [1, 2, 3]])
    assert meta["names"][0] == "person" and len(meta["names"]) == 80


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov4", "yolov3"])
def test_big_cfgs_with_generated_weights(tmp_path: Path, name: str) -> None:
    cfg_path = CFG_DIR / f"{name}.cfg"
    cfg = parse_cfg(cfg_path)
    w_path = tmp_path / f"{name}.weights"
    write_weights(w_path, cfg, random_weights(cfg, seed=1))
    _assert_opencv_parity(cfg_path, w_path, n_images=1)


# --------------------------------------------------------------------------- synthetic cfgs

CONV = "[convolutional]\nfilters={f}\nsize={s}\nstride={st}\npad=1\nbatch_normalize=1\nactivation={a}\n\n"


def conv(f: int = 8, s: int = 3, st: int = 1, a: str = "leaky") -> str:
    return CONV.format(f=f, s=s, st=st, a=a)


SYNTHETIC = {
    "grouped_conv": conv(16) + "[convolutional]\nfilters=16\nsize=3\npad=1\ngroups=4\n"
                    "batch_normalize=1\nactivation=leaky\n\n",
    "depthwise_multiplier": conv(8) + "[convolutional]\nfilters=16\nsize=3\npad=1\ngroups=8\n"
                            "activation=relu\n\n",
    "depthwise_stride2": conv(8) + "[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\n"
                         "groups=8\nbatch_normalize=1\nactivation=leaky\n\n",
    "explicit_padding": conv(8) + "[convolutional]\nfilters=8\nsize=3\nstride=2\npadding=2\n"
                        "activation=leaky\n\n",
    "route_groups": conv(16) + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n" + conv(8)
                    + conv(8) + "[route]\nlayers=-1,-2\n\n" + conv(16, 1) + "[route]\nlayers=-6,-1\n\n",
    "shortcut": conv(8) + conv(8) + "[shortcut]\nfrom=-2\nactivation=leaky\n\n",
    "shortcut_linear": conv(8) + conv(8) + "[shortcut]\nfrom=-2\n\n",
    # partial residual (PRN): 'from' narrower than the previous layer, then wider
    "shortcut_partial": conv(8) + conv(16) + "[shortcut]\nfrom=-2\nactivation=leaky\n\n",
    "shortcut_wider_from": conv(16) + conv(8) + "[shortcut]\nfrom=-2\n\n",
    "upsample_route": conv(8) + conv(8, st=2) + "[upsample]\nstride=2\n\n[route]\nlayers=-1,0\n\n",
    "reorg": conv(16) + "[reorg]\nstride=2\n\n",
    "sam": conv(8) + conv(8, a="logistic") + "[sam]\nfrom=-2\n\n",
    "scale_channels": conv(8) + "[avgpool]\n\n" + conv(8, 1, a="logistic")
                      + "[scale_channels]\nfrom=-3\n\n",
    "dropout": conv(8) + "[dropout]\nprobability=.5\n\n",
    "spp": conv(8) + "[maxpool]\nstride=1\nsize=5\n\n[route]\nlayers=-2\n\n"
           "[maxpool]\nstride=1\nsize=9\n\n[route]\nlayers=-1,-3,-4\n\n",
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_synthetic_sections_match_opencv(tmp_path: Path, case: str) -> None:
    cfg_path, w_path = _synthetic(tmp_path, SYNTHETIC[case])
    ok, reason = opencv_supports(cfg_path)
    if not ok:
        pytest.skip(f"OpenCV cannot import this section: {reason}")
    _assert_opencv_parity(cfg_path, w_path)


def test_grey_network_matches_opencv(tmp_path: Path) -> None:
    """A ``channels=1`` cfg (grey cameras) is fed one-channel pixels end to end: the parity
    images have one channel and OpenCV's importer agrees with the Keras model."""
    cfg_path, w_path = _synthetic(tmp_path, SYNTHETIC["upsample_route"], channels=1)
    batch, _ = parity_images(None, 32, 32, False, limit=2, channels=1)
    assert batch.shape == (2, 32, 32, 1)
    _assert_opencv_parity(cfg_path, w_path)


@pytest.mark.parametrize("size", [32, 33])
@pytest.mark.parametrize("pool,stride", [(2, 1), (2, 2), (3, 1), (3, 2), (5, 1), (5, 2)])
def test_maxpool_padding_matches_opencv(tmp_path: Path, size: int, pool: int, stride: int) -> None:
    body = conv(8) + f"[maxpool]\nsize={pool}\nstride={stride}\n\n"
    cfg_path, w_path = _synthetic(tmp_path, body, size=size)
    _assert_opencv_parity(cfg_path, w_path)


def _darknet_activation_np(x: np.ndarray, kind: str) -> np.ndarray:
    """Straight from AlexeyAB activations.h, in float64: an independent check for the
    activations OpenCV's importer does not implement."""
    x = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-x))
    return {
        "linear": x, "leaky": np.where(x > 0, x, 0.1 * x), "relu": np.maximum(x, 0),
        "relu6": np.clip(x, 0, 6), "logistic": sig, "tanh": np.tanh(x), "swish": x * sig,
        "mish": x * np.tanh(np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))),
        "hard_mish": np.where(x > 0, x, np.where(x > -2, x * x / 2 + x, 0)),
        "elu": np.where(x >= 0, x, np.exp(x) - 1),
        "selu": np.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * (np.exp(x) - 1)),
        "gelu": 0.5 * x * (1 + np.tanh(0.797885 * x + 0.035677 * x ** 3)),
        "relie": np.where(x > 0, x, 0.01 * x), "ramp": x * (x > 0) + 0.1 * x,
        "loggy": 2 * sig - 1, "hardtan": np.clip(x, -1, 1),
        "lhtan": np.where(x < 0, 0.001 * x, np.where(x > 1, 0.001 * (x - 1) + 1, x)),
    }[kind]


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation(tmp_path: Path, act: str) -> None:
    body = conv(8, a=act)
    cfg_path, w_path = _synthetic(tmp_path, body)
    if opencv_supports(cfg_path)[0]:
        _assert_opencv_parity(cfg_path, w_path)
        return
    # OpenCV lacks it: compare the activation layer against Darknet's formula applied to the
    # same model built with a linear activation (everything else is OpenCV-checked above).
    lin_path = tmp_path / "linear.cfg"
    lin_path.write_text(cfg_path.read_text().replace(f"activation={act}", "activation=linear", 1))
    cfg, lin = parse_cfg(cfg_path), parse_cfg(lin_path)
    w = read_weights(w_path, cfg)
    batch, _ = parity_images(None, 32, 32, False, limit=2)
    import keras
    m_act, _ = build_keras(cfg, w)
    m_lin, _ = build_keras(lin, read_weights(w_path, lin))
    pre = keras.Model(m_lin.input, m_lin.get_layer("L000_conv").output).predict(batch, verbose=0)
    got = keras.Model(m_act.input, m_act.get_layer(f"L000_{act}").output).predict(batch, verbose=0)
    want = _darknet_activation_np(pre, act)
    rel = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
    assert rel <= PARITY_TOLERANCE, (act, rel)


def test_float_tflite_matches_keras_on_synthetic(tmp_path: Path) -> None:
    cfg_path, w_path = _synthetic(tmp_path, SYNTHETIC["route_groups"] + conv(8, a="mish"))
    cfg = parse_cfg(cfg_path)
    model, _ = build_keras(cfg, read_weights(w_path, cfg))
    meta = decode_metadata(cfg)
    from darknet2tflite.tflite.export import head_tensor_names
    data = convert(model)
    it = interpreter(data)
    for h, t in zip(meta["heads"], head_tensor_names(it, list(model.output_names),
                                                     [h["output"] for h in meta["heads"]])):
        h["tflite_output"] = t
    batch, _ = parity_images(None, 32, 32, False, limit=2)
    rows = compare_heads(_keras_heads(cfg_path, w_path, batch), run_tflite(it, batch, meta))
    assert max(r.max_rel for r in rows) <= PARITY_TOLERANCE


def _layer_output(cfg_path: Path, w_path: Path, layer: str, batch: np.ndarray) -> np.ndarray:
    import keras
    cfg = parse_cfg(cfg_path)
    model, _ = build_keras(cfg, read_weights(w_path, cfg))
    return keras.Model(model.input, model.get_layer(layer).output).predict(batch, verbose=0)


def test_stride_x_y(tmp_path: Path) -> None:
    """OpenCV ignores stride_x/stride_y, so check against the OpenCV-verified stride-1 conv:
    with Darknet's symmetric padding, output (y, x) of strides (sy, sx) is the stride-1
    output at (y*sy, x*sx)."""
    body = conv(8) + "[convolutional]\nfilters=8\nsize=3\nstride_x=2\nstride_y=1\npad=1\n" \
                     "activation=linear\n\n"
    cfg_path, w_path = _synthetic(tmp_path, body)
    assert parse_cfg(cfg_path).layers[1].params["out_shape"] == (32, 16, 8)
    one = tmp_path / "stride1.cfg"
    one.write_text(cfg_path.read_text().replace("stride_x=2\nstride_y=1\n", ""))
    _assert_opencv_parity(one, w_path)
    batch, _ = parity_images(None, 32, 32, False, limit=2)
    full = _layer_output(one, w_path, "L001_conv", batch)
    strided = _layer_output(cfg_path, w_path, "L001_conv", batch)
    np.testing.assert_allclose(strided, full[:, ::1, ::2], rtol=0, atol=1e-5)


def test_dilation(tmp_path: Path) -> None:
    """OpenCV's importer ignores dilation; a dilated 3x3 conv equals a 5x5 conv whose kernel
    has zeros between the taps, which OpenCV does import: compare against that."""
    body = conv(8) + "[convolutional]\nfilters=8\nsize=3\npad=1\ndilation=2\n" \
                     "activation=leaky\n\n"
    cfg_path, w_path = _synthetic(tmp_path, body)
    cfg = parse_cfg(cfg_path)
    w = read_weights(w_path, cfg)
    wide_cfg_path = tmp_path / "wide.cfg"
    wide_cfg_path.write_text(cfg_path.read_text().replace("size=3\npad=1\ndilation=2", "size=5\npad=1"))
    wide = parse_cfg(wide_cfg_path)
    layers = {i: lw for i, lw in w.layers.items()}
    k = layers[1].weights
    k5 = np.zeros(k.shape[:2] + (5, 5), np.float32)
    k5[:, :, ::2, ::2] = k
    layers[1].weights = k5
    wide_w = tmp_path / "wide.weights"
    write_weights(wide_w, wide, layers)
    _assert_opencv_parity(wide_cfg_path, wide_w)
    batch, _ = parity_images(None, 32, 32, False, limit=2)
    rows = compare_heads(_keras_heads(wide_cfg_path, wide_w, batch),
                         _keras_heads(cfg_path, w_path, batch))
    assert max(r.max_rel for r in rows) <= PARITY_TOLERANCE
