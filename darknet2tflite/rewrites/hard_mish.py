"""hard_mish as x * min(relu(x/2 + 1), 1) (exact).

Default lowering: GREATER, GREATER, SELECT, SELECT_V2 (SELECT* absent from TFLite Micro;
int8 SELECT forces both branches onto one scale, ~29 dB SQNR). Replacement: MUL, ADD,
RELU, MINIMUM, MUL (~43 dB)."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from . import Rule, register
from darknet2tflite.rewrites._layers import HardMishClip


def _build(ctx, sec: Section, ins: list):
    return HardMishClip(name=ctx.name(sec, "hard_mish_rw"))(ins[0])


RULE = register(Rule(
    name="hard_mish",
    targets=frozenset({"activation:hard_mish"}),
    exact=True,
    opt_in=False,
    emits="MUL, ADD, RELU, MINIMUM, MUL",
    description="hard_mish(x) = x * min(relu(x/2 + 1), 1): no SELECT",
    matches=lambda sec, target: target == "activation:hard_mish",
    build=_build,
))
