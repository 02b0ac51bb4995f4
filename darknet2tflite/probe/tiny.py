"""Tiny one-layer models of a signature: small spatial size and channel count with the same padding and grouping decisions, real weights cut to size."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from darknet2tflite.darknet.config import Section
from darknet2tflite.darknet.weights import ConvWeights, DarknetWeights, random_weights
from darknet2tflite.probe.signatures import HEAD_KINDS, signature


def _with_shapes(sec: Section, in_shapes: list[tuple[int, int, int]],
                 extra: dict[str, Any] | None = None) -> Section | None:
    from darknet2tflite.errors import CfgError
    from darknet2tflite.darknet.shapes import SHAPE_RULES
    t = Section(kind=sec.kind, header=sec.header, line=sec.line, index=sec.index,
                file=sec.file, options=sec.options, params={**sec.params, **(extra or {})})
    t.params["in_shapes"] = [tuple(s) for s in in_shapes]
    try:
        t.params["out_shape"] = SHAPE_RULES[sec.kind](t, t.params["in_shapes"])
    except CfgError:
        return None
    return t


CHANNEL_CAP = 32


def _tiny_channels(sec: Section, cap: int = CHANNEL_CAP, keep_filters: bool = False
                   ) -> tuple[list[int], dict[str, Any]] | None:
    """Channel counts for the probe copy (and conv filters/groups): small, but keeping
    what the lowering depends on (plain/depthwise/grouped conv, divisibility by route
    groups or reorg stride^2). None keeps the real channels (detection heads, whose
    channel count is fixed by classes and anchors)."""
    p, k = sec.params, sec.kind
    cs = [s[2] for s in p["in_shapes"]]
    if k in HEAD_KINDS:
        return None
    if k == "convolutional":
        c, g, f = cs[0], p["groups"], p["filters"]
        if g == 1:
            return [min(c, cap)], {"filters": f if keep_filters else min(f, cap), "groups": 1}
        if keep_filters:
            return None
        if g == c:  # depthwise: keep the multiplier
            c2 = min(c, cap)
            return [c2], {"filters": c2 * (f // c), "groups": c2}
        return [2 * min(c // g, 8)], {"filters": 2 * min(f // g, 8), "groups": 2}
    if k == "route" and p["groups"] > 1:
        g = p["groups"]
        return [g * max(1, min(c // g, 4)) for c in cs], {}
    if k == "reorg":
        s2 = p["stride"] ** 2
        return [s2 * max(1, min(c // s2, 4)) for c in cs], {}
    if k == "shortcut" and cs[0] != cs[1]:  # keep which input is wider (partial residual)
        small = min(min(cs), cap // 2)
        return [small if c == min(cs) else 2 * small for c in cs], {}
    return [min(c, cap) for c in cs], {}


def tiny_section(sec: Section, rules: Sequence[Any] = (), target: int = 8,
                 keep_filters: bool = False) -> Section:
    """A copy of ``sec`` with a small spatial size and at most ~32 channels that keeps its
    signature (so its padding decisions and matching rules are those of the real layer).
    Probe cost then depends on the number of signatures only, not on layer width."""
    p = sec.params
    want = signature(sec, rules)
    chans = _tiny_channels(sec, keep_filters=keep_filters)
    base = sec
    if chans is not None:
        cs, extra = chans
        t = _with_shapes(sec, [(h, w, c) for (h, w, _), c in zip(p["in_shapes"], cs)],
                         extra)
        if t is not None and signature(t, rules) == want:
            base = t
    bp = base.params
    step = 1
    start = target
    if sec.kind in ("convolutional", "maxpool"):
        start = max(target, p["size"] + 1)
    elif sec.kind == "reorg":
        s = p["stride"]
        start, step = s * max(2, -(-target // s)), s
    span = 4 * max(p.get("stride_y", 1), p.get("stride_x", 1), p.get("stride", 1), 2)
    hs = [s[0] for s in bp["in_shapes"] if s[0] > 1]
    ws = [s[1] for s in bp["in_shapes"] if s[1] > 1]
    if not hs and not ws:
        return base
    H, W = (max(hs) if hs else 1), (max(ws) if ws else 1)
    cand_h = [n for n in range(start, start + span + 1, step) if n < H] + [H]
    cand_w = [n for n in range(start, start + span + 1, step) if n < W] + [W]
    for nh in cand_h:
        for nw in cand_w:
            shapes = [(nh if h > 1 else 1, nw if w > 1 else 1, c)
                      for h, w, c in bp["in_shapes"]]
            t = _with_shapes(base, shapes)
            if t is not None and signature(t, rules) == want:
                return t
    return base


def tiny_weights(sec: Section, tiny: Section, weights: DarknetWeights | None,
                 seed: int) -> ConvWeights:
    """Weights for the probe copy of a conv: the real layer's first filters and input
    channels (rescaled by sqrt(C/C') so the output keeps its spread, which is what the
    int8 ranges see), or weights.random_weights of the tiny shape."""
    tp = tiny.params
    if weights is not None and (tp["groups"] == 1 or tp["groups"] == tp["in_shapes"][0][2]):
        lw = weights.layers[sec.index]
        f = tp["filters"]
        if tp["groups"] == 1:
            c, c_full = tp["in_shapes"][0][2], sec.params["in_shapes"][0][2]
            w = lw.weights[:f, :c] * np.float32(np.sqrt(c_full / c))
        else:
            w = lw.weights[:f]
        cut = (lambda a: None if a is None else a[:f])
        return ConvWeights(biases=lw.biases[:f], weights=np.ascontiguousarray(w),
                           scales=cut(lw.scales), rolling_mean=cut(lw.rolling_mean),
                           rolling_variance=cut(lw.rolling_variance))
    return random_weights(SimpleNamespace(layers=[tiny]), seed + sec.index)[sec.index]
