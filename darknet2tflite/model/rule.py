"""What a rewrite rule is: which hook points it takes over, whether it is exact, and the
builder it puts in place of the default lowering (rules live in darknet2tflite/rewrites/)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from darknet2tflite.darknet.config import Section
    from darknet2tflite.model.builder import BuildContext


@dataclass(frozen=True)
class Rule:
    name: str
    #: hook points: a section kind ("maxpool", "route", "convolutional", "upsample",
    #: "reorg"), "head", or "activation:<name>" (e.g. "activation:mish")
    targets: frozenset[str]
    exact: bool          # exact rules must keep relative error <= 1e-5
    opt_in: bool         # approximate rules that change semantics are never applied by default
    emits: str           # TFLite ops the replacement lowers to
    description: str
    matches: Callable[["Section", str], bool]
    build: Callable[["BuildContext", "Section", list], Any]
