"""Error-feedback rounding of the heads' box weights ahead of int8 conversion.

Why: the converter rounds every weight to its nearest int8 level (per output channel,
symmetric, max|w| / 127). That is the best choice per weight, not for the layer's output: the
errors of 512 weights add up in each output value. Rounding only the weights (activations
float) costs yolov4-tiny 0.89 AP / 0.62 AP50, and the heads' final 1x1 box convolutions
(x, y, w, h per anchor) carry about 70 % of the w/h error that causes (docs/int8.md, "The
floor"); AP@[.5:.95] reacts almost only to w/h error, and nothing after these layers averages
their error out. Rounding their weights one at a time and spreading each rounding error over
the weights not yet rounded, in proportion to the covariance of the layer's inputs on the
calibration photos (the GPTQ / Optimal Brain Quantization update), keeps them on the same
int8 grid with a lower output error.

The kernels are written back already on the converter's grid (each channel's largest weight is
rounded first, so it stays at +-127 and the converter derives the same scale), so the
converter reproduces them exactly; only these few output channels (4 per anchor) change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import numpy as np

#: int8 weights are symmetric in [-127, 127] (TFLite's narrow range)
QMAX = 127
#: calibration images whose float layer inputs give the input covariance
STAT_IMAGES = 32
#: added to the covariance's diagonal, as a fraction of its mean: inputs that are copies of
#: each other (channel split) or constant make it singular
DAMPING = 0.01
#: with few samples per input (a calibration set of a handful of photos) the covariance is
#: a poor estimate and error feedback fitted to it does worse than nearest rounding on
#: other photos (yolov4-tiny, 1 photo: box error 1.23x nearest); the damping then grows as
#: SCARCITY * (inputs / samples)^2, which leaves sets of 16 photos and more unchanged
SCARCITY = 0.11
#: input vectors per photo entering a covariance (evenly spaced output positions)
MAX_ROWS = 4096
#: model outputs whose feeding convolution is rounded this way (rewrites/head_split.py names)
BOX_SUFFIX = "_box"
#: a layer rounded in each output channel's own weight order costs one Cholesky factor per
#: channel, inputs^3 / 3 flops each; above this many flops for the layer (~10 s here) one
#: order serves all its channels (:func:`feedback_round_layer`), so a 3x3 convolution over
#: 512 channels (4608 inputs x 1024 outputs: ~3e13 flops, hours) stays in seconds
PER_CHANNEL_MAX_FLOPS = 2e11

Progress = Callable[[str], None]


@dataclass
class BoxRoundingReport:
    """Per rounded layer: its output's mean squared error from int8 weights on the statistics
    images, with error feedback relative to nearest rounding."""
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def channel_scale(kernel: "np.ndarray", axes: tuple[int, ...] = (0,)) -> "np.ndarray":
    """The converter's per-channel weight scale, max|w| / 127 over ``axes`` (the axes that
    are not the output channel; kept as size-1 dimensions), in the kernel's dtype; 1 for an
    all-zero channel."""
    import numpy as np
    scale = np.abs(kernel).max(axis=axes, keepdims=True) / QMAX
    scale[scale == 0] = 1.0
    return scale


def nearest(w: "np.ndarray", scale: "np.ndarray") -> "np.ndarray":
    """The converter's rounding: nearest level, half away from zero, within +-127."""
    import numpy as np
    x = w / scale
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), -QMAX, QMAX) * scale


def damping(inputs: int, samples: int) -> float:
    """Diagonal damping (fraction of the mean) for a covariance of ``inputs`` channels
    estimated from ``samples`` input vectors (pixels x photos)."""
    return min(1.0, max(DAMPING, SCARCITY * (inputs / max(samples, 1)) ** 2))


def feedback_round(kernel: "np.ndarray", hessian: "np.ndarray", damp: float = DAMPING,
                   shared_inverse: bool = False) -> "np.ndarray":
    """``kernel`` (inputs, outputs) rounded to the int8 grid of each output channel (scale
    max|w| / 127) with error feedback through ``hessian`` (the inputs' second moment),
    ``damp`` times its mean diagonal added to its diagonal.

    ``shared_inverse``: invert the damped matrix once and permute the inverse per channel
    (the inverse of a permuted matrix is the permuted inverse) instead of inverting per
    channel: the same rounding up to float round-off, half the time for layers with many
    outputs (the equalized layers' consumers). The box convolutions keep the per-channel
    inversion their figures were measured with."""
    import numpy as np
    w = np.asarray(kernel, dtype=np.float64)
    n_in, n_out = w.shape
    scale = channel_scale(w)[0]
    h = np.asarray(hessian, dtype=np.float64)
    h = h + np.eye(n_in) * damp * max(float(np.mean(np.diag(h))), 1e-12)
    h_inv = np.linalg.inv(h) if shared_inverse else None
    out = np.empty_like(w)
    for c in range(n_out):
        order = np.argsort(-np.abs(w[:, c]), kind="stable")  # largest first: stays at +-127
        # upper Cholesky factor of the inverse: row i holds how the still unrounded weights
        # absorb weight i's rounding error
        inv = h_inv[np.ix_(order, order)] if h_inv is not None else \
            np.linalg.inv(h[np.ix_(order, order)])
        u = np.linalg.cholesky(inv).T
        v = w[order, c].copy()
        q = np.empty(n_in)
        for i in range(n_in):
            q[i] = nearest(v[i], scale[c])
            v[i + 1:] -= (v[i] - q[i]) / u[i, i] * u[i, i + 1:]
        out[order, c] = q
    return out.astype(np.float32)


def feedback_round_layer(kernel: "np.ndarray", hessian: "np.ndarray", damp: float = DAMPING
                         ) -> "np.ndarray":
    """:func:`feedback_round` for a whole layer at once: one input order for every output
    channel (largest second moment first), so one Cholesky factor serves them all and each
    step updates every channel together. Each channel's largest weight is already on its
    grid point (+-127 steps) and is held there (never updated), so the converter derives the
    same scale and keeps the weights exactly."""
    import numpy as np
    w = np.asarray(kernel, dtype=np.float64).copy()
    n_in, n_out = w.shape
    scale = channel_scale(w)[0]
    h = np.asarray(hessian, dtype=np.float64)
    h = h + np.eye(n_in) * damp * max(float(np.mean(np.diag(h))), 1e-12)
    order = np.argsort(-np.diag(h), kind="stable")
    w = w[order]
    held = np.zeros_like(w, dtype=bool)
    held[np.argmax(np.abs(w), axis=0), np.arange(n_out)] = True
    pinned = w[held]
    u = np.linalg.cholesky(np.linalg.inv(h[np.ix_(order, order)])).T
    q = np.empty_like(w)
    for i in range(n_in):
        q[i] = nearest(w[i], scale)
        if i + 1 < n_in:
            w[i + 1:] -= np.outer(u[i, i + 1:] / u[i, i], w[i] - q[i])
            w[held] = pinned
    out = np.empty_like(q)
    out[order] = q
    return out.astype(np.float32)


def per_channel_affordable(n_in: int, n_out: int) -> bool:
    """Whether a layer's rounding can take each output channel's own weight order."""
    return n_in ** 3 / 3 * n_out <= PER_CHANNEL_MAX_FLOPS


def box_convs(model: Any) -> list[Any]:
    """The 1x1, ungrouped, linear convolutions that feed a model output named ``*_box``,
    directly or through an elementwise Darknet activation (logistic heads): their output,
    the box logits, is what the rounding keeps close."""
    import keras

    from darknet2tflite.model.layers import DarknetActivation
    found = []
    for name in model.output_names:
        if not name.endswith(BOX_SUFFIX):
            continue
        layer = model.get_layer(name)
        history = getattr(layer.input, "_keras_history", None)
        conv = getattr(history, "operation", None)
        while isinstance(conv, (keras.layers.Identity, DarknetActivation)):
            conv = getattr(getattr(conv.input, "_keras_history", None), "operation", None)
        if (isinstance(conv, keras.layers.Conv2D) and conv.kernel_size == (1, 1)
                and conv.strides == (1, 1) and conv.groups == 1
                and conv.get_config().get("activation") in (None, "linear")):
            found.append(conv)
    return found


def _patches(x: "np.ndarray", conv: Any) -> "np.ndarray":
    """The conv's input vectors, one row per output position: (positions, kh * kw * C) in the
    kernel's (kh, kw, C) order, with the conv's own zero padding."""
    import numpy as np
    kh, kw = conv.kernel_size
    sh, sw = conv.strides
    if (kh, kw) == (1, 1) and (sh, sw) == (1, 1):
        return x.reshape(-1, x.shape[-1])
    if conv.get_config().get("padding") == "same":
        pads = []
        for size, k, st in ((x.shape[1], kh, sh), (x.shape[2], kw, sw)):
            total = max((-(-size // st) - 1) * st + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    return np.concatenate(cols, axis=-1).reshape(-1, kh * kw * c)


def round_conv_weights(model: Any, convs: list[Any], images: "np.ndarray",
                       max_images: int = STAT_IMAGES, max_rows: int = MAX_ROWS,
                       per_channel: Sequence[str] = ()) -> tuple[Any, BoxRoundingReport]:
    """(copy of ``model`` whose ``convs`` (ungrouped) hold error-feedback rounded int8
    weights, report); ``model`` itself is left alone. Without convs or images: (model, empty).
    At most ``max_rows`` input vectors per photo enter a covariance (evenly spaced output
    positions): a 104x104 map gives 10816, far more than its inputs need. The ``per_channel``
    named convs (the box convolutions) invert the covariance per output channel, the others
    once (``feedback_round(shared_inverse=True)``), or share one rounding order where a
    per-channel order would cost too much (``PER_CHANNEL_MAX_FLOPS``)."""
    import keras
    import numpy as np
    report = BoxRoundingReport()
    stats = np.asarray(images[:max_images], dtype=np.float32)
    if not convs or len(stats) == 0:
        return model, report
    report.images = len(stats)
    # convolutions reading the same tensor with the same window share one covariance
    def key(conv: Any) -> tuple:
        return (id(conv.input), tuple(conv.kernel_size), tuple(conv.strides),
                conv.get_config().get("padding"))
    first: dict[tuple, Any] = {}
    for conv in convs:
        first.setdefault(key(conv), conv)
    tensors: dict[int, Any] = {}
    for conv in first.values():
        tensors.setdefault(id(conv.input), conv.input)
    order = list(tensors)
    probe = keras.Model(model.inputs, [tensors[k] for k in order])
    moments: dict[tuple, Any] = {k: 0.0 for k in first}
    count = dict.fromkeys(first, 0)
    for start in range(0, len(stats), 8):
        outs = probe(stats[start:start + 8], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        by_tensor = dict(zip(order, outs))
        for k, conv in first.items():
            o = np.asarray(by_tensor[id(conv.input)], dtype=np.float32)
            for b in range(len(o)):
                x = _patches(o[b:b + 1], conv)
                if len(x) > max_rows:
                    x = x[np.linspace(0, len(x) - 1, max_rows).astype(int)]
                x = x.astype(np.float64)
                moments[k] = moments[k] + x.T @ x
                count[k] += len(x)
    new = keras.models.clone_model(model)
    new.set_weights(model.get_weights())
    for conv in convs:
        k = key(conv)
        h = moments[k] / count[k]
        kernel, *rest = conv.get_weights()
        flat = kernel.reshape(-1, kernel.shape[-1])
        damp = damping(len(h), count[k])
        if conv.name in per_channel or per_channel_affordable(*flat.shape):
            q = feedback_round(flat, h, damp, shared_inverse=conv.name not in per_channel)
            order = "per channel"
        else:
            q = feedback_round_layer(flat, h, damp)
            order = "layer"
        w = flat.astype(np.float64)
        # per output channel: E[(dW x)^2] over the statistics images; the converter's scale
        # is float32, as the kernel
        e_plain, e_fb = (np.einsum("ic,ij,jc->c", d, h, d)
                         for d in (nearest(w, channel_scale(flat)) - w, q - w))
        new.get_layer(conv.name).set_weights([q.reshape(kernel.shape)] + rest)
        report.layers[conv.name] = {
            "output_mse_nearest": float(e_plain.mean()),
            "output_mse_feedback": float(e_fb.mean()),
            "ratio": round(float(e_fb.sum() / max(e_plain.sum(), 1e-30)), 3),
            "damping": round(damp, 4), "order": order}
    return new, report


def round_box_weights(model: Any, images: "np.ndarray", max_images: int = STAT_IMAGES,
                      progress: Progress | None = None, extra: Sequence[str] = (),
                      boxes: bool = True) -> tuple[Any, BoxRoundingReport]:
    """(copy of ``model`` whose box convolutions (with ``boxes``) and the ``extra`` named ones
    hold error-feedback rounded int8 weights, report); ``model`` itself is left alone."""
    convs = box_convs(model) if boxes else []
    names = {c.name for c in convs}
    convs += [model.get_layer(n) for n in extra if n not in names]
    new, report = round_conv_weights(model, convs, images, max_images,
                                     per_channel=[c.name for c in box_convs(model)])
    if progress and report.layers:
        progress(f"int8: weights rounded with error feedback: {describe(report.to_dict())}")
    return new, report


def describe(report: dict[str, Any]) -> str:
    """One line for report.md, from ``BoxRoundingReport.to_dict()``."""
    layers = report.get("layers") or {}
    if not layers:
        return "not applied (no box outputs)"
    nearest_mse = sum(v["output_mse_nearest"] for v in layers.values())
    feedback_mse = sum(v["output_mse_feedback"] for v in layers.values())
    return (f"{len(layers)} convolution(s); output error from int8 weights "
            f"{100 * feedback_mse / max(nearest_mse, 1e-30):.0f} % of nearest rounding "
            f"on the {report.get('images', 0)} calibration images it was fitted to")
