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
import math
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from darknet2tflite.darknet.config import DarknetConfig, Section
from darknet2tflite.darknet.cfg import parse_cfg
from darknet2tflite.darknet.weights import ConvWeights, DarknetWeights, read_weights
from darknet2tflite.probe.profiles import Profile, load_profile
from darknet2tflite.probe.report import DEGRADED, OK, ProbeReport, ProbeRow, TargetResult, UNSUPPORTED, _SEVERITY
from darknet2tflite.probe.signatures import HEAD_KINDS, _sig_str, feeding_conv, signature
from darknet2tflite.probe.tiny import _with_shapes, tiny_section, tiny_weights
from darknet2tflite.tflite.inspect import inspect_tflite
from darknet2tflite.tflite.interpreter import interpreter
#: Ops allowed between a head's raw tensor and the model output: pure data movement.
#: Anything else there (LOGISTIC, EXP, MUL, ADD, ...) would be box decoding inside the graph,
#: which the I/O contract forbids (decode is Darknet-exact in decode.py, in float).
HEAD_PASSTHROUGH_OPS = frozenset({
    "RESHAPE", "CONCATENATION", "STRIDED_SLICE", "SLICE", "SPLIT", "SPLIT_V", "TRANSPOSE",
    "QUANTIZE", "DEQUANTIZE",
})
EXACT_TOLERANCE = 1e-5  # max |diff| / max |ref| for rules declared exact


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
                 seed: int = 0, samples: int = 8, tools: bool = True) -> None:
        self.cfg = cfg
        #: also ask the target's own tool (TFLite Micro, Vela) about every layer the
        #: profile's op list lets through (see darknet2tflite/targets)
        self.tools = tools
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
        it = interpreter(data, threads=None)
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
            dead = _unique(summary.dead_outputs)
            fo = _unique(summary.float_ops)
            if dead and set(fo) <= {"DEQUANTIZE", "QUANTIZE", *dead}:
                # one finding whichever way this conversion went: the quantizer leaves such
                # an op in float in some conversions and not in others, so the same layer
                # must not read "degraded" in one run (report) and "unsupported" in another
                flag(UNSUPPORTED, f"{', '.join(dead)} with unused outputs: the int8 quantizer "
                     "leaves such ops in float in some conversions (DEQUANTIZE -> "
                     f"{dead[0]} -> QUANTIZE), nondeterministically", dead)
            elif fo:
                flag(UNSUPPORTED, f"float op {', '.join(fo)} in the int8 graph", fo)
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
        if self.tools and status != UNSUPPORTED and profile.converter == "int8":
            from darknet2tflite.targets.probe_hook import tool_verdict
            for level, why, bad in tool_verdict(profile.name, data):
                flag(level, why, bad)
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

def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


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
