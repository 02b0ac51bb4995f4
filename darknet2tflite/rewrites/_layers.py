"""Keras layers emitted by rewrite rules.

They live here rather than in ``layers.py`` because they only exist to steer the TFLite
lowering: each one computes exactly (or, where documented, near-exactly) the same float
function as the Darknet activation/section it replaces, but is written with ops whose int8
kernels keep their intermediate tensors in a bounded range (so a per-tensor int8 scale can
represent them) and that the embedded op resolvers actually contain.

All layers are registered serializable (package "darknet2tflite"), so a rewritten
``model.keras`` reloads without ``safe_mode=False`` once :func:`rewrites.load_rules` (which
imports this module) has run.
"""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from darknet2tflite.model.layers import PACKAGE


class _Elementwise(keras.layers.Layer):
    """Base for the stateless one-input rewrite layers (no config beyond the name)."""

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class MishLogistic(_Elementwise):
    """mish(x) = x * tanh(softplus(x)) without EXP.

    softplus(x) = -log(sigmoid(-x)) = -log(1 - sigmoid(x)) and tanh is odd, so
    mish(x) = x * (-tanh(log(1 - sigmoid(x)))).  Every intermediate is bounded by the
    input range: LOGISTIC -> (0, 1), SUB -> (0, 1), LOG -> [-max(x), 0], TANH -> (-1, 0].
    The default lowering EXP -> ADD -> LOG has an EXP output of up to e^max(x), and one
    per-tensor int8 scale over [0, e^10] flattens every value below ~80 to zero.

    The negation is a MUL by a constant because the converter keeps NEG in float.
    1 - sigmoid(x) is floored at 1e-6 before the LOG: unclamped it reaches 0 for x > ~16.6
    and LOG gives -inf, which float inference survives (tanh(-inf) = -1) but int8
    calibration does not (an infinite range; the converter aborts with "scale out of
    expressed type range"). The floor is exact in float32: it only acts for x > 13.8,
    where both tanh(softplus(x)) and tanh(-log(1e-6)) round to 1.0."""

    FLOOR = 1e-6

    def call(self, x: tf.Tensor) -> tf.Tensor:
        u = tf.maximum(1.0 - tf.math.sigmoid(x), self.FLOOR)
        t = tf.math.tanh(tf.math.log(u))
        return x * (t * -1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class HardMishClip(_Elementwise):
    """Darknet hard_mish (x > 0: x; x > -2: x*x/2 + x; else 0) as x * min(relu(x/2 + 1), 1).

    The default lowering needs GREATER/SELECT/SELECT_V2 (absent from TFLite Micro) and its
    int8 version loses ~15 dB SQNR because SELECT forces its branches onto one scale."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * tf.minimum(tf.nn.relu(0.5 * x + 1.0), 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class EluBounded(_Elementwise):
    """elu(x) = relu(x) + exp(x - relu(x)) - 1, optionally scaled like Darknet's selu.

    EXP only ever sees x - relu(x) = min(x, 0) <= 0, so its output lies in (0, 1] and
    quantizes well; the default lowering takes EXP of the whole input (range up to
    e^max(x)) and then SELECTs, which costs ~30 dB of SQNR in int8. TFLite's own ELU op is
    not used because the converter leaves it in float (DEQUANTIZE -> ELU -> QUANTIZE) under
    TFLITE_BUILTINS_INT8. min(x, 0) is written as x - relu(x) (exact in float) because the
    int8 quantizer gives MINIMUM's input the output's range, and x is shared with the
    positive branch: a MINIMUM here clipped every positive value of x to 0.

    ``scale``/``alpha``: selu = scale * (x >= 0 ? x : alpha * (e^x - 1))."""

    def __init__(self, scale: float = 1.0, alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.alpha = float(alpha)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        pos = tf.nn.relu(x)
        neg = tf.math.exp(x - pos) - 1.0
        if self.scale == 1.0 and self.alpha == 1.0:
            return pos + neg
        return self.scale * pos + (self.scale * self.alpha) * neg

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PiecewiseLinear(_Elementwise):
    """Darknet's piecewise-linear activations written with RELU/MUL/ADD/MINIMUM only.

    ``kind``:
      * ``ramp``  x * (x > 0) + 0.1 x  ->  relu(x) + 0.1 x   (default lowering CASTs a bool
        to float, a float op in an int8 model)
      * ``lhtan`` x < 0: 0.001 x; x > 1: 0.001 (x - 1) + 1; else x
        ->  0.001 x + 0.999 min(relu(x), 1)   (default: GREATER/LESS/SELECT)
      * ``leaky_sum`` leaky(x, 0.1) -> 0.1 x + 0.9 relu(x)   (targets without LEAKY_RELU;
        not max(x, 0.1 x): the int8 quantizer gives MAXIMUM's inputs its output range, which
        clips the shared x below 0.1 min(x), ~25 dB SQNR instead of ~36)
    """

    def __init__(self, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in ("ramp", "lhtan", "leaky_sum"):
            raise ValueError(f"unknown piecewise-linear kind {kind!r}")
        self.kind = kind

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if self.kind == "ramp":
            return tf.nn.relu(x) + 0.1 * x
        if self.kind == "lhtan":
            return 0.001 * x + 0.999 * tf.minimum(tf.nn.relu(x), 1.0)
        return 0.1 * x + 0.9 * tf.nn.relu(x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind}


@keras.saving.register_keras_serializable(package=PACKAGE)
class EdgePad(keras.layers.Layer):
    """Spatial padding that repeats the edge row/column (numpy 'edge' mode).

    TFLite has no replicate padding (MIRROR_PAD is REFLECT or SYMMETRIC only), so the edge
    is repeated with STRIDED_SLICE + CONCATENATION. Used by the maxpool rewrite where a pad
    is wider than SYMMETRIC can mirror exactly."""

    def __init__(self, pads: list[list[int]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pads = [list(map(int, p)) for p in pads]

    def call(self, x: tf.Tensor) -> tf.Tensor:
        (top, bottom), (left, right) = self.pads
        if top or bottom:
            parts = [x[:, :1]] * top + [x] + [x[:, -1:]] * bottom
            x = tf.concat(parts, axis=1)
        if left or right:
            parts = [x[:, :, :1]] * left + [x] + [x[:, :, -1:]] * right
            x = tf.concat(parts, axis=2)
        return x

    def compute_output_shape(self, s: Any) -> Any:
        (t, b), (l, r) = self.pads
        h = None if s[1] is None else s[1] + t + b
        w = None if s[2] is None else s[2] + l + r
        return (s[0], h, w, s[3])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pads": self.pads}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReorgTranspose(keras.layers.Layer):
    """Darknet [reorg] (reorg_cpu, forward=0) as RESHAPE/TRANSPOSE instead of GATHER.

    reorg_cpu reads the CHW buffer as (C/s^2, H*s, W*s) and writes it back in
    (s, s, C/s^2, H, W) order, then the result buffer is read as (C*s^2, H/s, W/s). Pure
    data movement, so bit-exact; a 5-D transpose for batch-1 models (6-D otherwise) keeps
    it within what embedded TRANSPOSE kernels accept and needs no int64 index tensor."""

    def __init__(self, stride: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stride = int(stride)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        h, w, c = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
        s = self.stride
        cp = c // (s * s)
        chw = tf.transpose(x, [0, 3, 1, 2])
        if x.shape[0] == 1:
            t = tf.reshape(chw, [cp, h, s, w, s])
            t = tf.transpose(t, [2, 4, 0, 1, 3])
        else:
            t = tf.reshape(chw, [-1, cp, h, s, w, s])
            t = tf.transpose(t, [0, 3, 5, 1, 2, 4])
        out = tf.reshape(t, [-1, c * s * s, h // s, w // s])
        return tf.transpose(out, [0, 2, 3, 1])

    def compute_output_shape(self, sh: Any) -> Any:
        s = self.stride
        return (sh[0], sh[1] // s, sh[2] // s, sh[3] * s * s)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable(package=PACKAGE)
class NearestUpsample(keras.layers.Layer):
    """Integer-factor nearest upsampling that lowers to one RESIZE_NEAREST_NEIGHBOR."""

    def __init__(self, stride: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stride = int(stride)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        h, w = int(x.shape[1]), int(x.shape[2])
        return tf.compat.v1.image.resize_nearest_neighbor(
            x, [h * self.stride, w * self.stride], align_corners=False,
            half_pixel_centers=False)

    def compute_output_shape(self, s: Any) -> Any:
        return (s[0], None if s[1] is None else s[1] * self.stride,
                None if s[2] is None else s[2] * self.stride, s[3])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "stride": self.stride}
