"""ramp as relu(x) + 0.1 x (exact).

Darknet's ramp is x * (x > 0) + 0.1 x; lowered literally the bool mask is CAST to float
and QUANTIZEd, a float op inside an int8 model."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from . import Rule, register
from darknet2tflite.rewrites._layers import PiecewiseLinear


def _build(ctx, sec: Section, ins: list):
    return PiecewiseLinear("ramp", name=ctx.name(sec, "ramp_rw"))(ins[0])


RULE = register(Rule(
    name="ramp",
    targets=frozenset({"activation:ramp"}),
    exact=True,
    opt_in=False,
    emits="RELU, MUL, ADD",
    description="ramp(x) = relu(x) + 0.1x: no CAST",
    matches=lambda sec, target: target == "activation:ramp",
    build=_build,
))
