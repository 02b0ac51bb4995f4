"""LeakyReLU(0.1) as 0.1 x + 0.9 relu(x) for targets without LEAKY_RELU (opt-in).

Equal to leaky relu up to float rounding (x >= 0: 0.1x + 0.9x; x < 0: 0.1x exactly), but it
turns one op into MUL, RELU, MUL, ADD: slower, and in int8 the sum requantizes two
branches, so it is only worth it on a target that has no LEAKY_RELU kernel (e.g. the Coral
Edge TPU). That is why it is opt-in: the probe only considers it when the user allows it
(``probe_with_rewrites(..., allow=["leaky_alternatives"])`` / ``--allow``).

max(x, 0.1x), the textbook alternative, is not used: the int8 quantizer gives MAXIMUM's
inputs the output's range, so the x shared with the 0.1x branch gets clipped at
0.1 * min(x) (measured ~25 dB SQNR against ~36 dB for this form)."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from . import Rule, register
from darknet2tflite.rewrites._layers import PiecewiseLinear


def _build(ctx, sec: Section, ins: list):
    return PiecewiseLinear("leaky_sum", name=ctx.name(sec, "leaky_rw"))(ins[0])


RULE = register(Rule(
    name="leaky_alternatives",
    targets=frozenset({"activation:leaky"}),
    exact=True,
    opt_in=True,
    emits="MUL, RELU, MUL, ADD",
    description="leaky(x) = 0.1x + 0.9*relu(x) for targets lacking LEAKY_RELU",
    matches=lambda sec, target: target == "activation:leaky",
    build=_build,
))
