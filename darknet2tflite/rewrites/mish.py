"""mish without the EXP -> ADD -> LOG softplus chain (exact).

Darknet's mish is x * tanh(softplus(x)). Lowered literally, the int8 model carries EXP's
output (range up to e^max(x)) on one per-tensor scale, which zeroes every small value:
a single mish layer measures ~2 dB SQNR. :class:`MishLogistic` computes the same function
as -x * tanh(log(max(1 - sigmoid(x), 1e-6))): LOGISTIC/SUB/MAXIMUM/LOG/TANH/MUL, all int8 builtins with
bounded intermediates (~38 dB on the same probe). Float deviation from Darknet's formula
is a few ulp (exact rule, measured <= 1e-6 relative)."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from . import Rule, register
from darknet2tflite.rewrites._layers import MishLogistic


def _matches(sec: Section, target: str) -> bool:
    return target == "activation:mish"


def _build(ctx, sec: Section, ins: list):
    return MishLogistic(name=ctx.name(sec, "mish_rw"))(ins[0])


RULE = register(Rule(
    name="mish",
    targets=frozenset({"activation:mish"}),
    exact=True,
    opt_in=False,
    emits="LOGISTIC, SUB, MAXIMUM, LOG, TANH, MUL, MUL",
    description="mish(x) = -x*tanh(log(max(1-sigmoid(x), 1e-6))): no EXP, bounded int8 intermediates",
    matches=_matches,
    build=_build,
))
