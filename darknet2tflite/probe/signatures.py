"""Layer signatures: what decides a layer's lowering (kind, parameters, matching rules), so equal layers share one probe."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence


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


#: section kind -> the part of its signature that decides its lowering (kind, parameters);
#: one entry per section kind the builder lowers (tests/test_registries.py holds them equal)
SignatureRule = Callable[[Section, Sequence[Any], "DarknetConfig | None"], tuple]
SIGNATURES: dict[str, SignatureRule] = {}


def signature_rule(*kinds: str) -> Callable[[SignatureRule], SignatureRule]:
    def deco(fn: SignatureRule) -> SignatureRule:
        for kind in kinds:
            SIGNATURES[kind] = fn
        return fn
    return deco


@signature_rule("convolutional")
def _conv(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    from darknet2tflite.model.builder import conv_padding
    p = sec.params
    c_in, g = p["in_shapes"][0][2], p["groups"]
    gk = "1" if g == 1 else ("depthwise" if g == c_in else "grouped")
    return (p["size"], p["stride_y"], p["stride_x"], p["dilation"], gk, conv_padding(sec),
            p["activation"])


@signature_rule("maxpool")
def _maxpool(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    from darknet2tflite.model.builder import maxpool_is_tf_same, maxpool_pads
    p = sec.params
    return (p["size"], p["stride_y"], p["stride_x"], maxpool_pads(sec), maxpool_is_tf_same(sec))


@signature_rule("route")
def _route(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    p = sec.params
    return ("concat" if len(p["inputs"]) > 1 else "alias", p["groups"])


@signature_rule("shortcut")
def _shortcut(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    p = sec.params
    c, c_add = (s[2] for s in p["in_shapes"])
    return (p["activation"], "same" if c == c_add else ("slice" if c_add > c else "partial"))


@signature_rule("sam")
def _sam(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    return (sec.params["activation"],)


@signature_rule("scale_channels")
def _scale_channels(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    return (sec.params["scale_wh"], sec.params["activation"])


@signature_rule("upsample")
def _upsample(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    return (sec.params["stride"], sec.params["scale"] != 1.0)


@signature_rule("reorg")
def _reorg(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    return (sec.params["stride"],)


@signature_rule(*HEAD_KINDS)
def _head(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    feed = feeding_conv(sec, cfg)
    return () if feed is None else (signature(feed, rules),)


@signature_rule("avgpool", "dropout")
def _no_parameters(sec: Section, rules: Sequence[Any], cfg: DarknetConfig | None) -> tuple:
    return ()  # lowered the same way whatever their options


def signature(sec: Section, rules: Sequence[Any] = (), cfg: DarknetConfig | None = None
              ) -> tuple:
    """Everything that changes how the builder lowers ``sec`` (never depth or sizes that
    only scale the tensors). Includes the names of the rules that match it; a detection
    head (given ``cfg``) also includes the signature of the conv it exports, because head
    rules rebuild that conv.  A kind without a :data:`SIGNATURES` entry is an error, never
    an empty key (that would make every such layer share one probe)."""
    rule = SIGNATURES.get(sec.kind)
    if rule is None:
        raise KeyError(f"no probe signature for section kind [{sec.kind}] "
                       "(register one with @signature_rule)")
    return (sec.kind, rule(sec, rules, cfg),
            tuple(sorted(r.name for r in matching_rules(sec, rules))))


def _sig_str(sig: tuple) -> str:
    kind, key, rules = sig
    s = kind + (repr(key) if key else "")
    return s + (f" +{','.join(rules)}" if rules else "")
