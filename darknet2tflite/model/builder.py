"""Darknet layers -> functional float32 Keras model, one registered builder per section.

The default lowerings are the literal Darknet semantics (e.g. maxpool padded with -FLT_MAX,
route groups as SPLIT, mish through softplus). Rewrite rules (``darknet2tflite.rewrites``)
replace a lowering where a TFLite target needs it; the builder asks them first, so the
rewritten model is built from the cfg again rather than patched graph surgery.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import keras
import numpy as np

from darknet2tflite.darknet.config import DarknetConfig, Section
from darknet2tflite.darknet.metadata import head_output_name
from darknet2tflite.model.layers import (FLT_MAX, ChannelSlice, ChannelSplit, ConstantPad, DarknetActivation, Reorg,
                     Scale)
from darknet2tflite.darknet.weights import DarknetWeights

if TYPE_CHECKING:
    from darknet2tflite.model.rule import Rule

BN_EPSILON = 1e-5  # AlexeyAB Darknet (OpenCV uses 1e-6: a 8e-5 relative error on yolov4-tiny)


@dataclass
class BuildContext:
    cfg: DarknetConfig
    weights: DarknetWeights | None
    rules: Sequence["Rule"] = ()
    tensors: dict[int, keras.KerasTensor] = field(default_factory=dict)
    applied: dict[str, list[int]] = field(default_factory=dict)

    def name(self, sec: Section, what: str) -> str:
        """Keras layer names carry the Darknet layer index so every report can map back."""
        return f"L{sec.index:03d}_{what}"

    def rule_for(self, target: str, sec: Section) -> "Rule | None":
        for rule in self.rules:
            if target in rule.targets and rule.matches(sec, target):
                self.applied.setdefault(rule.name, [])
                if sec.index not in self.applied[rule.name]:
                    self.applied[rule.name].append(sec.index)
                return rule
        return None

    def activation(self, x: keras.KerasTensor, sec: Section, kind: str | None = None
                   ) -> keras.KerasTensor:
        kind = kind or sec.activation
        if kind == "linear":
            return x
        rule = self.rule_for(f"activation:{kind}", sec)
        if rule is not None:
            return rule.build(self, sec, [x])
        return DarknetActivation(kind, name=self.name(sec, kind))(x)


SectionBuilder = Callable[[BuildContext, Section, list[keras.KerasTensor]], keras.KerasTensor]
SECTION_BUILDERS: dict[str, SectionBuilder] = {}


def section_builder(kind: str) -> Callable[[SectionBuilder], SectionBuilder]:
    def deco(fn: SectionBuilder) -> SectionBuilder:
        SECTION_BUILDERS[kind] = fn
        return fn
    return deco


# --------------------------------------------------------------------------- convolutional

def conv_kernel_and_bias(ctx: BuildContext, sec: Section) -> tuple[np.ndarray, np.ndarray]:
    """Darknet OIHW weights with batch norm folded in (float64, so folding adds no error
    beyond the final float32 rounding)."""
    p = sec.params
    if ctx.weights is None:
        raise ValueError("weights are required to build a model")
    lw = ctx.weights.layers[sec.index]
    w = lw.weights.astype(np.float64)
    b = lw.biases.astype(np.float64)
    if p["batch_normalize"]:
        inv = lw.scales.astype(np.float64) / np.sqrt(lw.rolling_variance.astype(np.float64)
                                                      + BN_EPSILON)
        w = w * inv[:, None, None, None]
        b = b - lw.rolling_mean.astype(np.float64) * inv
    return w.astype(np.float32), b.astype(np.float32)


def _tf_same_pads(size: int, stride: int, n: int, dilation: int = 1) -> tuple[int, int, int]:
    """(out, top, bottom) of TensorFlow's 'SAME' padding."""
    k = (size - 1) * dilation + 1
    out = -(-n // stride)
    total = max((out - 1) * stride + k - n, 0)
    return out, total // 2, total - total // 2


def conv_padding(sec: Section) -> tuple[str, tuple[tuple[int, int], tuple[int, int]] | None]:
    """'same' where TF's SAME equals Darknet's symmetric padding, else explicit zero pads."""
    p = sec.params
    h, w, _ = p["in_shapes"][0]
    oh, ow, _ = p["out_shape"]
    d, pad = p["dilation"], p["padding"] * p["dilation"]
    if pad == 0:
        return "valid", None
    sh = _tf_same_pads(p["size"], p["stride_y"], h, d)
    sw = _tf_same_pads(p["size"], p["stride_x"], w, d)
    if sh == (oh, pad, pad) and sw == (ow, pad, pad):
        return "same", None
    return "valid", ((pad, pad), (pad, pad))


@section_builder("convolutional")
def build_convolutional(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    rule = ctx.rule_for("convolutional", sec)
    if rule is not None:
        return rule.build(ctx, sec, ins)
    return ctx.activation(conv_linear(ctx, sec, ins[0]), sec)


def conv_linear(ctx: BuildContext, sec: Section, x: keras.KerasTensor,
                filters: slice | None = None, suffix: str = "") -> keras.KerasTensor:
    """The conv (with folded BN) before its activation; ``filters`` builds only a slice of
    the output channels (used by the head-split rewrite)."""
    p = sec.params
    kernel, bias = conv_kernel_and_bias(ctx, sec)
    if filters is not None:
        kernel, bias = kernel[filters], bias[filters]
    n = kernel.shape[0]
    c_in = p["in_shapes"][0][2]
    groups = p["groups"]
    padding, explicit = conv_padding(sec)
    if explicit is not None:
        x = keras.layers.ZeroPadding2D(explicit, name=ctx.name(sec, "pad" + suffix))(x)
    common = dict(strides=(p["stride_y"], p["stride_x"]), padding=padding,
                  dilation_rate=p["dilation"], use_bias=True,
                  name=ctx.name(sec, "conv" + suffix))
    if groups > 1 and groups == c_in and filters is None:
        mult = n // c_in
        layer = keras.layers.DepthwiseConv2D(p["size"], depth_multiplier=mult, **common)
        # Darknet (c*m, 1, kh, kw) -> Keras (kh, kw, c, m)
        k = kernel.reshape(c_in, mult, p["size"], p["size"]).transpose(2, 3, 0, 1)
    else:
        if groups > 1 and filters is not None:
            raise ValueError("head split of a grouped conv is not supported")
        layer = keras.layers.Conv2D(n, p["size"], groups=groups, **common)
        k = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    y = layer(x)
    layer.set_weights([k, bias])
    return y


# --------------------------------------------------------------------------- pooling

def maxpool_pads(sec: Section) -> tuple[tuple[int, int], tuple[int, int]]:
    """Darknet's window placement: offset -padding/2, only as much bottom/right as the
    last window reaches."""
    p = sec.params
    h, w, _ = p["in_shapes"][0]
    oh, ow, _ = p["out_shape"]
    top = left = p["padding"] // 2
    bottom = max(0, (oh - 1) * p["stride_y"] + p["size"] - top - h)
    right = max(0, (ow - 1) * p["stride_x"] + p["size"] - left - w)
    return (top, bottom), (left, right)


def maxpool_is_tf_same(sec: Section) -> bool:
    p = sec.params
    h, w, _ = p["in_shapes"][0]
    oh, ow, _ = p["out_shape"]
    (t, b), (l, r) = maxpool_pads(sec)
    return (_tf_same_pads(p["size"], p["stride_y"], h) == (oh, t, b)
            and _tf_same_pads(p["size"], p["stride_x"], w) == (ow, l, r))


@section_builder("maxpool")
def build_maxpool(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    rule = ctx.rule_for("maxpool", sec)
    if rule is not None:
        return rule.build(ctx, sec, ins)
    p = sec.params
    x = ins[0]
    pads = maxpool_pads(sec)
    if pads != ((0, 0), (0, 0)):
        x = ConstantPad([list(pads[0]), list(pads[1])], -FLT_MAX, name=ctx.name(sec, "pad"))(x)
    return keras.layers.MaxPooling2D((p["size"], p["size"]), (p["stride_y"], p["stride_x"]),
                                     padding="valid", name=ctx.name(sec, "maxpool"))(x)


@section_builder("avgpool")
def build_avgpool(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    return keras.layers.GlobalAveragePooling2D(keepdims=True, name=ctx.name(sec, "avgpool"))(ins[0])


# --------------------------------------------------------------------------- wiring

@section_builder("route")
def build_route(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    x = ins[0] if len(ins) == 1 else keras.layers.Concatenate(
        axis=-1, name=ctx.name(sec, "concat"))(ins)
    if sec.params["groups"] == 1:
        if len(ins) == 1:  # a pure alias; give it a name that carries the index
            return keras.layers.Identity(name=ctx.name(sec, "route"))(x)
        return x
    rule = ctx.rule_for("route", sec)
    if rule is not None:
        return rule.build(ctx, sec, [x])
    return ChannelSplit(sec.params["groups"], sec.params["group_id"], "split",
                        name=ctx.name(sec, "route_split"))(x)


@section_builder("shortcut")
def build_shortcut(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    x, add = ins
    c, c_add = int(x.shape[-1]), int(add.shape[-1])
    if c_add > c:  # partial residual: only the first c channels of 'from' are added
        add = ChannelSlice(0, c, name=ctx.name(sec, "shortcut_from"))(add)
    if c_add < c:  # ... or 'from' is added to the first c_add channels, the rest pass
        part = ChannelSlice(0, c_add, name=ctx.name(sec, "shortcut_head"))(x)
        rest = ChannelSlice(c_add, c, name=ctx.name(sec, "shortcut_rest"))(x)
        y = keras.layers.Add(name=ctx.name(sec, "shortcut"))([part, add])
        y = keras.layers.Concatenate(axis=-1, name=ctx.name(sec, "shortcut_concat"))([y, rest])
    else:
        y = keras.layers.Add(name=ctx.name(sec, "shortcut"))([x, add])
    return ctx.activation(y, sec)


@section_builder("upsample")
def build_upsample(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    rule = ctx.rule_for("upsample", sec)
    if rule is not None:
        return rule.build(ctx, sec, ins)
    s = sec.params["stride"]
    y = keras.layers.UpSampling2D((s, s), interpolation="nearest",
                                  name=ctx.name(sec, "upsample"))(ins[0])
    if sec.params["scale"] != 1.0:
        y = Scale(sec.params["scale"], name=ctx.name(sec, "upsample_scale"))(y)
    return y


@section_builder("reorg")
def build_reorg(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    rule = ctx.rule_for("reorg", sec)
    if rule is not None:
        return rule.build(ctx, sec, ins)
    return Reorg(sec.params["stride"], name=ctx.name(sec, "reorg"))(ins[0])


@section_builder("sam")
def build_sam(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    y = Scale(name=ctx.name(sec, "sam"))(ins[0], ins[1])
    return ctx.activation(y, sec)


@section_builder("scale_channels")
def build_scale_channels(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    y = Scale(name=ctx.name(sec, "scale_channels"))(ins[1], ins[0])
    return ctx.activation(y, sec)


@section_builder("dropout")
def build_dropout(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    return keras.layers.Identity(name=ctx.name(sec, "dropout"))(ins[0])


def _head(ctx: BuildContext, sec: Section, ins: list) -> keras.KerasTensor:
    """A detection layer contributes its raw input as a model output (I/O contract)."""
    return ins[0]


SECTION_BUILDERS["yolo"] = _head
SECTION_BUILDERS["region"] = _head


def build_keras(cfg: DarknetConfig, weights: DarknetWeights | None,
                rules: Sequence["Rule"] = (), batch_size: int | None = 1
                ) -> tuple[keras.Model, dict[str, list[int]]]:
    """Returns the model and, per applied rule, the Darknet layer indices it rewrote."""
    ctx = BuildContext(cfg, weights, rules)
    inp = keras.Input((cfg.height, cfg.width, cfg.channels), batch_size=batch_size,
                      name="image")
    outputs = []
    for sec in cfg.layers:
        ins = [inp if r < 0 else ctx.tensors[r] for r in sec.params["inputs"]]
        y = SECTION_BUILDERS[sec.kind](ctx, sec, ins)
        if sec.kind in ("yolo", "region"):
            rule = ctx.rule_for("head", sec)
            if rule is not None:
                outputs.extend(rule.build(ctx, sec, [y]))
            else:
                outputs.append(keras.layers.Identity(name=head_output_name(sec))(y))
        ctx.tensors[sec.index] = y
    model = keras.Model(inp, outputs, name=cfg.path.stem.replace(".", "_"))
    return model, ctx.applied
