"""LeakyReLU(0.1) as max(x, 0.1 x) for targets without LEAKY_RELU (opt-in).

Bit-exact in float (for 0 < alpha < 1, max(x, alpha x) is leaky relu), but it turns one
op into MUL + MAXIMUM, and in int8 MAXIMUM requantizes both operands to one scale, so it
is slower and very slightly less accurate than LEAKY_RELU. That is why it is opt-in: it is
only worth it on a target that has no LEAKY_RELU kernel (e.g. Coral Edge TPU), and the
probe only considers it when the user allows it."""
from __future__ import annotations

from ..cfg import Section
from . import Rule, register
from ._layers import PiecewiseLinear


def _build(ctx, sec: Section, ins: list):
    return PiecewiseLinear("leaky_max", name=ctx.name(sec, "leaky_max"))(ins[0])


RULE = register(Rule(
    name="leaky_alternatives",
    targets=frozenset({"activation:leaky"}),
    exact=True,
    opt_in=True,
    emits="MUL, MAXIMUM",
    description="leaky(x) = max(x, 0.1x) for targets lacking LEAKY_RELU",
    matches=lambda sec, target: target == "activation:leaky",
    build=_build,
))
