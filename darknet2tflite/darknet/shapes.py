"""Shape inference over a parsed cfg.

Done before any tensor exists so that a wrong route index, a filters/classes mismatch or an
absurd size is reported against the cfg line, and so that the weights reader knows exactly
how many floats each layer owns before it reads a byte.
"""
from __future__ import annotations

from typing import Callable

from darknet2tflite.darknet.config import MAX_CHANNELS, MAX_SPATIAL, DarknetConfig, Section

Shape = tuple[int, int, int]  # (h, w, c)
MAX_ACTIVATION_ELEMENTS = 128 * 1024 * 1024  # one layer output (512 MB float32): refuse before allocating

ShapeRule = Callable[[Section, list[Shape]], Shape]
SHAPE_RULES: dict[str, ShapeRule] = {}


def shape_rule(kind: str) -> Callable[[ShapeRule], ShapeRule]:
    def deco(fn: ShapeRule) -> ShapeRule:
        SHAPE_RULES[kind] = fn
        return fn
    return deco


def _resolve(sec: Section, ref: int, key: str, n_layers: int) -> int:
    """Darknet's relative (negative) or absolute layer reference -> absolute index."""
    idx = sec.index + ref if ref < 0 else ref
    if idx < 0 or idx >= sec.index:
        what = "a future layer or itself" if idx >= sec.index else "before the first layer"
        raise sec.error(f"refers to layer {ref} (absolute {idx}), which is {what}; "
                        f"this is layer {sec.index}", key)
    return idx


@shape_rule("convolutional")
def _conv(sec: Section, ins: list[Shape]) -> Shape:
    h, w, c = ins[0]
    p = sec.params
    if c % p["groups"] or p["filters"] % p["groups"]:
        raise sec.error(f"groups={p['groups']} must divide input channels ({c}) and filters "
                        f"({p['filters']})", "groups")
    d = p["dilation"]
    if d > 1 and p["padding"] * 2 != p["size"] - 1:
        raise sec.error("dilation > 1 is only supported with 'same' padding (pad=1, odd size)",
                        "dilation")
    oh = (h + 2 * p["padding"] - p["size"]) // p["stride_y"] + 1
    ow = (w + 2 * p["padding"] - p["size"]) // p["stride_x"] + 1
    if oh < 1 or ow < 1:
        raise sec.error(f"kernel size {p['size']} does not fit the {h}x{w} input", "size")
    return (oh, ow, p["filters"])


@shape_rule("maxpool")
def _maxpool(sec: Section, ins: list[Shape]) -> Shape:
    h, w, c = ins[0]
    p = sec.params
    oh = (h + p["padding"] - p["size"]) // p["stride_y"] + 1
    ow = (w + p["padding"] - p["size"]) // p["stride_x"] + 1
    if oh < 1 or ow < 1:
        raise sec.error(f"pool size {p['size']} does not fit the {h}x{w} input", "size")
    return (oh, ow, c)


@shape_rule("avgpool")
def _avgpool(sec: Section, ins: list[Shape]) -> Shape:
    return (1, 1, ins[0][2])


@shape_rule("route")
def _route(sec: Section, ins: list[Shape]) -> Shape:
    h, w, _ = ins[0]
    for s in ins[1:]:
        if s[:2] != (h, w):
            raise sec.error(f"routed layers have different sizes: {[x[:2] for x in ins]}",
                            "layers")
    c = sum(s[2] for s in ins)
    g, gid = sec.params["groups"], sec.params["group_id"]
    if c % g:
        raise sec.error(f"groups={g} does not divide the {c} routed channels", "groups")
    if gid >= g:
        raise sec.error(f"group_id={gid} must be below groups={g}", "group_id")
    return (h, w, c // g)


@shape_rule("shortcut")
def _shortcut(sec: Section, ins: list[Shape]) -> Shape:
    # Darknet adds the channels both have and keeps the previous layer's shape (partial
    # residual networks, e.g. yolov3-tiny-prn); only different spatial sizes are refused
    if ins[0][:2] != ins[1][:2]:
        raise sec.error(f"shortcut between different spatial sizes {ins[0]} and {ins[1]} is "
                        "not supported", "from")
    return ins[0]


@shape_rule("upsample")
def _upsample(sec: Section, ins: list[Shape]) -> Shape:
    h, w, c = ins[0]
    s = sec.params["stride"]
    return (h * s, w * s, c)


@shape_rule("reorg")
def _reorg(sec: Section, ins: list[Shape]) -> Shape:
    h, w, c = ins[0]
    s = sec.params["stride"]
    if h % s or w % s or c % (s * s):
        raise sec.error(f"stride {s} must divide the input size {h}x{w} and stride^2 its "
                        f"{c} channels", "stride")
    return (h // s, w // s, c * s * s)


@shape_rule("sam")
def _sam(sec: Section, ins: list[Shape]) -> Shape:
    if ins[0] != ins[1]:
        raise sec.error(f"sam needs equal shapes, got {ins[0]} and {ins[1]}", "from")
    return ins[1]


@shape_rule("scale_channels")
def _scale_channels(sec: Section, ins: list[Shape]) -> Shape:
    prev, frm = ins
    if sec.params["scale_wh"]:
        ok = prev[:2] == frm[:2] and prev[2] == 1
        need = f"(h, w, 1) = ({frm[0]}, {frm[1]}, 1)"
    else:
        ok = prev[:2] == (1, 1) and prev[2] == frm[2]
        need = f"(1, 1, {frm[2]})"
    if not ok:
        raise sec.error(f"previous layer must be {need}, got {prev}", "from")
    return frm


@shape_rule("dropout")
def _dropout(sec: Section, ins: list[Shape]) -> Shape:
    return ins[0]


@shape_rule("yolo")
def _yolo(sec: Section, ins: list[Shape]) -> Shape:
    p = sec.params
    need = len(p["mask"]) * (p["classes"] + 5)
    if ins[0][2] != need:
        raise sec.error(f"the layer before has {ins[0][2]} filters but mask/classes need "
                        f"{len(p['mask'])}*({p['classes']}+5) = {need}", "classes")
    return ins[0]


@shape_rule("region")
def _region(sec: Section, ins: list[Shape]) -> Shape:
    p = sec.params
    need = p["num"] * (p["classes"] + p["coords"] + 1)
    if ins[0][2] != need:
        raise sec.error(f"the layer before has {ins[0][2]} filters but num/classes need "
                        f"{p['num']}*({p['classes']}+{p['coords']}+1) = {need}", "classes")
    return ins[0]


def _input_refs(sec: Section, n_layers: int) -> list[int]:
    """Absolute indices of the layers a section reads (-1 = the network input)."""
    prev = sec.index - 1
    if sec.kind == "route":
        return [_resolve(sec, r, "layers", n_layers) for r in sec.params["layers"]]
    if sec.kind in ("shortcut", "sam", "scale_channels"):
        return [prev, _resolve(sec, sec.params["from_"], "from", n_layers)]
    return [prev]


def infer_shapes(cfg: DarknetConfig) -> None:
    """Fill ``params['inputs']``, ``params['in_shapes']`` and ``params['out_shape']``."""
    net = (cfg.height, cfg.width, cfg.channels)
    shapes: list[Shape] = []
    for sec in cfg.layers:
        refs = _input_refs(sec, len(cfg.layers))
        for r in refs:
            if r >= 0 and cfg.layers[r].kind in ("yolo", "region"):
                raise sec.error(f"reads the decoded output of detection layer {r}; only the "
                                "raw heads are exported, so nothing may consume a detection layer")
        ins = [net if r < 0 else shapes[r] for r in refs]
        out = SHAPE_RULES[sec.kind](sec, ins)
        h, w, c = out
        if h > MAX_SPATIAL or w > MAX_SPATIAL or c > MAX_CHANNELS or h * w * c > MAX_ACTIVATION_ELEMENTS:
            raise sec.error(f"output shape {out} is too large to convert")
        sec.params["inputs"] = refs
        sec.params["in_shapes"] = ins
        sec.params["out_shape"] = out
        shapes.append(out)
    if not cfg.heads():
        raise cfg.net.error("the cfg has no [yolo] or [region] layer, so there is no detection "
                            "head to export")
