"""elu as relu(x) + exp(x - relu(x)) - 1 (exact).

Default lowering EXP(x) -> SUB -> GREATER_EQUAL -> SELECT: EXP of the whole input has a
range up to e^max(x) (int8 SQNR ~16 dB), and SELECT is absent from TFLite Micro. EXP of
x - relu(x) = min(x, 0) stays in (0, 1]."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from . import Rule, register
from darknet2tflite.rewrites._layers import EluBounded


def _build(ctx, sec: Section, ins: list):
    return EluBounded(name=ctx.name(sec, "elu_rw"))(ins[0])


RULE = register(Rule(
    name="elu",
    targets=frozenset({"activation:elu"}),
    exact=True,
    opt_in=False,
    emits="RELU, SUB, EXP, SUB, ADD",
    description="elu(x) = relu(x) + exp(x-relu(x)) - 1: bounded EXP, no SELECT",
    matches=lambda sec, target: target == "activation:elu",
    build=_build,
))
