"""Custom Keras layers for Darknet semantics that stock Keras layers do not express.

All are registered as serializable so ``model.keras`` reloads without ``safe_mode=False``
(Lambda layers would need it, and would execute pickled code on load).
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from darknet2tflite.bounds import graph_recursion

# Every Keras model this package builds or loads registers these layers first, so this is the
# one place that lets Keras walk graphs of up to bounds.MAX_LAYERS layers (RecursionError at
# ~900 layers with Python's default limit).
graph_recursion()

PACKAGE = "darknet2tflite"
FLT_MAX = float(np.finfo(np.float32).max)


def _sigmoid(x: tf.Tensor) -> tf.Tensor:
    return tf.math.sigmoid(x)


def _darknet_activation(x: tf.Tensor, kind: str) -> tf.Tensor:
    """The float functions of AlexeyAB activations.h (constants as Darknet writes them)."""
    if kind == "linear":
        return x
    if kind == "leaky":
        return tf.nn.leaky_relu(x, alpha=0.1)
    if kind == "relu":
        return tf.nn.relu(x)
    if kind == "relu6":
        return tf.nn.relu6(x)
    if kind == "logistic":
        return _sigmoid(x)
    if kind == "tanh":
        return tf.math.tanh(x)
    if kind == "swish":
        return x * _sigmoid(x)
    if kind == "mish":
        # Darknet: x * tanh(softplus(x)) with softplus thresholded at +-20; softplus's own
        # float32 result equals the thresholded one there to within rounding.
        return x * tf.math.tanh(tf.math.softplus(x))
    if kind == "hard_mish":
        return tf.where(x > 0, x, tf.where(x > -2, x * x / 2 + x, tf.zeros_like(x)))
    if kind == "elu":
        return tf.where(x >= 0, x, tf.math.exp(x) - 1)
    if kind == "selu":
        return tf.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * (tf.math.exp(x) - 1))
    if kind == "gelu":
        return 0.5 * x * (1 + tf.math.tanh(0.797885 * x + 0.035677 * x * x * x))
    if kind == "relie":
        return tf.where(x > 0, x, 0.01 * x)
    if kind == "ramp":
        return x * tf.cast(x > 0, x.dtype) + 0.1 * x
    if kind == "loggy":
        return 2.0 * _sigmoid(x) - 1
    if kind == "hardtan":
        return tf.clip_by_value(x, -1.0, 1.0)
    if kind == "lhtan":
        return tf.where(x < 0, 0.001 * x, tf.where(x > 1, 0.001 * (x - 1) + 1, x))
    raise ValueError(f"unknown Darknet activation {kind!r}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class DarknetActivation(keras.layers.Layer):
    """One layer for every Darknet activation, so the probe can name it per layer."""

    def __init__(self, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return _darknet_activation(x, self.kind)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConstantPad(keras.layers.Layer):
    """Spatial padding with a constant; Darknet's maxpool pads with -FLT_MAX."""

    def __init__(self, pads: list[list[int]], value: float = 0.0, mode: str = "CONSTANT",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pads = [list(map(int, p)) for p in pads]
        self.value = float(value)
        self.mode = mode

    def call(self, x: tf.Tensor) -> tf.Tensor:
        paddings = [[0, 0], self.pads[0], self.pads[1], [0, 0]]
        if self.mode == "CONSTANT":
            return tf.pad(x, paddings, constant_values=self.value)
        return tf.pad(x, paddings, mode=self.mode)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pads": self.pads, "value": self.value, "mode": self.mode}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelSplit(keras.layers.Layer):
    """Route ``groups``: Darknet keeps group ``group_id`` of ``groups`` equal channel blocks.

    ``mode='split'`` lowers to TFLite SPLIT (what a naive port writes); ``'slice'`` lowers to
    STRIDED_SLICE, which quantizes cleanly (the route_groups rewrite)."""

    def __init__(self, groups: int, group_id: int, mode: str = "split", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = int(groups)
        self.group_id = int(group_id)
        self.mode = mode

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if self.mode == "split":
            return tf.split(x, self.groups, axis=-1)[self.group_id]
        c = x.shape[-1] // self.groups
        return x[..., self.group_id * c:(self.group_id + 1) * c]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups, "group_id": self.group_id,
                "mode": self.mode}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelSlice(keras.layers.Layer):
    """Channels [start, stop): the partial residual [shortcut] (PRN) adds only the channels
    both inputs have. Lowers to STRIDED_SLICE, which every target quantizes."""

    def __init__(self, start: int, stop: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start = int(start)
        self.stop = int(stop)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x[..., self.start:self.stop]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Scale(keras.layers.Layer):
    """Element-wise product with broadcasting ([sam], [scale_channels]) and [upsample] scale."""

    def __init__(self, factor: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, *xs: tf.Tensor) -> tf.Tensor:
        if self.factor is not None:
            return xs[0] * self.factor
        return xs[0] * xs[1]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "factor": self.factor}


def reorg_permutation(h: int, w: int, c: int, stride: int) -> np.ndarray:
    """Flat CHW gather indices reproducing Darknet's [reorg] (reorg_cpu with forward=0).

    Darknet's reorg is not space_to_depth: it reinterprets the flat buffer, which is why
    YOLOv2 ports that use space_to_depth are subtly wrong."""
    out_c = c // (stride * stride)
    src = np.empty(c * h * w, dtype=np.int64)
    k, j, i = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    in_index = i + w * (j + h * k)
    c2 = k % out_c
    offset = k // out_c
    w2 = i * stride + offset % stride
    h2 = j * stride + offset // stride
    out_index = w2 + w * stride * (h2 + h * stride * c2)
    # forward=0 with the *input* dims: out[in_index] = x[out_index]; both are flat buffers.
    src[in_index.ravel()] = out_index.ravel()
    return src


@keras.saving.register_keras_serializable(package=PACKAGE)
class Reorg(keras.layers.Layer):
    """Darknet [reorg] as a constant GATHER over the CHW-flattened tensor."""

    def __init__(self, stride: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stride = int(stride)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        h, w, c = x.shape[1], x.shape[2], x.shape[3]
        s = self.stride
        flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, c * h * w])
        perm = reorg_permutation(h, w, c, s)
        out = tf.gather(flat, perm, axis=1)
        out = tf.reshape(out, [-1, c * s * s, h // s, w // s])
        return tf.transpose(out, [0, 2, 3, 1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "stride": self.stride}
