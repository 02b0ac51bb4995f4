"""Cross-layer range equalization ahead of int8 calibration: the outlier channels' range
moved into the consumer's weights, at no MAC.

Why: TFLite quantizes an activation tensor with one scale, and in the first layers of YOLO
models a few channels reach several times the median channel's values (yolov4-tiny layer 0:
per-channel maxima ~7..50), so most channels keep a fraction of the 256 levels. Scaling
output channel c of a convolution by s_c > 0 (its weights and bias) and the matching input
weights of every consumer by 1 / s_c is exact in float when everything between them
commutes with a positive per-channel scale (linear / relu / leaky activations, zero padding,
max pooling: the same graph condition as channel splitting, ``channel_split.find_candidates``).
The producer loses nothing (per-channel weight scales follow its weights); the consumer's
per-output-channel weight scale grows with the largest 1 / s_c, which is the cost.

So the scales are chosen per layer by an error model, not by a fixed rule: for each
consumer output channel o, with r_c the channel's range, q_c its mean square after the
activation, W_co the consumer's weights and K the kernel taps,

    activation rounding   max_c(s_c r_c)^2 / 255^2 * sum_c |W_co|^2 / s_c^2
    weight rounding       max_c(max|W_co| / s_c)^2 / 254^2 * K * sum_c s_c^2 q_c

(uniform rounding noise of the tensor step and of the weight step through the consumer's
dot product). Candidate scales shrink every channel above a threshold T towards it,
s_c = min(1, T / r_c)^alpha; the (T, alpha) with the lowest summed error is applied when it
cuts the layer's error to ``MAX_ERROR_RATIO`` of the unscaled one or less. Layers are done in
graph order on the already-scaled weights, and the result is checked against the original
in float.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from darknet2tflite.int8.channel_split import (
    FLOAT_TOLERANCE, Candidate, _children, _max_rel_diff, _outputs, find_candidates)

if TYPE_CHECKING:
    import numpy as np

#: a layer is equalized only if the error model puts it at this fraction or less
MAX_ERROR_RATIO = 0.8
#: calibration images used for the channel statistics
STAT_IMAGES = 16
#: partial equalization exponents searched (1 would scale a channel all the way down to the
#: threshold). The error model sees each channel's maximum, while the MSE-clipped int8 range
#: ignores the rarest values, so it overstates what scaling buys: with exponents up to 1 it
#: chose full equalization, which measured worse on the objectness error than no
#: equalization (yolov4-tiny, both calibration folds); capped at 0.5 it beat channel
#: splitting on objectness and box w/h error (docs/int8.md, "Range equalization").
ALPHAS = (0.25, 0.5)
#: the negative slope of each homogeneous activation (f(z) = z for z > 0, slope * z below)
SLOPES = {"linear": 1.0, "relu": 0.0, "leaky": 0.1}

Progress = Callable[[str], None]


@dataclass
class EqualizeReport:
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChannelStats:
    """What the error model needs of one producer's output, per channel."""
    ranges: "np.ndarray"        # max |conv output| (pre-activation: both signs are quantized)
    mean_square: "np.ndarray"   # E[f(z)^2] of what the consumers read


def _activation_slope(model: Any, producer: str) -> float:
    from darknet2tflite.model.layers import DarknetActivation
    kids = _children(model).get(producer, [])
    if len(kids) == 1 and isinstance(kids[0], DarknetActivation):
        return SLOPES[kids[0].kind]
    return 1.0


def channel_stats(model: Any, cands: Sequence[Candidate], images: "np.ndarray"
                  ) -> list[ChannelStats]:
    import keras
    import numpy as np
    sub = keras.Model(model.inputs, [model.get_layer(c.producer).output for c in cands])
    slopes = [_activation_slope(model, c.producer) for c in cands]
    rng: list[Any] = [None] * len(cands)
    sq: list[Any] = [0.0] * len(cands)
    for i in range(len(images)):
        for j, z in enumerate(_outputs(sub, images[i:i + 1].astype(np.float32))):
            z = z.reshape(-1, z.shape[-1]).astype(np.float64)
            m = np.abs(z).max(axis=0)
            rng[j] = m if rng[j] is None else np.maximum(rng[j], m)
            a = np.where(z > 0, z, slopes[j] * z)
            sq[j] = sq[j] + (a * a).mean(axis=0)
    return [ChannelStats(r, s / max(len(images), 1)) for r, s in zip(rng, sq)]


def layer_error(s: "np.ndarray", r: "np.ndarray", q: "np.ndarray",
                kernels: Sequence["np.ndarray"]) -> float:
    """The error model of the module docstring, summed over every consumer's outputs."""
    import numpy as np
    act_step2 = float((s * r).max()) ** 2 / 255.0 ** 2
    total = 0.0
    for k in kernels:  # (kh, kw, C, O) with input channels already in producer order
        taps = k.shape[0] * k.shape[1]
        w = k / s[None, None, :, None]
        w2 = (w * w).sum(axis=(0, 1))                   # (C, O)
        wmax = np.abs(w).max(axis=(0, 1, 2))            # (O,)
        total += act_step2 * float(w2.sum())
        total += float((wmax ** 2).sum()) / 254.0 ** 2 * taps * float((s * s * q).sum())
    return total


def best_scales(r: "np.ndarray", q: "np.ndarray", kernels: Sequence["np.ndarray"]
                ) -> tuple["np.ndarray", float, float, float]:
    """(scales, threshold, alpha, error ratio) of the lowest modelled error."""
    import numpy as np
    r = np.maximum(np.asarray(r, dtype=np.float64), 1e-12)
    ones = np.ones_like(r)
    base = layer_error(ones, r, q, kernels)
    best = (ones, float(r.max()), 0.0, 1.0)
    if not base > 0:
        return best
    for t in sorted(set(float(v) for v in r)):
        if t >= r.max():
            continue
        for alpha in ALPHAS:
            s = np.minimum(1.0, t / r) ** alpha
            ratio = layer_error(s, r, q, kernels) / base
            if ratio < best[3]:
                best = (s, t, alpha, ratio)
    return best


def equalize_ranges(model: Any, images: "np.ndarray", progress: Progress | None = None
                    ) -> tuple[Any, EqualizeReport]:
    """(model with equalized channel ranges, report); the input model is not modified."""
    import keras
    import numpy as np
    say = progress or (lambda _m: None)
    report = EqualizeReport()
    cands = find_candidates(model)
    if not cands or len(images) == 0:
        report.skipped = "no candidate layers" if not cands else "no calibration images"
        return model, report
    x = np.asarray(images[:STAT_IMAGES], dtype=np.float32)
    stats = channel_stats(model, cands, x)
    weights = {layer.name: [w.copy() for w in layer.get_weights()]
               for layer in model.layers if layer.weights}
    for cand, st in zip(cands, stats):
        kernels = [weights[c][0] for c in cand.consumers]
        s, t, alpha, ratio = best_scales(st.ranges, st.mean_square, kernels)
        if not ratio <= MAX_ERROR_RATIO:
            continue
        s32 = s.astype(np.float32)
        w = weights[cand.producer]
        weights[cand.producer] = [w[0] * s32] + ([w[1] * s32] if len(w) > 1 else [])
        for c in cand.consumers:
            cw = weights[c]
            weights[c] = [cw[0] / s32[None, None, :, None]] + cw[1:]
        report.layers[cand.producer] = {
            "threshold": round(t, 3), "alpha": alpha, "max": round(float(st.ranges.max()), 3),
            "error_ratio": round(ratio, 3), "scaled_channels": int((s < 1).sum()),
            "min_scale": round(float(s.min()), 4), "consumers": list(cand.consumers)}
    if not report.layers:
        report.skipped = "no layer gains"
        return model, report
    new = keras.models.clone_model(model)
    for name, w in weights.items():
        new.get_layer(name).set_weights(w)
    diff = _max_rel_diff(model, new, x[:2])
    if not diff <= FLOAT_TOLERANCE:  # never ship a changed float function
        report.skipped = f"equalized model differs in float (relative {diff:.2e})"
        report.layers = {}
        say(f"int8: range equalization {report.skipped}; not applied")
        return model, report
    say(f"int8: equalized channel ranges of {len(report.layers)} layer(s) "
        f"({describe(report.to_dict())})")
    return new, report


def describe(report: dict[str, Any]) -> str:
    """One line for logs and report.md, from ``EqualizeReport.to_dict()``."""
    if not report.get("layers"):
        return f"none ({report.get('skipped')})"
    return ", ".join(f"{p} ({v['scaled_channels']} channels, error x{v['error_ratio']})"
                     for p, v in report["layers"].items())
