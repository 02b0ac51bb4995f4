"""Layer signatures: what decides a layer's lowering (kind, parameters, matching rules), so equal layers share one probe."""
from __future__ import annotations

from typing import Any, Iterable, Sequence


from darknet2tflite.darknet.config import DarknetConfig, Section


# --------------------------------------------------------------------------- signatures
HEAD_KINDS = ("yolo", "region")


def hooks(sec: Section) -> list[str]:
    """Builder hook points (see BuildContext.rule_for) a rule could use for this section."""
    hs = [sec.kind]
    if sec.kind in ("convolutional", "shortcut", "sam", "scale_channels") \
            and sec.activation != "linear":
        hs.append(f"activation:{sec.activation}")
    if sec.kind in HEAD_KINDS:
        hs.append("head")
    return hs


def matching_rules(sec: Section, rules: Iterable[Any]) -> list[Any]:
    hs = hooks(sec)
    return [r for r in rules if any(h in r.targets and r.matches(sec, h) for h in hs)]


def feeding_conv(sec: Section, cfg: DarknetConfig | None) -> Section | None:
    """The [convolutional] whose raw output a detection head exports, if any."""
    if cfg is None or sec.kind not in HEAD_KINDS:
        return None
    src = sec.params["inputs"][0]
    feed = cfg.layers[src] if src >= 0 else None
    return feed if feed is not None and feed.kind == "convolutional" else None


def signature(sec: Section, rules: Sequence[Any] = (), cfg: DarknetConfig | None = None
              ) -> tuple:
    """Everything that changes how the builder lowers ``sec`` (never depth or sizes that
    only scale the tensors). Includes the names of the rules that match it; a detection
    head (given ``cfg``) also includes the signature of the conv it exports, because head
    rules rebuild that conv."""
    from darknet2tflite.model.builder import conv_padding, maxpool_is_tf_same, maxpool_pads
    p, k = sec.params, sec.kind
    key: tuple
    if k == "convolutional":
        c_in, g = p["in_shapes"][0][2], p["groups"]
        gk = "1" if g == 1 else ("depthwise" if g == c_in else "grouped")
        key = (p["size"], p["stride_y"], p["stride_x"], p["dilation"], gk, conv_padding(sec),
               p["activation"])
    elif k == "maxpool":
        key = (p["size"], p["stride_y"], p["stride_x"], maxpool_pads(sec),
               maxpool_is_tf_same(sec))
    elif k == "route":
        key = ("concat" if len(p["inputs"]) > 1 else "alias", p["groups"])
    elif k == "shortcut":
        c, c_add = (s[2] for s in p["in_shapes"])
        key = (p["activation"], "same" if c == c_add else ("slice" if c_add > c else "partial"))
    elif k == "sam":
        key = (p["activation"],)
    elif k == "scale_channels":
        key = (p["scale_wh"], p["activation"])
    elif k == "upsample":
        key = (p["stride"], p["scale"] != 1.0)
    elif k == "reorg":
        key = (p["stride"],)
    elif k in HEAD_KINDS:
        feed = feeding_conv(sec, cfg)
        key = () if feed is None else (signature(feed, rules),)
    else:  # avgpool, dropout
        key = ()
    return (k, key, tuple(sorted(r.name for r in matching_rules(sec, rules))))


def _sig_str(sig: tuple) -> str:
    kind, key, rules = sig
    s = kind + (repr(key) if key else "")
    return s + (f" +{','.join(rules)}" if rules else "")
