"""selu (Darknet constants 1.0507, 1.6732) via the bounded-EXP elu form (exact).

Default lowering: EXP of the whole input + SELECT (int8 SQNR ~8 dB; SELECT absent from
TFLite Micro). Replacement: 1.0507 * relu(x) + 1.0507 * 1.6732 * (exp(x - relu(x)) - 1)."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from . import Rule, register
from darknet2tflite.rewrites._layers import EluBounded


def _build(ctx, sec: Section, ins: list):
    return EluBounded(scale=1.0507, alpha=1.6732, name=ctx.name(sec, "selu_rw"))(ins[0])


RULE = register(Rule(
    name="selu",
    targets=frozenset({"activation:selu"}),
    exact=True,
    opt_in=False,
    emits="RELU, SUB, EXP, SUB, MUL, MUL, ADD",
    description="selu(x) = 1.0507*relu(x) + 1.0507*1.6732*(exp(x-relu(x)) - 1)",
    matches=lambda sec, target: target == "activation:selu",
    build=_build,
))
