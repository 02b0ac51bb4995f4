"""mish as x * s * (c1 + s * (c2 + c3 * s)), s = sigmoid(x) (approximate, opt-in).

The exact mish rule still needs LOG, and TFLite Micro runs EXP and LOG in float32 only:
on a microcontroller (int8 kernels only) no exact lowering of mish exists. In terms of
s = sigmoid(x), tanh(softplus(x)) = (2s - s^2) / (2 - 2s + s^2); the cubic below is its
least-squares fit over x in [-10, 10] (weighted by x, i.e. fitted on mish itself), with
max |error| 0.0086 on mish over that range. Every op (LOGISTIC, MUL, ADD) has an int8 kernel
in TFLite Micro and on Ethos-U, and every intermediate stays in [-1.1, 1.1] * max|x|.
Opt-in because it changes the function: its measured deviation is reported per model."""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from darknet2tflite.darknet.config import Section
from darknet2tflite.model.layers import PACKAGE
from . import Rule, register

#: least squares of x * (c1 s + c2 s^2 + c3 s^3) on mish(x), x in [-10, 10] (40001 points)
C1, C2, C3 = 0.93613415, 1.10813174, -1.04420163


@keras.saving.register_keras_serializable(package=PACKAGE)
class MishSigmoidPoly(keras.layers.Layer):
    """x * s * (C1 + s * (C2 + C3 * s)) with s = sigmoid(x)."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        s = tf.sigmoid(x)
        return x * (s * (C1 + s * (C2 + C3 * s)))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def _build(ctx, sec: Section, ins: list):
    return MishSigmoidPoly(name=ctx.name(sec, "mish_poly"))(ins[0])


RULE = register(Rule(
    name="mish_poly",
    targets=frozenset({"activation:mish"}),
    exact=False,
    opt_in=True,
    emits="LOGISTIC, MUL, ADD, MUL, ADD, MUL, MUL",
    description="mish(x) ~ x*s*(c1 + s*(c2 + c3*s)), s = sigmoid(x): no EXP/LOG "
                "(max |error| 0.0086 for x in [-10, 10])",
    matches=lambda sec, target: target == "activation:mish",
    build=_build,
))
