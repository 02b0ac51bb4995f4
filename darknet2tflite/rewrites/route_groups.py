"""[route] groups= as STRIDED_SLICE instead of SPLIT (exact).

tf.split of which only one output is used converts, under TFLITE_BUILTINS_INT8, to
DEQUANTIZE -> float SPLIT -> QUANTIZE: a float op in the middle of the int8 graph. Slicing
the kept channel block is the same data movement and lowers to an int8 STRIDED_SLICE."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from darknet2tflite.model.layers import ChannelSplit
from . import Rule, register


def _matches(sec: Section, target: str) -> bool:
    return target == "route" and sec.params.get("groups", 1) > 1


def _build(ctx, sec: Section, ins: list):
    return ChannelSplit(sec.params["groups"], sec.params["group_id"], "slice",
                        name=ctx.name(sec, "route_slice"))(ins[0])


RULE = register(Rule(
    name="route_groups",
    targets=frozenset({"route"}),
    exact=True,
    opt_in=False,
    emits="STRIDED_SLICE",
    description="route groups/group_id as a channel STRIDED_SLICE instead of SPLIT",
    matches=_matches,
    build=_build,
))
