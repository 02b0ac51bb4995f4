"""Layer-by-layer TFLite op probe and automatic choice of rewrite rules.

Why per layer: a whole-model int8 conversion that "works" can still hide a float SPLIT, a
-FLT_MAX pad that flattens a feature map, or an activation whose int8 form is noise. Those
are only attributable (and fixable) when each Darknet layer's lowering is converted and
inspected on its own.

Why per *signature*: the lowering of a layer depends on its kind and a handful of
parameters (activation, kernel size, stride, padding mode, groups, route groups, the rules
that match it), never on depth. Layers with equal signatures share one probe, so probing
yolov4 (162 layers) costs about as much as yolov4-tiny: the number of distinct signatures.

Each signature is built as a tiny Keras model from the builder's own section builders
(:data:`builder.SECTION_BUILDERS` with a mini :class:`builder.BuildContext`): a small
spatial size chosen so that the padding decisions (TF 'SAME' vs explicit pads, maxpool
window placement) stay the same, at most ~32 channels (keeping depthwise/grouped and
divisibility structure), and the layer's real weights cut to that size (or
``weights.random_weights`` of it). It is converted with the target profile's converter
settings (int8: random-normal representative data) and the flatbuffer is inspected: op
names, tensor dtypes (float ops inside an int8 graph), quantization scales (constants like
-FLT_MAX that take over a tensor's range), ops whose outputs nobody reads, and for int8 the
layer's own SQNR against the float layer. A detection head is probed together with the
conv it exports, and nothing but data movement may follow it (no decode in the graph).

The probe never edits a graph: rules are applied by rebuilding through the builder hooks
(``BuildContext.rule_for``), the same way the real model is built.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import numpy as np

from darknet2tflite.darknet.cfg import DarknetConfig, Section, parse_cfg
from darknet2tflite.errors import InputError
from darknet2tflite.darknet.weights import ConvWeights, DarknetWeights, random_weights, read_weights

OK, DEGRADED, UNSUPPORTED = "ok", "degraded", "unsupported"
_SEVERITY = {OK: 0, DEGRADED: 1, UNSUPPORTED: 2}
HEAD_KINDS = ("yolo", "region")
#: Ops allowed between a head's raw tensor and the model output: pure data movement.
#: Anything else there (LOGISTIC, EXP, MUL, ADD, ...) would be box decoding inside the graph,
#: which the I/O contract forbids (decode is Darknet-exact in decode.py, in float).
HEAD_PASSTHROUGH_OPS = frozenset({
    "RESHAPE", "CONCATENATION", "STRIDED_SLICE", "SLICE", "SPLIT", "SPLIT_V", "TRANSPOSE",
    "QUANTIZE", "DEQUANTIZE",
})
FLOAT_DTYPES = ("float32", "float16", "float64")
EXACT_TOLERANCE = 1e-5  # max |diff| / max |ref| for rules declared exact


class ProfileError(InputError):
    """Unknown target profile or a malformed profile JSON (one-line user error)."""


# --------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Profile:
    """A deployment target as data (``profiles/*.json``): which converter settings to use
    and which ops/dtypes the target's runtime accepts."""

    name: str
    description: str
    source: dict[str, Any]
    converter: str                       # "int8" (full integer) or "float"
    allowed_ops: frozenset[str] | None   # None: whatever the converter emits
    require_integer: bool
    float_only_ops: frozenset[str] = frozenset()
    #: {"GATHER": {"1": ["int32"]}}: dtypes a kernel accepts for the op's k-th input
    op_input_dtypes: dict[str, dict[int, tuple[str, ...]]] = field(default_factory=dict)
    min_sqnr_db: float | None = None
    max_quant_scale: float | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "<profile>") -> "Profile":
        try:
            conv = d["converter"]
            if conv not in ("int8", "float"):
                raise ProfileError(f"{origin}: converter must be 'int8' or 'float', got {conv!r}")
            allowed = d.get("allowed_ops")
            return cls(
                name=str(d["name"]), description=str(d.get("description", "")),
                source=dict(d.get("source") or {}), converter=conv,
                allowed_ops=None if allowed is None else frozenset(map(str.upper, allowed)),
                require_integer=bool(d.get("require_integer", conv == "int8")),
                float_only_ops=frozenset(map(str.upper, d.get("float_only_ops") or ())),
                op_input_dtypes={str(op).upper(): {int(k): tuple(v) for k, v in c.items()}
                                 for op, c in (d.get("op_input_dtypes") or {}).items()},
                min_sqnr_db=d.get("min_sqnr_db"), max_quant_scale=d.get("max_quant_scale"),
                notes=tuple(d.get("notes") or ()),
            )
        except KeyError as e:
            raise ProfileError(f"{origin}: profile is missing the field {e.args[0]!r}") from None
        except (TypeError, AttributeError) as e:
            raise ProfileError(f"{origin}: malformed profile ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["allowed_ops"] = None if self.allowed_ops is None else sorted(self.allowed_ops)
        d["float_only_ops"] = sorted(self.float_only_ops)
        d["notes"] = list(self.notes)
        d["op_input_dtypes"] = {op: {str(k): list(v) for k, v in c.items()}
                                for op, c in self.op_input_dtypes.items()}
        return d


def available_profiles() -> list[str]:
    folder = resources.files("darknet2tflite") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(target: "str | Path | Profile") -> Profile:
    """A packaged profile by name (``int8``, ``float``, ``tflm``) or a JSON file path."""
    if isinstance(target, Profile):
        return target
    name = str(target)
    packaged = resources.files("darknet2tflite") / "profiles" / f"{name}.json"
    if "/" not in name and not name.endswith(".json") and packaged.is_file():
        return Profile.from_dict(json.loads(packaged.read_text()), f"profiles/{name}.json")
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ProfileError(f"{path}: cannot read profile JSON ({e})") from None
        if not isinstance(data, dict):
            raise ProfileError(f"{path}: a profile must be a JSON object")
        return Profile.from_dict(data, str(path))
    raise ProfileError(f"unknown target profile {name!r} (available: "
                       f"{', '.join(available_profiles())}, or a path to a profile .json)")


# --------------------------------------------------------------------------- flatbuffer

@dataclass
class OpInfo:
    name: str
    inputs: list[str]     # dtype names ("int8", "float32", ...); constants included
    outputs: list[str]


@dataclass
class TFLiteSummary:
    """What a converted flatbuffer contains, as far as target support is concerned."""

    ops: list[OpInfo]
    float_ops: list[str]       # ops computing on float tensors, excluding I/O-edge (de)quant
    edge_ops: list[str]        # QUANTIZE at an input / DEQUANTIZE at an output
    large_scales: list[dict]   # tensors whose int8 scale exceeds the profile limit
    dead_outputs: list[str]    # ops with outputs nothing reads (e.g. SPLIT keeping 1 group)
    input_dtypes: list[str]
    output_dtypes: list[str]

    @property
    def op_names(self) -> list[str]:
        return [o.name for o in self.ops]


def _interpreter(data: bytes, with_delegates: bool = False) -> Any:
    """LiteRT interpreter; without the default XNNPACK delegate when inspecting, because
    the delegate replaces the ops it claims by one opaque DELEGATE node."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
        OpResolverType = tf.lite.experimental.OpResolverType
    kw: dict[str, Any] = {}
    if not with_delegates:
        kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=bytes(data), **kw)
    it.allocate_tensors()
    return it


def inspect_tflite(data: bytes, max_quant_scale: float | None = None) -> TFLiteSummary:
    """Op list with tensor dtypes, float ops and oversized quantization scales.

    An op counts as a float op if any of its input or output tensors is floating point,
    except a QUANTIZE reading a model input or a DEQUANTIZE writing a model output (the
    optional I/O edges of a full-integer model)."""
    it = _interpreter(data)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    inputs = {d["index"] for d in it.get_input_details()}
    outputs = {d["index"] for d in it.get_output_details()}
    produced: set[int] = set()
    consumed: set[int] = set()
    details = it._get_ops_details()
    for od in details:
        consumed.update(int(i) for i in od["inputs"] if i >= 0)
    ops, float_ops, edge_ops, dead = [], [], [], []
    for od in details:
        ins = [int(i) for i in od["inputs"] if i >= 0]
        outs = [int(i) for i in od["outputs"] if i >= 0]
        produced.update(outs)
        dt_in = [np.dtype(tensors[i]["dtype"]).name for i in ins]
        dt_out = [np.dtype(tensors[i]["dtype"]).name for i in outs]
        name = od["op_name"]
        ops.append(OpInfo(name, dt_in, dt_out))
        if any(o not in consumed and o not in outputs for o in outs):
            dead.append(name)
        if not any(d in FLOAT_DTYPES for d in dt_in + dt_out):
            continue
        if (name == "QUANTIZE" and set(ins) <= inputs) or \
                (name == "DEQUANTIZE" and set(outs) <= outputs):
            edge_ops.append(name)
        else:
            float_ops.append(name)
    readers: dict[int, str] = {}
    for od in details:
        for i in od["inputs"]:
            readers.setdefault(int(i), od["op_name"])
    large = []
    if max_quant_scale is not None:
        for idx, t in sorted(tensors.items()):
            scale = t["quantization"][0]
            if not scale or scale <= max_quant_scale:
                continue
            value = None
            if idx not in produced and idx not in inputs:  # a constant: recover its value
                try:
                    q = it.get_tensor(idx).astype(np.float64).ravel()
                    v = (q - t["quantization"][1]) * scale
                    value = float(v[np.argmax(np.abs(v))])
                except ValueError:
                    pass
            large.append({"tensor": t["name"], "scale": float(scale), "value": value,
                          "read_by": readers.get(idx)})
        large.sort(key=lambda d: d["value"] is None)  # constants (the cause) first
    return TFLiteSummary(
        ops=ops, float_ops=float_ops, edge_ops=edge_ops, large_scales=large, dead_outputs=dead,
        input_dtypes=[np.dtype(tensors[i]["dtype"]).name for i in sorted(inputs)],
        output_dtypes=[np.dtype(tensors[i]["dtype"]).name for i in sorted(outputs)])


# --------------------------------------------------------------------------- report types

@dataclass
class TargetResult:
    status: str
    ops: list[str]
    reason: str = ""
    offending: list[str] = field(default_factory=list)  # op names to blame, if any
    sqnr_db: float | None = None


@dataclass
class ProbeRow:
    index: int
    section: str
    activation: str
    signature: str
    rules: list[str]
    results: dict[str, TargetResult]

    def status(self, target: str | None = None) -> str:
        ts = [target] if target else list(self.results)
        return max((self.results[t].status for t in ts), key=_SEVERITY.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "section": self.section, "activation": self.activation,
                "signature": self.signature, "rules": list(self.rules),
                "status": self.status(),
                "targets": {t: asdict(r) for t, r in self.results.items()}}


@dataclass
class ProbeReport:
    cfg: str
    targets: list[str]
    rules: list[str]
    rows: list[ProbeRow]
    n_signatures: int
    n_conversions: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def unsupported(self, target: str | None = None, include_degraded: bool = True
                    ) -> list[ProbeRow]:
        """Rows that are not fine for ``target`` (all targets if None). Degraded rows
        (converts, but int8 output is noise) count unless ``include_degraded`` is False."""
        worst = DEGRADED if include_degraded else UNSUPPORTED
        return [r for r in self.rows if _SEVERITY[r.status(target)] >= _SEVERITY[worst]]

    @property
    def ok(self) -> bool:
        return not self.unsupported()

    def to_dict(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "targets": self.targets, "rules": self.rules,
                "n_layers": len(self.rows), "n_signatures": self.n_signatures,
                "n_conversions": self.n_conversions, "seconds": round(self.seconds, 3),
                "ok": self.ok, "rows": [r.to_dict() for r in self.rows], **self.extra}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    def to_markdown(self) -> str:
        head = ["layer", "section", "activation", "TFLite ops", *self.targets, "reason"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            first = r.results[self.targets[0]]
            reasons = "; ".join(f"{t}: {r.results[t].reason}" if len(self.targets) > 1
                                else r.results[t].reason
                                for t in self.targets if r.results[t].reason)
            if r.rules:
                reasons = (reasons + "; " if reasons else "") + "rewritten by " + \
                    ", ".join(r.rules)
            cells = [str(r.index), r.section, r.activation, _compact_ops(first.ops) or "-",
                     *[r.results[t].status for t in self.targets], reasons]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _compact_ops(ops: list[str]) -> str:
    out: list[str] = []
    for op in ops:
        if out and out[-1].split("×")[0] == op:
            base, _, n = out[-1].partition("×")
            out[-1] = f"{base}×{int(n or 1) + 1}"
        else:
            out.append(op)
    return ", ".join(out)


# --------------------------------------------------------------------------- signatures

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


# --------------------------------------------------------------------------- probing

@contextlib.contextmanager
def _quiet() -> Iterable[None]:
    """Silence the converter's prints and C++ logging (fd level) for a clean CLI table."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:  # no real fds (embedded interpreter): fall back to Python level only
        pass
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in saved:
            os.dup2(old, fd)
            os.close(old)


def _converter_reason(e: BaseException) -> str:
    """The informative line of a (often multi-kilobyte) converter error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln.lower():
            return ln[ln.lower().index("error:"):][:300]
    return (lines[0] if lines else type(e).__name__)[:300]


def _unique(xs: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for x in xs:
        seen.setdefault(x, None)
    return list(seen)


class Prober:
    """Probes signatures with a cache, so repeated probes (before/after rewriting, trying
    candidate rules) convert every (signature, target) once."""

    def __init__(self, cfg: DarknetConfig, weights: DarknetWeights | None = None,
                 seed: int = 0, samples: int = 8) -> None:
        self.cfg = cfg
        self.weights = weights
        self.seed = seed
        self.samples = samples
        self.cache: dict[tuple, tuple[dict[str, TargetResult], list[str]]] = {}
        self.conversions = 0
        self.weights_made = 0  # conv weight sets built for probe copies

    def build_tiny(self, sec: Section, rules: Sequence[Any]) -> tuple[Any, list[str]]:
        """The one-layer Keras model of ``sec``'s probe copy, built by the builder's own
        section builder (so rules hook in exactly as in the full build). A detection head
        is built together with the conv it exports (its real filter count), because head
        rules rebuild that conv and whatever follows it must be pure data movement."""
        import keras

        from darknet2tflite.model.builder import SECTION_BUILDERS, BuildContext, head_output_name
        layers: dict[int, ConvWeights] = {}
        w = DarknetWeights(path=Path("<probe>"), major=0, minor=2, revision=5, seen=0,
                           layers=layers)
        ctx = BuildContext(self.cfg, w, list(rules))
        feed = feeding_conv(sec, self.cfg)
        if feed is not None:
            tiny_feed = tiny_section(feed, rules, keep_filters=True)
            layers[feed.index] = tiny_weights(feed, tiny_feed, self.weights, self.seed)
            ins = [keras.Input(tuple(tiny_feed.params["in_shapes"][0]), batch_size=1,
                               name="in0")]
            ctx.tensors[feed.params["inputs"][0]] = ins[0]
            x = SECTION_BUILDERS["convolutional"](ctx, tiny_feed, list(ins))
            ctx.tensors[feed.index] = x
            ctx.applied.clear()  # only the head's own rules belong to this row
            tiny = _with_shapes(sec, [tiny_feed.params["out_shape"]]) or sec
            head_ins = [x]
        else:
            tiny = tiny_section(sec, rules)
            if tiny.kind == "convolutional":
                layers[sec.index] = tiny_weights(sec, tiny, self.weights, self.seed)
                self.weights_made += 1
            ins = [keras.Input(tuple(s), batch_size=1, name=f"in{i}")
                   for i, s in enumerate(tiny.params["in_shapes"])]
            head_ins = list(ins)
        y = SECTION_BUILDERS[tiny.kind](ctx, tiny, head_ins)
        if tiny.kind in HEAD_KINDS:
            rule = ctx.rule_for("head", tiny)
            outs = list(rule.build(ctx, tiny, [y])) if rule is not None else \
                [keras.layers.Identity(name=head_output_name(tiny))(y)]
        else:
            outs = [y]
        model = keras.Model(ins, outs, name=f"probe_L{sec.index:03d}")
        return model, sorted(ctx.applied)

    def _representative(self, model: Any, seed: int, n: int) -> list[list[np.ndarray]]:
        rng = np.random.default_rng(seed)
        return [[rng.normal(0.0, 1.0, (1, *t.shape[1:])).astype(np.float32)
                 for t in model.inputs] for _ in range(n)]

    def _convert(self, model: Any, profile: Profile) -> bytes:
        import tensorflow as tf

        from darknet2tflite.tflite.export import convert
        self.conversions += 1
        with _quiet():
            if profile.converter == "float":
                return convert(model, mode="float32")
            data = self._representative(model, self.seed, self.samples)
            return convert(model, mode="int8", representative=lambda: iter(data),
                           input_type=tf.int8, output_type=tf.int8)

    def _sqnr(self, model: Any, data: bytes) -> float | None:
        """int8 vs float SQNR of this one layer: the float reference sees the same
        (quantized, then dequantized) input, so only this layer's own error is measured.
        The converter's signature keeps the Keras input names and numbers the outputs in
        Keras order (output_0, output_1, ...)."""
        it = _interpreter(data, with_delegates=True)
        runner = it.get_signature_runner()
        in_details = runner.get_input_details()
        names = [t.name.split(":")[0] for t in model.inputs]
        if set(names) != set(in_details):
            return None
        out_details = runner.get_output_details()
        err = ref = 0.0
        for sample in self._representative(model, self.seed + 1000, 4):
            feeds, floats = {}, []
            for name, x in zip(names, sample):
                d = in_details[name]
                if d["dtype"] == np.float32:
                    feeds[name] = x
                    floats.append(x)
                    continue
                s, z = d["quantization"]
                info = np.iinfo(d["dtype"])
                q = np.clip(np.round(x / s + z), info.min, info.max).astype(d["dtype"])
                feeds[name] = q
                floats.append((q.astype(np.float32) - z) * s)
            got = runner(**feeds)
            refs = _as_list(model(floats, training=False))
            for k, r in enumerate(refs):
                key = f"output_{k}"
                if key not in got:
                    return None
                y = got[key].astype(np.float32)
                d = out_details[key]
                if d["dtype"] != np.float32:
                    s, z = d["quantization"]
                    y = (y - z) * s
                r = np.asarray(r, np.float32)
                if y.shape != r.shape:
                    return None
                err += float(np.sum((y - r) ** 2))
                ref += float(np.sum(r ** 2))
        if ref == 0.0:
            return None
        return math.inf if err == 0.0 else 10.0 * math.log10(ref / err)

    def check(self, model: Any, sec: Section, profile: Profile,
              baseline: Sequence[str] = ()) -> TargetResult:
        """Convert ``model`` for ``profile`` and judge it. ``baseline``: ops that belong to
        a head's feeding conv (the head row reports and judges only the rest)."""
        try:
            data = self._convert(model, profile)
        except Exception as e:  # the converter raises many types; all mean "unsupported"
            return TargetResult(UNSUPPORTED, [], f"converter failed: {_converter_reason(e)}")
        summary = inspect_tflite(data, profile.max_quant_scale
                                 if profile.converter == "int8" else None)
        ops = summary.op_names
        if sec.kind in HEAD_KINDS and baseline:
            left = Counter(baseline)
            own = []
            for o in ops:
                if left[o] > 0:
                    left[o] -= 1
                else:
                    own.append(o)
            ops = own
        status, reasons, offending = OK, [], []

        def flag(level: str, why: str, bad: Iterable[str] = ()) -> None:
            nonlocal status
            if _SEVERITY[level] > _SEVERITY[status]:
                status = level
            reasons.append(why)
            offending.extend(b for b in bad if b not in offending)

        nonbuiltin = [o for o in ops if o.startswith("Flex") or o in ("CUSTOM", "DELEGATE")]
        if nonbuiltin:
            flag(UNSUPPORTED, f"non-builtin op {', '.join(_unique(nonbuiltin))}", nonbuiltin)
        if profile.allowed_ops is not None:
            missing = [o for o in _unique(ops) if o not in profile.allowed_ops]
            if missing:
                flag(UNSUPPORTED, f"{', '.join(missing)} not in the {profile.name} op set",
                     missing)
        for op in summary.ops:
            for k, allowed in profile.op_input_dtypes.get(op.name, {}).items():
                if k < len(op.inputs) and op.inputs[k] not in allowed:
                    flag(UNSUPPORTED, f"{op.name} input {k} is {op.inputs[k]}; the "
                         f"{profile.name} kernel takes {'/'.join(allowed)}", [op.name])
        if profile.require_integer:
            if summary.float_ops:
                fo = _unique(summary.float_ops)
                flag(UNSUPPORTED, f"float op {', '.join(fo)} in the int8 graph", fo)
            if summary.dead_outputs and not summary.float_ops:
                dead = _unique(summary.dead_outputs)
                flag(DEGRADED, f"{', '.join(dead)} with unused outputs: the int8 quantizer "
                     "leaves such ops in float in some conversions (DEQUANTIZE -> "
                     f"{dead[0]} -> QUANTIZE), nondeterministically", dead)
            fonly = [o for o in _unique(ops) if o in profile.float_only_ops]
            if fonly:
                flag(UNSUPPORTED, f"{', '.join(fonly)}: {profile.name} kernel is float32-only",
                     fonly)
        if sec.kind in HEAD_KINDS:
            allowed_after = HEAD_PASSTHROUGH_OPS | {"CONV_2D"} if baseline else \
                HEAD_PASSTHROUGH_OPS  # a head rule may re-slice the feeding conv
            decode = [o for o in _unique(ops) if o not in allowed_after]
            if decode:
                flag(UNSUPPORTED, f"decode op {', '.join(decode)} after [{sec.kind}] (heads "
                     "must be raw conv outputs)", decode)
        if summary.large_scales:
            big = summary.large_scales[0]
            if big["value"] is not None:
                why = (f"quantization-hostile constant {big['value']:.3g} (input of "
                       f"{big['read_by']}) gives int8 scale {big['scale']:.3g}")
            else:
                why = f"quantization-hostile range: tensor {big['tensor']} has int8 scale " \
                      f"{big['scale']:.3g}"
            n = len(summary.large_scales)
            flag(DEGRADED, why + (f" ({n} tensors affected)" if n > 1 else ""),
                 [big["read_by"]] if big["read_by"] else [])
        sqnr = None
        if profile.converter == "int8" and ops and status != UNSUPPORTED:
            try:
                with _quiet():  # the XNNPACK delegate announces itself on stderr
                    sqnr = self._sqnr(model, data)
            except Exception as e:  # a runtime kernel refusing the model is a finding too
                flag(UNSUPPORTED, f"interpreter failed: {_converter_reason(e)}")
            if sqnr is not None and profile.min_sqnr_db is not None \
                    and sqnr < profile.min_sqnr_db:
                flag(DEGRADED, f"int8 SQNR {sqnr:.1f} dB < {profile.min_sqnr_db:g} dB",
                     [o for o in _unique(ops) if o not in ("CONV_2D", "DEPTHWISE_CONV_2D",
                                                            "QUANTIZE")])
        return TargetResult(status, ops, "; ".join(reasons), offending,
                            None if sqnr is None or math.isinf(sqnr) else round(sqnr, 2))

    def probe_section(self, sec: Section, rules: Sequence[Any], profiles: Sequence[Profile]
                      ) -> tuple[dict[str, TargetResult], list[str]]:
        sig = signature(sec, rules, self.cfg)
        todo = [p for p in profiles if (sig, p.name) not in self.cache]
        if todo:
            baseline: dict[str, list[str]] = {}
            feed = feeding_conv(sec, self.cfg)
            if feed is not None:  # a head's row reports only what follows its conv
                res, _ = self.probe_section(feed, [r for r in rules if "head" not in
                                                   r.targets], todo)
                baseline = {p: r.ops for p, r in res.items()}
            try:
                model, applied = self.build_tiny(sec, rules)
            except Exception as e:  # a rule or builder that cannot build this layer
                why = f"probe model could not be built: {type(e).__name__}: {e}"
                for p in todo:
                    self.cache[(sig, p.name)] = (TargetResult(UNSUPPORTED, [], why[:300]),
                                                 [])
            else:
                for p in todo:
                    self.cache[(sig, p.name)] = (
                        self.check(model, sec, p, baseline.get(p.name, [])), applied)
                del model
        out, applied = {}, []
        for p in profiles:
            res, applied = self.cache[(sig, p.name)]
            out[p.name] = res
        return out, applied

    def probe(self, targets: Sequence[Profile], rules: Sequence[Any] = ()) -> ProbeReport:
        t0 = time.perf_counter()
        conv0 = self.conversions
        rows, sigs = [], set()
        for sec in self.cfg.layers:
            sig = signature(sec, rules, self.cfg)
            sigs.add(sig)
            results, applied = self.probe_section(sec, rules, targets)
            results = {t: replace(r, ops=list(r.ops), offending=list(r.offending))
                       for t, r in results.items()}  # rows own their copy (cache is shared)
            rows.append(ProbeRow(sec.index, sec.kind, sec.activation
                                 if sec.kind in ("convolutional", "shortcut", "sam",
                                                 "scale_channels") else "-",
                                 _sig_str(sig), applied, results))
        return ProbeReport(cfg=str(self.cfg.path), targets=[p.name for p in targets],
                           rules=[r.name for r in rules], rows=rows, n_signatures=len(sigs),
                           n_conversions=self.conversions - conv0,
                           seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------- public API

def _as_cfg(cfg: DarknetConfig | str | Path) -> DarknetConfig:
    return cfg if isinstance(cfg, DarknetConfig) else parse_cfg(cfg)


def _as_weights(weights: Any, cfg: DarknetConfig) -> DarknetWeights | None:
    if weights is None or isinstance(weights, DarknetWeights):
        return weights
    if isinstance(weights, dict):  # {layer index: ConvWeights}, e.g. random_weights()
        return DarknetWeights(path=Path("<memory>"), major=0, minor=2, revision=5, seen=0,
                              layers=weights)
    return read_weights(weights, cfg)


def _as_profiles(target: Any) -> list[Profile]:
    if isinstance(target, (str, Path, Profile)):
        return [load_profile(target)]
    return [load_profile(t) for t in target]


def probe(cfg: DarknetConfig | str | Path, weights: Any = None,
          target: "str | Profile | Sequence[str | Profile]" = "int8",
          rules: Sequence[Any] = (), *, seed: int = 0,
          prober: Prober | None = None) -> ProbeReport:
    """Probe every layer of ``cfg`` for ``target`` (one profile or several).

    ``weights``: a DarknetWeights, a .weights path, a {layer: ConvWeights} dict, or None
    (each probed conv gets :func:`weights.random_weights` of its own shape)."""
    cfg = _as_cfg(cfg)
    profiles = _as_profiles(target)
    prober = prober or Prober(cfg, _as_weights(weights, cfg), seed=seed)
    return prober.probe(profiles, rules)


@dataclass
class AppliedRewrite:
    """One rule chosen by :func:`probe_with_rewrites`, with what it fixed and, when images
    were given, its measured float deviation on the whole model."""

    name: str
    exact: bool
    opt_in: bool
    emits: str
    description: str
    layers: list[int]
    fixes: list[dict[str, Any]]
    max_abs: float | None = None
    max_rel: float | None = None

    @property
    def within_tolerance(self) -> bool | None:
        if self.max_rel is None or not self.exact:
            return None
        return self.max_rel <= EXACT_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_tolerance": self.within_tolerance}


def choose_rules(prober: Prober, before: ProbeReport, profiles: Sequence[Profile],
                 candidates: Sequence[Any]) -> tuple[list[Any], dict[int, list[str]]]:
    """Greedy per failing row: the first candidate rule (exact ones first) that, together
    with the rules chosen so far, makes the row's signature fine on every failing target;
    if no single rule does, all matching candidates together. Also returns, per layer that
    no rule fixed, the rules that were tried."""
    chosen: list[Any] = []
    tried: dict[int, list[str]] = {}
    ordered = sorted(candidates, key=lambda r: (not r.exact, r.name))
    for row in before.unsupported():
        sec = prober.cfg.layers[row.index]
        res, _ = prober.probe_section(sec, chosen, profiles)
        if all(r.status == OK for r in res.values()):
            continue  # an earlier choice (same hook elsewhere) already fixed it
        cands = [r for r in matching_rules(sec, ordered) if r not in chosen]
        attempts = [[c] for c in cands] + ([cands] if len(cands) > 1 else [])
        for extra in attempts:
            res2, _ = prober.probe_section(sec, chosen + extra, profiles)
            if all(r.status == OK for r in res2.values()):
                chosen.extend(extra)
                break
        else:
            tried[row.index] = [c.name for c in cands]
    return chosen, tried


def load_images(images: Any, cfg: DarknetConfig, limit: int = 8) -> np.ndarray:
    """(N, H, W, C) float32 pixels/255 (RGB, or grey for ``channels=1``) at the net size
    from an array, image paths or a folder (plain resize: both models compared see the same
    pixels, so Darknet-exact letterboxing is irrelevant to a float-vs-float deviation)."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32)
    import cv2

    from darknet2tflite.images import ImageError, check_network_channels, load_network_image
    check_network_channels(cfg.channels, f"{cfg.path}: ")
    paths: list[Path] = []
    for item in ([images] if isinstance(images, (str, Path)) else list(images)):
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir()
                            if q.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
        else:
            paths.append(p)
    out = []
    for p in paths[:limit]:
        try:
            img = load_network_image(p, cfg.channels)
        except ImageError as e:
            raise InputError(str(e)) from None
        img = cv2.resize(img, (cfg.width, cfg.height), interpolation=cv2.INTER_LINEAR)
        out.append(img.reshape(cfg.height, cfg.width, -1).astype(np.float32) / 255.0)
    if not out:
        raise InputError(f"no images found in {images}")
    return np.stack(out)


def deviation(cfg: DarknetConfig, weights: DarknetWeights, rules: Sequence[Any],
              batch: np.ndarray, reference: list[list[np.ndarray]] | None = None
              ) -> tuple[float, float, list[list[np.ndarray]]]:
    """(max abs, max rel = max|diff| / max|ref|) of the float Keras heads with ``rules``
    against the plain build, over ``batch``; also returns the reference outputs."""
    from darknet2tflite.model.builder import build_keras
    if reference is None:
        base, _ = build_keras(cfg, weights)
        reference = [[np.asarray(o) for o in _as_list(base(x[None], training=False))]
                     for x in batch]
        del base
    model, _ = build_keras(cfg, weights, rules)
    diff = ref = 0.0
    for x, refs in zip(batch, reference):
        outs = _as_list(model(x[None], training=False))
        for o, r in zip(outs, refs):
            diff = max(diff, float(np.max(np.abs(np.asarray(o) - r))))
            ref = max(ref, float(np.max(np.abs(r))))
    del model
    return diff, (diff / ref if ref else 0.0), reference


def rule_deviations(cfg: DarknetConfig, weights: DarknetWeights, rules: Sequence[Any],
                    images: Any, limit: int = 8
                    ) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """Float deviation of each rule alone and of all together against the plain build on
    real images: ``([(max_abs, max_rel) per rule], {"max_abs", "max_rel", "images"})``."""
    batch = load_images(images, cfg, limit=limit)
    reference = None
    per_rule = []
    for r in rules:
        mabs, mrel, reference = deviation(cfg, weights, [r], batch, reference)
        per_rule.append((mabs, mrel))
    if len(rules) > 1:
        mabs, mrel, _ = deviation(cfg, weights, rules, batch, reference)
    else:
        mabs, mrel = per_rule[0]
    return per_rule, {"max_abs": mabs, "max_rel": mrel, "images": int(len(batch))}


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def probe_with_rewrites(cfg: DarknetConfig | str | Path, weights: Any = None,
                        target: "str | Profile | Sequence[str | Profile]" = "int8",
                        images: Any = None, *, allow: Sequence[str] = (), seed: int = 0,
                        prober: Prober | None = None
                        ) -> tuple[ProbeReport, ProbeReport, list[AppliedRewrite]]:
    """Probe, choose registered rules that fix every unsupported/degraded row, re-probe.

    Only non-opt-in rules are considered, plus the opt-in ones named in ``allow``. With
    ``images`` (array, paths or folder) each chosen rule's float deviation is measured on
    the whole model against the plain build (exact rules must stay <= 1e-5 relative)."""
    from darknet2tflite.rewrites import load_rules
    cfg = _as_cfg(cfg)
    profiles = _as_profiles(target)
    registry = load_rules()
    unknown = [a for a in allow if a not in registry]
    if unknown:
        raise InputError(f"unknown rewrite rule(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(registry))})")
    candidates = [r for r in registry.values() if not r.opt_in or r.name in allow]
    w = _as_weights(weights, cfg)
    prober = prober or Prober(cfg, w, seed=seed)
    before = prober.probe(profiles)
    chosen, tried = choose_rules(prober, before, profiles, candidates)
    after = prober.probe(profiles, chosen)
    unfixed = []
    for row in after.unsupported():
        names = tried.get(row.index)
        if names is None:  # same signature as a row that was tried
            names = next((v for k, v in tried.items()
                          if after.rows[k].signature == row.signature), [])
        sec = cfg.layers[row.index]
        blocked = [r.name for r in matching_rules(sec, registry.values())
                   if r.opt_in and r.name not in allow]
        note = (f"no rule fixes it (tried: {', '.join(names)})" if names
                else "no registered rule matches it")
        if blocked:
            note += f"; opt-in rule {', '.join(blocked)} matches (allow it to try)"
        for res in row.results.values():
            if res.status != OK:
                res.reason = f"{res.reason}; {note}" if res.reason else note
        unfixed.append({"layer": row.index, "section": row.section, "tried": names,
                        "opt_in_not_allowed": blocked,
                        "reason": {t: r.reason for t, r in row.results.items()
                                   if r.status != OK}})
    after.extra["unfixed"] = unfixed
    layers: dict[str, list[int]] = {}
    fixes: dict[str, list[dict]] = {}
    for old, row in zip(before.rows, after.rows):
        for name in row.rules:
            layers.setdefault(name, []).append(row.index)
            if old.status() != OK:
                fixes.setdefault(name, []).append({
                    "layer": row.index, "section": row.section,
                    "before": {t: {"status": v.status, "reason": v.reason}
                               for t, v in old.results.items() if v.status != OK},
                    "after": {t: {"status": v.status, "reason": v.reason}
                              for t, v in row.results.items()}})
    applied = [AppliedRewrite(r.name, r.exact, r.opt_in, r.emits, r.description,
                              layers.get(r.name, []), fixes.get(r.name, [])) for r in chosen]
    if images is not None and chosen:
        full = w if w is not None else _as_weights(random_weights(cfg, seed), cfg)
        per_rule, after.extra["deviation_all_rules"] = rule_deviations(cfg, full, chosen, images)
        for a, (mabs, mrel) in zip(applied, per_rule):
            a.max_abs, a.max_rel = mabs, mrel
    after.extra["rewrites"] = [a.to_dict() for a in applied]
    return before, after, applied
