"""Tests for the OpenCV DNN Darknet reference (darknet2tflite.reference.opencv).

Real-model tests use the shared official weights; synthetic tests compare
against a small numpy transcription of Darknet's forward pass so that the
corrections (BN epsilon, Darknet defaults) are checked for exactness, not only
for having an effect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from darknet2tflite.reference import opencv as ref  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CFG_DIR = SHARED / "darknet" / "cfg"
WEIGHTS_DIR = SHARED / "darknet" / "weights"

needs_shared = pytest.mark.skipif(
    not (WEIGHTS_DIR / "yolov4-tiny.weights").is_file(),
    reason=f"shared real models not found under {SHARED} (see ../shared/README.md)",
)

REAL_MODELS = [
    ("yolov4-tiny.cfg", "yolov4-tiny.weights"),
    ("yolov3-tiny.cfg", "yolov3-tiny.weights"),
    ("yolov3-tiny.mask123.cfg", "yolov3-tiny.weights"),
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _load_image(name: str, size: int = 416) -> np.ndarray:
    """Darknet 'stretch' preprocessing: resize to the net size, RGB, /255, NHWC batch of 1."""
    bgr = cv2.imread(str(SHARED / "images" / "samples" / name))
    assert bgr is not None, name
    rgb = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    return (rgb.astype(np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def dog() -> np.ndarray:
    return _load_image("dog.jpg")


@pytest.fixture(scope="module")
def v4tiny_heads(dog: np.ndarray) -> list[np.ndarray]:
    return ref.opencv_heads(CFG_DIR / "yolov4-tiny.cfg", WEIGHTS_DIR / "yolov4-tiny.weights", dog)


# --------------------------------------------------------------------------- real models


@needs_shared
@pytest.mark.parametrize("cfg,weights", REAL_MODELS)
def test_real_model_head_shapes(cfg: str, weights: str, dog: np.ndarray) -> None:
    assert ref.opencv_supports(CFG_DIR / cfg) == (True, "ok")
    heads = ref.opencv_heads(CFG_DIR / cfg, WEIGHTS_DIR / weights, dog)
    assert [h.shape for h in heads] == [(1, 13, 13, 255), (1, 26, 26, 255)]
    assert all(h.dtype == np.float32 and np.isfinite(h).all() for h in heads)


@needs_shared
def test_mask123_changes_only_second_head(dog: np.ndarray) -> None:
    # Same weights, the cfgs differ only in the second [yolo] mask: raw heads must be identical.
    a = ref.opencv_heads(CFG_DIR / "yolov3-tiny.cfg", WEIGHTS_DIR / "yolov3-tiny.weights", dog)
    b = ref.opencv_heads(CFG_DIR / "yolov3-tiny.mask123.cfg", WEIGHTS_DIR / "yolov3-tiny.weights", dog)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@needs_shared
def test_bn_eps_fix_changes_heads_measurably(dog: np.ndarray, v4tiny_heads: list[np.ndarray]) -> None:
    cfg, weights = CFG_DIR / "yolov4-tiny.cfg", WEIGHTS_DIR / "yolov4-tiny.weights"
    net = ref.opencv_net(cfg, weights, darknet_bn_eps=False)
    net.setInput(np.ascontiguousarray(dog.transpose(0, 3, 1, 2)))
    unfixed = net.forward(ref.opencv_head_layers(cfg))
    for fixed, raw in zip(v4tiny_heads, unfixed):
        rel = np.abs(fixed - raw).max() / np.abs(fixed).max()
        assert 1e-5 < rel < 1e-3, rel  # measured 6.4e-5 and 8.2e-5


@needs_shared
def test_raw_heads_consistent_with_opencv_decode(dog: np.ndarray, v4tiny_heads: list[np.ndarray]) -> None:
    """OpenCV's own Region output is a function of our raw head: row (y*W + x)*A + a."""
    cfg = CFG_DIR / "yolov4-tiny.cfg"
    net = ref.opencv_net(cfg, WEIGHTS_DIR / "yolov4-tiny.weights")
    net.setInput(np.ascontiguousarray(dog.transpose(0, 3, 1, 2)))
    decoded = net.forward(ref.opencv_decoded_layers(cfg))
    anchors = np.array([10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319], np.float64).reshape(-1, 2)
    for raw, dec, mask in zip(v4tiny_heads, decoded, ([3, 4, 5], [1, 2, 3])):
        _, h, w, _ = raw.shape
        r = raw[0].reshape(h, w, 3, 85)
        assert dec.shape == (h * w * 3, 85)
        obj = _sigmoid(r[..., 4]).reshape(-1)
        np.testing.assert_allclose(dec[:, 4], obj, atol=1e-6)
        # x centre with scale_x_y = 1.05, relative to the grid width
        cx = (np.arange(w)[None, :, None] + _sigmoid(r[..., 0]) * 1.05 - 0.025) / w
        np.testing.assert_allclose(dec[:, 0], cx.reshape(-1), atol=1e-6)
        bw = np.exp(r[..., 2].astype(np.float64)) * anchors[mask, 0] / 416
        np.testing.assert_allclose(dec[:, 2], bw.reshape(-1), rtol=1e-5)
        # class columns: objectness * sigmoid(class), zeroed below the layer's thresh (0.2)
        cls = _sigmoid(r[..., 5:]).reshape(-1, 80) * obj[:, None]
        kept = dec[:, 5:] != 0
        np.testing.assert_allclose(dec[:, 5:][kept], cls[kept], atol=1e-6)
        assert (cls[~kept] < 0.2 + 1e-6).all()


@needs_shared
def test_dog_detections(dog: np.ndarray) -> None:
    cfg = CFG_DIR / "yolov4-tiny.cfg"
    names = (CFG_DIR / "coco.names").read_text().split("\n")
    net = ref.opencv_net(cfg, WEIGHTS_DIR / "yolov4-tiny.weights")
    net.setInput(np.ascontiguousarray(dog.transpose(0, 3, 1, 2)))
    rows = np.concatenate(net.forward(ref.opencv_decoded_layers(cfg)))
    scores = rows[:, 5:]
    cls = scores.argmax(1)
    conf = scores[np.arange(len(rows)), cls]
    keep = conf > 0.25
    boxes = [[float((x - bw / 2) * 416), float((y - bh / 2) * 416), float(bw * 416), float(bh * 416)] for x, y, bw, bh in rows[keep, :4]]
    idx = np.asarray(cv2.dnn.NMSBoxesBatched(boxes, conf[keep].tolist(), cls[keep].tolist(), 0.25, 0.45)).reshape(-1)
    found = {names[c]: float(s) for c, s in zip(cls[keep][idx], conf[keep][idx])}
    assert {"dog", "truck", "bicycle"} <= set(found), found
    # shared/README.md reference: dog 0.87, truck 0.81, bicycle 0.61
    assert found["dog"] == pytest.approx(0.87, abs=0.02)
    assert found["truck"] == pytest.approx(0.81, abs=0.02)
    assert found["bicycle"] == pytest.approx(0.61, abs=0.02)


@needs_shared
def test_batch_equals_single_images(v4tiny_heads: list[np.ndarray]) -> None:
    cfg, weights = CFG_DIR / "yolov4-tiny.cfg", WEIGHTS_DIR / "yolov4-tiny.weights"
    person = _load_image("person.jpg")
    both = ref.opencv_heads(cfg, weights, np.concatenate([_load_image("dog.jpg"), person]))
    alone = ref.opencv_heads(cfg, weights, person)
    for pair, dog_head, person_head in zip(both, v4tiny_heads, alone):
        assert pair.shape[0] == 2
        np.testing.assert_array_equal(pair[0], dog_head[0])
        np.testing.assert_array_equal(pair[1], person_head[0])


@needs_shared
def test_bad_batch_rejected() -> None:
    cfg, weights = CFG_DIR / "yolov4-tiny.cfg", WEIGHTS_DIR / "yolov4-tiny.weights"
    with pytest.raises(ValueError, match="NHWC"):
        ref.opencv_heads(cfg, weights, np.zeros((1, 3, 416, 416), np.float32))
    with pytest.raises(TypeError):
        ref.opencv_heads(cfg, weights, np.zeros((1, 416, 416, 3), np.float64))


def test_shared_cfgs_supported() -> None:
    if not CFG_DIR.is_dir():
        pytest.skip(f"shared cfgs not found under {CFG_DIR}")
    for cfg in ("yolov4-tiny.cfg", "yolov3-tiny.cfg", "yolov3-tiny.mask123.cfg", "yolov4.cfg", "yolov3.cfg"):
        assert ref.opencv_supports(CFG_DIR / cfg) == (True, "ok"), cfg


# --------------------------------------------------------------------------- synthetic nets

NET = "[net]\nwidth={w}\nheight={h}\nchannels=3\n\n"
YOLO = "[yolo]\nmask=0\nanchors=4,4\nclasses=1\nnum=1\n"


class _Weights:
    """Random Darknet weights, recorded in file order while the numpy forward consumes them."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.parts: list[np.ndarray] = []

    def take(self, n: int, lo: float, hi: float) -> np.ndarray:
        v = self.rng.uniform(lo, hi, n).astype(np.float32)
        self.parts.append(v)
        return v.astype(np.float64)

    def to_bytes(self) -> bytes:
        header = np.array([0, 2, 5], np.int32).tobytes() + np.uint64(0).tobytes()
        return header + np.concatenate(self.parts).tobytes()


_ACT = {
    "linear": lambda x: x,
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "logistic": lambda x: 1.0 / (1.0 + np.exp(-x)),
}


def _darknet_forward(sections: list[tuple[str, dict[str, str]]], x: np.ndarray, wts: _Weights) -> list[np.ndarray]:
    """Darknet (AlexeyAB) inference for the few layer types used below, float64, NCHW."""
    t = x.transpose(0, 3, 1, 2).astype(np.float64)
    outs: list[np.ndarray] = []
    heads: list[np.ndarray] = []
    for i, (kind, o) in enumerate(sections):
        if kind == "convolutional":
            f, k = int(o["filters"]), int(o["size"])
            pad = k // 2 if o.get("pad") == "1" else 0
            bias = wts.take(f, -0.2, 0.2)
            if o.get("batch_normalize") == "1":
                scale, mean, var = wts.take(f, 0.5, 1.5), wts.take(f, -0.1, 0.1), wts.take(f, 5e-4, 5e-3)
            w = wts.take(f * t.shape[1] * k * k, -0.5, 0.5).reshape(f, t.shape[1], k, k)
            tp = np.pad(t, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            oh, ow = tp.shape[2] - k + 1, tp.shape[3] - k + 1
            y = sum(
                np.einsum("nchw,fc->nfhw", tp[:, :, dy : dy + oh, dx : dx + ow], w[:, :, dy, dx])
                for dy in range(k)
                for dx in range(k)
            )
            if o.get("batch_normalize") == "1":
                y = (y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * scale[:, None, None]
            t = _ACT[o.get("activation", "logistic")](y + bias[:, None, None])
        elif kind == "maxpool":  # size = stride = 2, Darknet padding = size - 1 (right/bottom)
            n, c, h, w_ = t.shape
            tp = np.pad(t, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-np.inf)
            t = np.max([tp[:, :, dy : dy + h : 2, dx : dx + w_ : 2] for dy in (0, 1) for dx in (0, 1)], axis=0)
        elif kind == "upsample":
            s = int(o.get("stride", "2"))
            t = t.repeat(s, axis=2).repeat(s, axis=3)
        elif kind == "route":
            t = np.concatenate([outs[int(v) + i if int(v) < 0 else int(v)] for v in o["layers"].split(",")], axis=1)
        elif kind == "shortcut":
            t = _ACT[o.get("activation", "linear")](t + outs[int(o["from"]) + i])
        elif kind == "yolo":
            heads.append(t.transpose(0, 2, 3, 1))
        outs.append(t)
    return heads


def _cfg_text(sections: list[tuple[str, dict[str, str]]], w: int, h: int) -> str:
    body = "".join(f"[{k}]\n" + "".join(f"{a}={b}\n" for a, b in o.items()) + "\n" for k, o in sections)
    return NET.format(w=w, h=h) + body


def _conv(f: int, size: int = 3, act: str | None = "leaky", bn: bool = True) -> tuple[str, dict[str, str]]:
    o = {"filters": str(f), "size": str(size), "stride": "1", "pad": "1"}
    if bn:
        o["batch_normalize"] = "1"
    if act is not None:
        o["activation"] = act
    return ("convolutional", o)


_HEAD = [_conv(6, 1, "linear", bn=False), ("yolo", {"mask": "0", "anchors": "4,4", "classes": "1", "num": "1"})]

SYNTHETIC = {
    # plain conv-bn-leaky; small BN variances make the 1e-5 vs 1e-6 eps difference large
    "conv_bn_leaky": [_conv(8), *_HEAD],
    # Darknet defaults OpenCV gets wrong: conv activation (logistic), maxpool size, upsample stride;
    # and a head fed by a [route] instead of a conv
    "defaults_and_route_head": [
        _conv(8, act=None),
        ("maxpool", {"stride": "2"}),
        ("upsample", {}),
        _conv(6, 1, "linear", bn=False),
        _conv(4),
        ("route", {"layers": "-2"}),
        ("yolo", {"mask": "0", "anchors": "4,4", "classes": "1", "num": "1"}),
    ],
    # head fed by a [shortcut]; two heads
    "shortcut_head_two_heads": [
        _conv(6),
        _conv(6, 1, "linear", bn=False),
        ("shortcut", {"from": "-2", "activation": "linear"}),
        ("yolo", {"mask": "0", "anchors": "4,4", "classes": "1", "num": "1"}),
        ("route", {"layers": "-4,-3"}),
        *_HEAD,
    ],
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_matches_darknet_formula(name: str, tmp_path: Path) -> None:
    sections = SYNTHETIC[name]
    h, w = 16, 24
    x = np.random.default_rng(1).random((3, h, w, 3), dtype=np.float32)
    wts = _Weights(seed=0)
    expected = _darknet_forward(sections, x, wts)
    cfg, weights = tmp_path / "net.cfg", tmp_path / "net.weights"
    cfg.write_text(_cfg_text(sections, w, h))
    weights.write_bytes(wts.to_bytes())
    assert ref.opencv_supports(cfg) == (True, "ok")
    got = ref.opencv_heads(cfg, weights, x)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert np.abs(g - e).max() / np.abs(e).max() < 2e-6
    if any(o.get("batch_normalize") == "1" for _, o in sections):
        # without the eps correction OpenCV is visibly off for small variances
        net = ref.opencv_net(cfg, weights, darknet_bn_eps=False)
        net.setInput(np.ascontiguousarray(x[:1].transpose(0, 3, 1, 2)))
        raw = net.forward(ref.opencv_head_layers(cfg))
        assert max(np.abs(r[0] - e[0]).max() / np.abs(e[0]).max() for r, e in zip(raw, expected)) > 1e-4


# --------------------------------------------------------------------------- support matrix


def _write(tmp_path: Path, body: str, weights_floats: int = 4096) -> tuple[Path, Path]:
    cfg, weights = tmp_path / "t.cfg", tmp_path / "t.weights"
    cfg.write_text(NET.format(w=16, h=16) + body)
    rng = np.random.default_rng(0)
    weights.write_bytes(
        np.array([0, 2, 5], np.int32).tobytes() + np.uint64(0).tobytes() + rng.normal(0, 0.1, weights_floats).astype(np.float32).tobytes()
    )
    return cfg, weights


def _conv_act(act: str) -> str:
    return f"[convolutional]\nfilters=6\nsize=1\nstride=1\npad=1\nactivation={act}\n\n" + YOLO


@pytest.mark.parametrize(
    "act",
    ["linear", "leaky", "relu", "logistic", "tanh", "mish", "swish", "hard_mish", "elu", "selu", "gelu", "relu6", "relie", "ramp"],
)
def test_activation_support_agrees_with_importer(act: str, tmp_path: Path) -> None:
    """opencv_supports() must never promise what OpenCV's importer refuses."""
    cfg, weights = _write(tmp_path, _conv_act(act))
    ok, reason = ref.opencv_supports(cfg)
    try:
        cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        imported = True
    except cv2.error:
        imported = False
    assert ok == imported == (act in ref.SUPPORTED_ACTIVATIONS), reason
    if not ok:
        assert f"activation={act}" in reason


CONV = "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
HEAD = "[convolutional]\nfilters=6\nsize=1\nstride=1\npad=1\nactivation=linear\n\n" + YOLO


@pytest.mark.parametrize(
    "body,needle",
    [
        ("[convolutional]\nfilters=8\nsize=3\nstride=1\npad=1\ndilation=2\nactivation=leaky\n\n" + HEAD, "dilation"),
        ("[convolutional]\nfilters=8\nsize=3\nstride_x=2\nstride_y=1\npad=1\nactivation=leaky\n\n" + HEAD, "stride_x"),
        (CONV + "[maxpool]\nsize=2\nstride_x=2\nstride_y=1\n\n" + HEAD, "stride_x"),
        (CONV + "[upsample]\nstride=2\nscale=0.5\n\n" + HEAD, "scale"),
        (CONV + CONV + "[shortcut]\nfrom=-2\nweights_type=per_feature\nactivation=linear\n\n" + HEAD, "weights_type"),
        (CONV + CONV + "[route]\nlayers=-1,-2\ngroups=2\ngroup_id=1\n\n" + HEAD, "groups"),
        (CONV + CONV + "[route]\nlayers=-1,-2\nactivation=leaky\n\n" + HEAD, "activation"),
        (CONV + "[local_avgpool]\nsize=2\nstride=2\n\n" + HEAD, "[local_avgpool]"),
        (CONV + "[reorg3d]\nstride=2\n\n" + HEAD, "[reorg3d]"),
        (CONV + "[connected]\noutput=6\nactivation=linear\n\n" + YOLO, "[connected]"),
        (CONV + HEAD.replace("anchors=4,4", "anchors=4,4,8,8"), "anchor"),
        (CONV + "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n", "no [yolo]"),
        (CONV + "[shortcut]\nfrom=-1,-1\n\n" + HEAD, "from"),
        (CONV + "[avgpool]\n\n" + HEAD, None),  # supported, sanity check of the matrix itself
    ],
)
def test_unsupported_constructs_are_refused(body: str, needle: str | None, tmp_path: Path) -> None:
    cfg, weights = _write(tmp_path, body)
    ok, reason = ref.opencv_supports(cfg)
    if needle is None:
        assert ok, reason
        return
    assert not ok and needle in reason, reason
    with pytest.raises(ref.OpenCVUnsupportedError):
        ref.opencv_heads(cfg, weights, np.zeros((1, 16, 16, 3), np.float32))
