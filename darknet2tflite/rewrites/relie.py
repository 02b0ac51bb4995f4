"""relie (x > 0 ? x : 0.01 x) as LEAKY_RELU(alpha=0.01) (exact).

The default lowering uses GREATER + SELECT, which TFLite Micro does not have."""
from __future__ import annotations

import keras

from darknet2tflite.darknet.config import Section
from . import Rule, register


def _build(ctx, sec: Section, ins: list):
    return keras.layers.LeakyReLU(negative_slope=0.01, name=ctx.name(sec, "relie_rw"))(ins[0])


RULE = register(Rule(
    name="relie",
    targets=frozenset({"activation:relie"}),
    exact=True,
    opt_in=False,
    emits="LEAKY_RELU",
    description="relie as LEAKY_RELU(0.01): no SELECT",
    matches=lambda sec, target: target == "activation:relie",
    build=_build,
))
