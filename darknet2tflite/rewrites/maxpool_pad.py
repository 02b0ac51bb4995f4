"""Darknet maxpool padding without the -FLT_MAX constant (exact).

Darknet pads a maxpool with -FLT_MAX so padded cells never win. In an int8 model that
constant becomes a PADV2 pad value whose quantization range is [-3.4e38, max]: the scale
(~1e36) is shared with the pad's input, so the whole feature map quantizes to one value.
Replacements, in order of preference, all bit-exact in float:

* TF 'SAME' max pooling when its implicit padding equals Darknet's window placement
  (``builder.maxpool_is_tf_same``): TFLite MAX_POOL_2D ignores out-of-range cells.
* MIRROR_PAD SYMMETRIC when every pad p <= size // 2: a window that reaches p cells past
  the edge also covers the p edge cells that SYMMETRIC copies there, so the mirrored
  values never exceed the window's own maximum. (REFLECT would need p <= (size - 1) // 2;
  SYMMETRIC additionally needs p <= the padded dimension.)
* Edge replication (STRIDED_SLICE + CONCATENATION) when p < size: every window still
  holds the edge cell it replicates.

A pad of size or more would create windows made only of padding (Darknet outputs
-FLT_MAX there); no exact rewrite exists and the rule does not match."""
from __future__ import annotations

import keras

from darknet2tflite.model.builder import maxpool_is_tf_same, maxpool_pads
from darknet2tflite.darknet.config import Section
from darknet2tflite.model.layers import ConstantPad
from . import Rule, register
from darknet2tflite.rewrites._layers import EdgePad


def pad_mode(sec: Section) -> str | None:
    """'same', 'symmetric', 'edge', or None (no exact replacement / nothing to replace)."""
    p = sec.params
    pads = maxpool_pads(sec)
    if pads == ((0, 0), (0, 0)):
        return None
    if maxpool_is_tf_same(sec):
        return "same"
    k = p["size"]
    h, w, _ = p["in_shapes"][0]
    flat = [*pads[0], *pads[1]]
    if max(flat) >= k:
        return None
    if max(flat) <= k // 2 and max(pads[0]) <= h and max(pads[1]) <= w:
        return "symmetric"
    return "edge"


def _matches(sec: Section, target: str) -> bool:
    return target == "maxpool" and pad_mode(sec) is not None


def _build(ctx, sec: Section, ins: list):
    p = sec.params
    mode = pad_mode(sec)
    x = ins[0]
    window = dict(pool_size=(p["size"], p["size"]), strides=(p["stride_y"], p["stride_x"]))
    if mode == "same":
        return keras.layers.MaxPooling2D(padding="same", name=ctx.name(sec, "maxpool_same"),
                                         **window)(x)
    pads = [list(v) for v in maxpool_pads(sec)]
    if mode == "symmetric":
        x = ConstantPad(pads, mode="SYMMETRIC", name=ctx.name(sec, "pad_symmetric"))(x)
    else:
        x = EdgePad(pads, name=ctx.name(sec, "pad_edge"))(x)
    return keras.layers.MaxPooling2D(padding="valid", name=ctx.name(sec, "maxpool"),
                                     **window)(x)


RULE = register(Rule(
    name="maxpool_pad",
    targets=frozenset({"maxpool"}),
    exact=True,
    opt_in=False,
    emits="MAX_POOL_2D (SAME) | MIRROR_PAD SYMMETRIC + MAX_POOL_2D | "
          "STRIDED_SLICE + CONCATENATION + MAX_POOL_2D",
    description="maxpool -FLT_MAX padding as TF SAME pooling, symmetric or edge padding",
    matches=_matches,
    build=_build,
))
