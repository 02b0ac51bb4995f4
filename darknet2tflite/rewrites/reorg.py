"""[reorg] as RESHAPE/TRANSPOSE instead of a constant-index GATHER (exact).

The default lowering gathers the CHW-flattened tensor with an int64 permutation (GATHER,
one index per element, a constant as large as the activation). Targets without GATHER,
or whose GATHER only takes int32 positions, get the same permutation as three TRANSPOSEs
and three RESHAPEs (see :class:`ReorgTranspose`)."""
from __future__ import annotations

from darknet2tflite.darknet.config import Section
from . import Rule, register
from darknet2tflite.rewrites._layers import ReorgTranspose


def _build(ctx, sec: Section, ins: list):
    return ReorgTranspose(sec.params["stride"], name=ctx.name(sec, "reorg_rw"))(ins[0])


RULE = register(Rule(
    name="reorg",
    targets=frozenset({"reorg"}),
    exact=True,
    opt_in=False,
    emits="TRANSPOSE, RESHAPE, TRANSPOSE, RESHAPE, TRANSPOSE",
    description="Darknet reorg as reshape/transpose data movement instead of GATHER",
    matches=lambda sec, target: target == "reorg",
    build=_build,
))
