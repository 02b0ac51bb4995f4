"""[upsample] as RESIZE_NEAREST_NEIGHBOR instead of Keras' RESHAPE/TILE lowering (exact).

Keras 3 UpSampling2D(interpolation="nearest") converts to RESHAPE -> TILE -> RESHAPE ...;
TILE is not in the TFLite Micro op resolver. Darknet's upsample copies in[y // s][x // s],
which is what nearest-neighbour resize computes for an integer factor s with either
half-pixel convention (floor((y + 0.5) / s) == y // s), so the replacement is bit-exact."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from darknet2tflite.model.layers import Scale
from . import Rule, register
from darknet2tflite.rewrites._layers import NearestUpsample


def _build(ctx, sec: Section, ins: list):
    s = sec.params["stride"]
    y = NearestUpsample(s, name=ctx.name(sec, "upsample_resize"))(ins[0])
    if sec.params["scale"] != 1.0:
        y = Scale(sec.params["scale"], name=ctx.name(sec, "upsample_scale"))(y)
    return y


RULE = register(Rule(
    name="upsample",
    targets=frozenset({"upsample"}),
    exact=True,
    opt_in=False,
    emits="RESIZE_NEAREST_NEIGHBOR",
    description="nearest upsample as RESIZE_NEAREST_NEIGHBOR instead of RESHAPE/TILE",
    matches=lambda sec, target: target == "upsample",
    build=_build,
))
