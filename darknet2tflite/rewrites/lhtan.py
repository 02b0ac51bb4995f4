"""lhtan as 0.001 x + 0.999 min(relu(x), 1) (exact to float rounding).

Default lowering: GREATER, LESS and two SELECTs (absent from TFLite Micro)."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from . import Rule, register
from darknet2tflite.rewrites._layers import PiecewiseLinear


def _build(ctx, sec: Section, ins: list):
    return PiecewiseLinear("lhtan", name=ctx.name(sec, "lhtan_rw"))(ins[0])


RULE = register(Rule(
    name="lhtan",
    targets=frozenset({"activation:lhtan"}),
    exact=True,
    opt_in=False,
    emits="MUL, RELU, MINIMUM, MUL, ADD",
    description="lhtan(x) = 0.001x + 0.999*min(relu(x), 1): no SELECT",
    matches=lambda sec, target: target == "activation:lhtan",
    build=_build,
))
