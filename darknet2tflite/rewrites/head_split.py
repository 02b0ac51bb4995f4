"""Split each detection head into per-anchor channel groups (exact; int8 accuracy).

A raw YOLO head mixes channels of very different ranges: per anchor, box x/y/w/h logits
span about [-4, 4] while objectness and class logits reach [-40, 20]. In a full-integer
model one int8 scale covers the whole output tensor, so the box channels get a step of
~0.25 and w/h (which go through exp()) lose most of their precision -- measured: the box
channels alone account for nearly all of the AP lost by a plain int8 conversion.

This rule rebuilds the head's final (linear or logistic) convolution as several convolutions
over the same input, each producing one contiguous channel slice of the raw head, by default per
anchor ``[x, y, w, h] [obj, classes...]``. Every slice becomes its own model output (and so its
own int8 scale); concatenating a head's outputs along channels, in order, gives exactly
the contract's raw head (the convolutions compute the very same dot products per output
channel). Consumers learn the split from model.json ``head_outputs``.

The rule changes the model's output layout, so it is opt-in: the int8 path
(``quantize.build_int8_model``) applies it explicitly and writes ``head_outputs``.
"""
from __future__ import annotations

from typing import Any

import keras

from darknet2tflite.model.builder import BuildContext, conv_linear, head_output_name
from darknet2tflite.darknet.config import Section
from darknet2tflite.model.layers import DarknetActivation
from . import Rule, register

#: channel slices of ONE anchor's block, (start, end) with end None = up to the block end
#: (box coords are channels 0-3 of every YOLO/region anchor block). Measured with
#: ``bench/accuracy.py --layouts`` (yolov4-tiny, 86 COCO photos, 2-fold cross-calibration,
#: MSE ranges; int8 minus float AP / AP50, two different fold splits):
#:   no split       -0.92/-0.50   -1.50/-0.19
#:   box|rest       -0.42/+0.51   -0.99/-0.54   <- default (best mean, fewest outputs)
#:   xy|wh|rest     -0.37/-0.18   -1.18/-0.93
#:   xy|wh|obj|cls  -0.49/-0.50   -1.48/-1.10
#:   box|obj|cls        n/a       -1.24/-0.78
#: Differences between split layouts are within the AP noise of 86 photos; splitting at all
#: is the measurable gain (with min/max ranges: -2.1 AP unsplit vs -1.0 split).
LAYOUTS: dict[str, list[tuple[int, int | None]]] = {
    "box_rest": [(0, 4), (4, None)],
    "xy_wh_rest": [(0, 2), (2, 4), (4, None)],
    "xy_wh_obj_cls": [(0, 2), (2, 4), (4, 5), (5, None)],
    "box_obj_cls": [(0, 4), (4, 5), (5, None)],
}
DEFAULT_LAYOUT = "box_rest"

#: part names used in output names, by slice start within an anchor block
_PART_NAMES = {(0, 2): "xy", (2, 4): "wh", (0, 4): "box", (4, None): "rest", (4, 5): "obj",
               (5, None): "cls"}


#: activations of a head's convolution under which the split stays exact: elementwise, so
#: activation(concat(parts)) == concat(activation(part)), and lowered by the builder without
#: an activation rewrite. ``logistic`` heads are Scaled-YOLOv4 / YOLOv7-style cfgs
#: (new_coords=1); their conv output is quantized before the LOGISTIC op, so box and
#: objectness/class logits would share one int8 scale there just as in linear heads.
HEAD_ACTIVATIONS = frozenset({"linear", "logistic"})


def feeding_conv(ctx: BuildContext, sec: Section) -> Section | None:
    """The head's input layer when it is an ungrouped [convolutional] with a linear or
    logistic activation (the case for every Darknet YOLO/region head); otherwise None and
    the head is left unsplit."""
    inputs = sec.params.get("inputs") or []
    if len(inputs) != 1 or inputs[0] < 0:
        return None
    conv = ctx.cfg.layers[inputs[0]]
    p = conv.params
    if conv.kind != "convolutional" or p.get("activation", "linear") not in HEAD_ACTIVATIONS:
        return None
    if p.get("groups", 1) != 1 or p["inputs"][0] < 0:
        return None
    return conv


def anchors_of(sec: Section) -> int:
    return len(sec.params["mask"]) if sec.kind == "yolo" else int(sec.params["num"])


def part_slices(sec: Section, channels: int, layout: str = DEFAULT_LAYOUT
                ) -> list[tuple[str, slice]]:
    """(name suffix, channel slice) of every output of a split head, in concat order."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown head split layout {layout!r} (known: {', '.join(LAYOUTS)})")
    n = anchors_of(sec)
    if n <= 0 or channels % n:
        raise ValueError(f"layer {sec.index}: {channels} channels do not divide into {n} anchors")
    block = channels // n
    out = []
    for a in range(n):
        for start, end in LAYOUTS[layout]:
            stop = block if end is None else end
            name = _PART_NAMES.get((start, end), f"c{start}")
            out.append((f"a{a}_{name}", slice(a * block + start, a * block + stop)))
    return out


def split_output_names(sec: Section, channels: int, layout: str = DEFAULT_LAYOUT) -> list[str]:
    return [f"{head_output_name(sec)}_{suffix}" for suffix, _ in part_slices(sec, channels, layout)]


def make_rule(layout: str = DEFAULT_LAYOUT, name: str = "head_split") -> Rule:
    """A head-split rule for ``layout`` (the registered one uses the default layout;
    benchmarks build others to compare)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown head split layout {layout!r} (known: {', '.join(LAYOUTS)})")

    def build(ctx: BuildContext, sec: Section, ins: list) -> list[Any]:
        conv = feeding_conv(ctx, sec)
        if conv is None:  # nothing to split safely: the plain contract output
            return [keras.layers.Identity(name=head_output_name(sec))(ins[0])]
        x = ctx.tensors[conv.params["inputs"][0]]
        channels = conv.params["out_shape"][2]
        act = conv.params.get("activation", "linear")
        outs = []
        for suffix, sl in part_slices(sec, channels, layout):
            y = conv_linear(ctx, conv, x, filters=sl, suffix=f"_{suffix}")
            if act != "linear":
                y = DarknetActivation(act, name=ctx.name(conv, f"{act}_{suffix}"))(y)
            outs.append(keras.layers.Identity(name=f"{head_output_name(sec)}_{suffix}")(y))
        return outs

    return Rule(
        name=name,
        targets=frozenset({"head"}),
        exact=True,
        opt_in=True,
        emits="CONV_2D per channel group (one output per group)",
        description=f"detection head as per-anchor {layout} outputs (own int8 scale each); "
                    "model.json head_outputs lists them",
        matches=lambda sec, target: target == "head" and sec.kind in ("yolo", "region"),
        build=build,
    )


RULE = register(make_rule())
