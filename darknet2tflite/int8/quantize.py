"""Calibrated full-integer int8 TFLite conversion.

Pipeline (each step a function, so the Prefect flow and the benchmarks can reuse them):

1. :func:`build_int8_model` -- the Keras model with every default (exact) rewrite plus the
   ``head_split`` rule: each head leaves the model as several outputs (per anchor
   ``box | obj+classes``), each with its own int8 scale. Box w/h go through exp(), so
   they need a fine step that they cannot get when they share a scale with class logits.
2. :func:`calibrate_model` -- TFLite's own calibrator (``_experimental_calibrate_only``, the
   hook ``tf.lite.experimental.QuantizationDebugger`` uses) marks the tensors that need
   ranges, on two images; :func:`observe_ranges` then records each one's min/max over all
   calibration images with a plain interpreter, ~5x faster than the calibrator.
3. :func:`refine_ranges` -- replaces the min/max ranges by clipping ranges computed from
   per-tensor histograms of the same images, and pins the input range to exactly [0, 1].
   Min/max ranges are dominated by rare outliers (a leaky-ReLU conv output spans e.g.
   [-52, 42] while almost all values lie within a few units), which wastes most of the 256
   levels. The default ``ranges="mse"`` takes the MSE-optimal clipping range; measured on
   yolov4-tiny it halves the AP loss. ``"mse-tail"`` (upper clip only halfway from the MSE
   optimum to the calibrated maximum) recovers ~0.7 AP50 when the scored photos also
   calibrated, but not on held-out photos, so it is a bench option, not the default
   (docs/int8.md, "Activation ranges"). The float model is untouched: only quantization
   parameters change.
4. :func:`quantize_calibrated` -- TFLite's MLIR quantizer (per-channel weights, int8
   activations, uint8 or int8 input, int8 outputs), optionally keeping named layers float.
5. :func:`check_integer` -- walks the written flatbuffer: no float tensor on any operator
   and input/output types as promised, else :class:`NotFullyIntegerError`.

Input quantization: with the input range pinned to [0, 1] the converter derives scale
1/255 and zero point 0 (uint8) or -128 (int8), so raw 0..255 pixels go straight in; this
is verified on every converted model (:func:`input_quantization`).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from darknet2tflite.int8.augment import MIRROR_BELOW, mirrored_count
from darknet2tflite.int8.channel_split import MAC_BUDGET
from darknet2tflite.errors import InputError, UserError
from darknet2tflite.options import RANGE_METHODS
from darknet2tflite.options import check as check_options

Progress = Callable[[str], None]

INPUT_SCALE = np.float32(1.0 / 255.0)
#: histogram resolution for the MSE range search (bins over the calibrated min/max range)
HIST_BINS = 2048
#: ``ranges="mse-tail"``: the upper clip moves this fraction of the way from the MSE optimum
#: back to the calibrated maximum (0 = "mse", 1 = keep the maximum)
TAIL_KEEP = 0.5
#: at most this many calibration images feed the histograms (ranges converge long before)
HIST_MAX_IMAGES = 128


class NotFullyIntegerError(UserError):
    """The int8 model still contains float computation (an op the converter could not
    quantize); names the ops so a rewrite rule can be written for them."""


@dataclass
class QuantizeOptions:
    input_type: str = "uint8"            # "uint8" (raw pixels) or "int8"
    ranges: str = "mse"                  # options.RANGE_METHODS (refine_ranges)
    variants: tuple[str, ...] = ()       # any of options.VARIANTS
    float_fallback: int = 0              # keep the N worst layers float (extra model file)
    calibration_limit: int | None = None  # use only the first N images of the array
    #: images for the QuantizationDebugger layer table; its cost is per image (yolov4-tiny:
    #: 6.5 s for 16, 3.2 s for 8) and 8 name the same five worst layers as 16 there
    debug_images: int = 8
    #: extra MACs allowed for outlier channel splitting (channel_split.py); 0 turns it off
    channel_split: float = MAC_BUDGET
    #: calibration sets of fewer photos also calibrate on their mirrored copies (augment.py)
    calibration_mirror: int = MIRROR_BELOW
    #: round the heads' box weights with error feedback (box_rounding.py)
    box_rounding: bool = True

    def validate(self) -> None:
        check_options(asdict(self))


# --------------------------------------------------------------------------- model build

def int8_rules(layout: str | None = None) -> list[Any]:
    """Every default (non-opt-in, exact) rewrite plus the head split."""
    from darknet2tflite.rewrites import load_rules
    from darknet2tflite.rewrites.head_split import DEFAULT_LAYOUT, RULE, make_rule
    registry = load_rules()
    rules = [r for r in registry.values() if not r.opt_in]
    split = RULE if layout in (None, DEFAULT_LAYOUT) else make_rule(layout, f"head_split_{layout}")
    return rules + [split]


def tflite_head_outputs(data: bytes | str | Path, keras_outputs: Sequence[str],
                        groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """The .tflite output tensor names of each head's outputs (interpreter order is not
    Keras order; resolved through the signature)."""
    from darknet2tflite.tflite.export import head_tensor_names, interpreter
    it = interpreter(data)
    return [head_tensor_names(it, list(keras_outputs), list(g)) for g in groups]


def build_int8_model(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                     names_path: str | Path | None = None, rules: Sequence[Any] | None = None,
                     progress: Progress = print) -> dict[str, Path]:
    """model.keras, model.float32.tflite and model.json of the head-split model."""
    from darknet2tflite.stages.pipeline import build_stage
    try:
        return build_stage(cfg_path, weights_path, out_dir, names_path,
                           int8_rules() if rules is None else rules, progress=progress)
    except UserError as e:
        raise InputError(str(e)) from None


def load_keras(path: str | Path) -> Any:
    """model.keras with this package's custom layers (and every rule's) registered."""
    import keras
    from darknet2tflite.model import layers as _layers  # noqa: F401  (registers custom layers)
    from darknet2tflite.rewrites import load_rules
    load_rules()
    return keras.models.load_model(path, compile=False)


# --------------------------------------------------------------------------- calibration

def _tf() -> Any:
    import tensorflow as tf
    return tf


def _annotate_for_calibration(model: Any, images: np.ndarray) -> bytes:
    """TFLite's calibrator run on ``images``: a float TFLite model whose activation
    tensors carry min/max fields (which tensors need ranges is the converter's call)."""
    from darknet2tflite.int8.calibration import representative_dataset
    tf = _tf()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_dataset(images)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv._experimental_calibrate_only = True  # noqa: SLF001 -- QuantizationDebugger's hook
    with contextlib.redirect_stdout(io.StringIO()):  # Keras export prints the signature
        return bytes(conv.convert())


def _tensor_interpreter(model: bytes) -> Any:
    """An interpreter over ``model`` whose intermediate tensors stay readable."""
    it = _tf().lite.Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                                num_threads=min(2, os.cpu_count() or 1))
    it.allocate_tensors()
    return it


def observe_ranges(annotated: bytes, images: np.ndarray, progress: Progress | None = None,
                   progress_every: int = 50) -> bytes:
    """``annotated`` with every recorded min/max replaced by the min/max over ``images``.

    Same figures as TFLite's calibrator (global min/max per tensor; equal to 1e-6 relative
    on yolov4-tiny), but about 5x faster per image here: the calibrator runs its logging
    kernels at ~0.3 s per 416x416 image, this loop ~0.05-0.07 s. That is what keeps a 500-photo
    calibration folder within the conversion-time target."""
    ranges = calibrated_ranges(annotated)
    it = _tensor_interpreter(annotated)
    inp = it.get_input_details()[0]["index"]
    lo = {name: np.inf for name in ranges}
    hi = {name: -np.inf for name in ranges}
    for i in range(len(images)):
        it.set_tensor(inp, np.ascontiguousarray(images[i:i + 1], dtype=np.float32))
        it.invoke()
        for name, (ti, _, _) in ranges.items():
            v = it.get_tensor(ti)
            lo[name] = min(lo[name], float(v.min()))
            hi[name] = max(hi[name], float(v.max()))
        if progress and ((i + 1) % max(progress_every, 1) == 0 or i + 1 == len(images)):
            progress(f"int8: activation ranges {i + 1}/{len(images)} images")
    bad = [n for n in ranges if not (np.isfinite(lo[n]) and np.isfinite(hi[n]))]
    if bad:
        raise UserError(f"the float model produces non-finite values in {len(bad)} tensor(s) "
                        f"on the calibration images (first: {bad[0]}); check the weights")
    model = _to_obj(annotated)
    tensors = model.subgraphs[0].tensors
    for name, (ti, _, _) in ranges.items():
        q = tensors[ti].quantization
        q.min, q.max = [lo[name]], [hi[name]]
    return _to_bytes(model)


#: images TFLite's own calibrator runs: it only has to mark the tensors that need ranges;
#: :func:`observe_ranges` then measures them on every image
ANNOTATE_IMAGES = 2


def calibrate_model(model: Any, images: np.ndarray, progress: Progress | None = None) -> bytes:
    """A float TFLite model annotated with per-tensor min/max over ``images``."""
    if not len(images):
        raise InputError("no calibration images")
    annotated = _annotate_for_calibration(model, images[:ANNOTATE_IMAGES])
    return observe_ranges(annotated, images, progress)


def _schema() -> Any:
    from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _to_obj(data: bytes) -> Any:
    from tensorflow.lite.python.util import _convert_model_from_bytearray_to_object as to_obj
    return to_obj(bytearray(data))


def _to_bytes(model: Any) -> bytes:
    from tensorflow.lite.python.util import _convert_model_from_object_to_bytearray as to_b
    return bytes(to_b(model))


def _op_names() -> dict[int, str]:
    schema = _schema()
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _type_names() -> dict[int, str]:
    schema = _schema()
    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def _tname(t: Any) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else str(n)


def calibrated_ranges(calibrated: bytes) -> dict[str, tuple[int, float, float]]:
    """tensor name -> (index, min, max) as recorded by the calibrator."""
    g = _to_obj(calibrated).subgraphs[0]
    out = {}
    for i, t in enumerate(g.tensors):
        q = t.quantization
        if q is not None and q.min is not None and len(q.min) == 1:
            out[_tname(t)] = (i, float(q.min[0]), float(q.max[0]))
    return out


def _consumers(calibrated: bytes) -> tuple[dict[int, list[str]], dict[int, float]]:
    """tensor index -> consuming op names; LEAKY_RELU input index -> alpha."""
    m = _to_obj(calibrated)
    g = m.subgraphs[0]
    names = _op_names()
    cons: dict[int, list[str]] = {}
    alpha: dict[int, float] = {}
    for op in g.operators:
        code = m.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        for t in op.inputs:
            if t >= 0:
                cons.setdefault(int(t), []).append(name)
        if name == "LEAKY_RELU" and op.builtinOptions is not None:
            alpha[int(op.inputs[0])] = float(op.builtinOptions.alpha)
    return cons, alpha


def tensor_histograms(calibrated: bytes, images: np.ndarray, max_images: int = HIST_MAX_IMAGES,
                      bins: int = HIST_BINS) -> dict[str, np.ndarray]:
    """Per-tensor value histograms over each tensor's calibrated [min, max], from running
    the calibrated (still float) model with every intermediate tensor preserved."""
    ranges = calibrated_ranges(calibrated)
    it = _tensor_interpreter(calibrated)
    inp = it.get_input_details()[0]["index"]
    n = min(len(images), max_images)
    pick = np.linspace(0, len(images) - 1, n).round().astype(int) if n else []
    hists: dict[str, np.ndarray] = {}
    for i in pick:
        it.set_tensor(inp, np.ascontiguousarray(images[i:i + 1], dtype=np.float32))
        it.invoke()
        for name, (ti, lo, hi) in ranges.items():
            if not hi > lo:
                continue
            v = it.get_tensor(ti).ravel() - np.float32(lo)  # a copy: scaled in place
            v *= np.float32(bins / (hi - lo))
            # clipped before the integer cast (same bins, one pass less over the data)
            np.clip(v, 0, bins - 1, out=v)
            h = np.bincount(v.astype(np.intp), minlength=bins)
            hists[name] = hists[name] + h if name in hists else h
    return hists


def mse_range(hist: np.ndarray, lo: float, hi: float, neg_weight: float = 1.0,
              steps: int = 64) -> tuple[float, float]:
    """The [a, b] (lo <= a <= 0 <= b <= hi) minimizing the expected squared int8 error
    of values with histogram ``hist`` over [lo, hi]: clipping error outside [a, b] plus
    uniform rounding noise step^2/12 inside. ``neg_weight`` scales errors on negative
    values (alpha^2 for a leaky-ReLU input: its negative side is multiplied by alpha)."""
    bins = len(hist)
    edges = np.linspace(lo, hi, bins + 1)
    c = (edges[:-1] + edges[1:]) / 2
    n = hist.astype(np.float64) * np.where(c < 0, neg_weight, 1.0)
    total = n.sum()
    if total <= 0:
        return lo, hi
    fr = np.linspace(1.0, 1.0 / steps, steps)
    cands_a = lo * fr if lo < 0 else np.array([lo])
    cands_b = hi * fr if hi > 0 else np.array([hi])
    # error terms vectorized over candidates: outside mass via cumulative sums
    best = (np.inf, lo, hi)
    below = [(c < a) for a in cands_a]
    below_err = [float((n * np.where(m, (c - a) ** 2, 0.0)).sum()) for m, a in zip(below, cands_a)]
    below_cnt = [float(n[m].sum()) for m in below]
    for b in cands_b:
        above = c > b
        above_err = float((n * np.where(above, (c - b) ** 2, 0.0)).sum())
        above_cnt = float(n[above].sum())
        for a, be, bc in zip(cands_a, below_err, below_cnt):
            step = (b - a) / 255.0
            inside = total - bc - above_cnt
            err = (be + above_err + inside * step * step / 12.0) / total
            if err < best[0]:
                best = (err, float(a), float(b))
    return best[1], best[2]


def refine_ranges(calibrated: bytes, images: np.ndarray, method: str = "mse",
                  progress: Progress | None = None, hist_images: int = HIST_MAX_IMAGES
                  ) -> tuple[bytes, dict[str, Any]]:
    """Calibrated model with the input pinned to [0, 1] and every activation range replaced
    by its clipping range: MSE-optimal (``mse``), or MSE-optimal below and ``TAIL_KEEP`` of
    the way back to the calibrated maximum above (``mse-tail``); ``minmax`` keeps the
    calibrated ranges. Returns (model, range table: per tensor min/max, MSE optimum and the
    range used)."""
    model = _to_obj(calibrated)
    g = model.subgraphs[0]
    input_ids = {int(i) for i in g.inputs}
    table: dict[str, Any] = {}
    new: dict[int, tuple[float, float]] = {i: (0.0, 1.0) for i in input_ids}
    if method not in RANGE_METHODS:
        raise ValueError(f"unknown range method {method!r}")
    if method != "minmax":
        if progress:
            progress(f"ranges: {method} clipping from histograms of "
                     f"{min(len(images), hist_images)} images")
        ranges = calibrated_ranges(calibrated)
        hists = tensor_histograms(calibrated, images, hist_images)
        cons, alpha = _consumers(calibrated)
        for name, (ti, lo, hi) in ranges.items():
            if ti in input_ids or name not in hists:
                continue
            users = cons.get(ti, [])
            if users and all(u == "LEAKY_RELU" for u in users):
                w = alpha.get(ti, 0.1) ** 2
            elif users and all(u in ("RELU", "RELU6") for u in users):
                w = 0.0
            else:
                w = 1.0
            a, b = mse_range(hists[name], lo, hi, w)
            used = (a, b + TAIL_KEEP * (hi - b)) if method == "mse-tail" else (a, b)
            new[ti] = used
            table[name] = {"minmax": [lo, hi], "mse": [a, b], "used": list(used)}
    for ti, (a, b) in new.items():
        q = g.tensors[ti].quantization
        if q is None or q.min is None or not len(q.min):
            continue
        q.min, q.max = [float(a)], [float(b)]
    return _to_bytes(model), table


def quantize_calibrated(calibrated: bytes, input_type: str = "uint8",
                        denylist: Sequence[str] = (), debug: bool = False) -> bytes:
    """MLIR-quantize a calibrated model: per-channel int8 weights, int8 activations,
    ``input_type`` input, int8 outputs; ``denylist`` tensors (op outputs) stay float."""
    tf = _tf()
    from tensorflow.lite.python import convert as tfl_convert
    kw: dict[str, Any] = dict(disable_per_channel=False, enable_numeric_verify=debug,
                              denylisted_nodes=list(denylist) or None)
    if not debug:
        kw.update(input_data_type=tf.uint8 if input_type == "uint8" else tf.int8,
                  output_data_type=tf.int8)
    return bytes(tfl_convert.mlir_quantize(calibrated, **kw))


# --------------------------------------------------------------------------- checks

_INTEGER_TYPES = {"INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL"}


def inspect_ops(data: bytes) -> list[dict[str, Any]]:
    """Every operator with its input/output tensor types (delegate-free flatbuffer view)."""
    m = _to_obj(data)
    g = m.subgraphs[0]
    names, types = _op_names(), _type_names()
    ops = []
    for i, op in enumerate(g.operators):
        code = m.operatorCodes[op.opcodeIndex]
        ops.append({
            "index": i,
            "op": names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"),
            "inputs": [(_tname(g.tensors[t]), types[g.tensors[t].type]) for t in op.inputs
                       if t >= 0],
            "outputs": [(_tname(g.tensors[t]), types[g.tensors[t].type]) for t in op.outputs],
        })
    return ops


def input_quantization(data: bytes) -> tuple[str, float, int]:
    """(dtype, scale, zero point) of the model input."""
    m = _to_obj(data)
    g = m.subgraphs[0]
    t = g.tensors[g.inputs[0]]
    q = t.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    return _type_names()[t.type], scale, zp


def check_integer(data: bytes, input_type: str = "uint8",
                  allow_float_layers: Iterable[str] = ()) -> dict[str, Any]:
    """Fail unless every operator computes on integer tensors only, the input is
    ``input_type`` with scale exactly 1/255 (zero point 0 for uint8, -128 for int8) and
    every output is int8. ``allow_float_layers``: tensor-name fragments of layers kept float
    on purpose (float fallback); their ops are reported but allowed."""
    allow = list(allow_float_layers)
    ops = inspect_ops(data)
    float_ops, allowed = [], []
    for op in ops:
        tensors = op["inputs"] + op["outputs"]
        if op["op"] == "DEQUANTIZE" or any(t not in _INTEGER_TYPES for _, t in tensors):
            desc = f"{op['op']}({', '.join(n for n, _ in op['outputs'])})"
            if allow and (op["op"] in ("DEQUANTIZE", "QUANTIZE") or any(
                    a in n for a in allow for n, _ in tensors)):
                allowed.append(desc)
            else:
                float_ops.append(desc)
    m = _to_obj(data)
    g = m.subgraphs[0]
    types = _type_names()
    out_types = sorted({types[g.tensors[t].type] for t in g.outputs})
    dtype, scale, zp = input_quantization(data)
    want_zp = 0 if input_type == "uint8" else -128
    problems = []
    if float_ops:
        problems.append(f"float computation in the int8 model: {', '.join(float_ops[:8])}"
                        + (" ..." if len(float_ops) > 8 else ""))
    if not allow:
        if dtype != input_type.upper():
            problems.append(f"input is {dtype}, expected {input_type.upper()}")
        elif np.float32(scale) != INPUT_SCALE or zp != want_zp:
            problems.append(f"input quantization is scale {scale!r} zero point {zp}, expected "
                            f"1/255 and {want_zp}")
        if out_types != ["INT8"]:
            problems.append(f"outputs are {out_types}, expected INT8")
    if problems:
        raise NotFullyIntegerError("; ".join(problems))
    counts: dict[str, int] = {}
    for op in ops:
        counts[op["op"]] = counts.get(op["op"], 0) + 1
    return {"full_integer": not allowed, "ops": counts, "float_ops_allowed": allowed,
            "input": {"dtype": dtype.lower(), "scale": scale, "zero_point": zp},
            "outputs": out_types[0].lower() if len(out_types) == 1 else out_types}


# --------------------------------------------------------------------------- memory

class PeakRSS:
    """Peak resident set size of THIS process, sampled every ``interval`` s while active.

    What it measures: process-wide RSS (TensorFlow runtime, the model, the calibration
    array and the converter's buffers), so ``peak_mb`` is an upper bound on what the
    conversion needs and ``delta_mb`` = peak - RSS at start is what it added. Sampling can
    miss a spike shorter than the interval."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRSS":
        import psutil
        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    def to_dict(self) -> dict[str, Any]:
        return {"peak_mb": round(self.peak / 2**20, 1), "start_mb": round(self.start / 2**20, 1),
                "delta_mb": round((self.peak - self.start) / 2**20, 1),
                "method": f"psutil RSS of the converting process sampled every "
                          f"{self.interval * 1000:.0f} ms (process-wide: includes the "
                          "TensorFlow runtime and the calibration array)"}


# --------------------------------------------------------------------------- layer names

_LAYER_RE = re.compile(r"(?:^|/)L(\d{3,})_")


def layer_of_tensor(name: str, output_layers: Mapping[str, int] | None = None) -> int | None:
    """Darknet layer index of a TFLite tensor name: Keras layer names are ``L###_...`` and
    survive in TFLite tensor names; head outputs are mapped via ``output_layers``."""
    m = _LAYER_RE.search(name)
    if m:
        return int(m.group(1))
    if output_layers:
        for prefix, idx in output_layers.items():
            if name == prefix or name.startswith(prefix):
                return idx
    return None


def output_layer_map(meta: Mapping[str, Any], head_outputs: Sequence[Sequence[str]]
                     ) -> dict[str, int]:
    """TFLite output tensor name -> Darknet index of the conv that computes it."""
    out = {}
    for h, names in zip(meta["heads"], head_outputs):
        src = h.get("input_layer", h["index"] - 1)
        for n in names:
            out[n] = int(src)
    return out


def layer_tensors(calibrated: bytes, layers: Iterable[int],
                  output_layers: Mapping[str, int]) -> list[str]:
    """Names of the op-output tensors belonging to Darknet ``layers`` (denylist input)."""
    want = set(layers)
    names = []
    for name in calibrated_ranges(calibrated):
        idx = layer_of_tensor(name, output_layers)
        if idx is not None and idx in want:
            names.append(name)
    return names


# --------------------------------------------------------------------------- stage

@dataclass
class QuantizeResult:
    paths: dict[str, Path]
    seconds: float
    memory: dict[str, Any]
    integer_check: dict[str, Any]
    ranges: dict[str, Any] = field(default_factory=dict)
    layer_errors: list[dict[str, Any]] = field(default_factory=list)
    fallback: dict[str, Any] | None = None
    variants: dict[str, Any] = field(default_factory=dict)
    channel_split: dict[str, Any] = field(default_factory=dict)
    mirrored_images: int = 0             # mirrored copies added to the calibration images
    range_method: str = ""               # QuantizeOptions.ranges ("" in results before it)
    box_rounding: dict[str, Any] = field(default_factory=dict)  # box_rounding.py report

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # file names only: quantize.json travels (staging dir -> store entry -> --out), and
        # every file it names sits next to it
        d["paths"] = {k: Path(v).name for k, v in self.paths.items()}
        return d


def int8_from_keras(model: Any, images: np.ndarray, opts: QuantizeOptions,
                    progress: Progress = print
                    ) -> tuple[bytes, bytes, dict[str, Any], dict[str, Any], dict[str, Any],
                               dict[str, Any]]:
    """Split outlier channels, round the box weights, calibrate (on ``images`` and, for sets
    below ``opts.calibration_mirror``, their mirrored copies), refine ranges, quantize and
    verify: (int8 model, refined calibrated model, range table, integer check, channel split
    report, box rounding report)."""
    from darknet2tflite.int8.augment import mirror_augment
    from darknet2tflite.int8.box_rounding import round_box_weights
    from darknet2tflite.int8.channel_split import split_outlier_channels
    t0 = time.perf_counter()
    model, split = split_outlier_channels(model, images, budget=opts.channel_split,
                                          progress=progress)
    boxes: dict[str, Any] = {}
    if opts.box_rounding:  # after the split: the box convolutions read its copied channels
        model, box_report = round_box_weights(model, images, progress=progress)
        boxes = box_report.to_dict()
    mirrored = mirrored_count(len(images), opts.calibration_mirror)
    progress(f"int8: calibrating on {len(images)} images"
             + (f" + {mirrored} mirrored" if mirrored else ""))
    images = mirror_augment(images, opts.calibration_mirror)
    calibrated = calibrate_model(model, images, progress)
    progress(f"int8: calibrated in {time.perf_counter() - t0:.1f}s")
    refined, table = refine_ranges(calibrated, images, opts.ranges, progress)
    data = quantize_calibrated(refined, opts.input_type)
    return data, refined, table, check_integer(data, opts.input_type), split.to_dict(), boxes


def quantize(keras_path: str | Path, calib_npy: str | Path, meta_path: str | Path,
             out_dir: str | Path, options: QuantizeOptions | None = None,
             progress: Progress = print) -> QuantizeResult:
    """model.int8.tflite (+ variants, + model.int8-fallback.tflite) and an updated
    model.json in ``out_dir``; the int8 model is verified full-integer before it is written.
    Also writes quantize.json (timings, memory, ranges, per-layer errors)."""
    from darknet2tflite.int8.calibration import load_calibration, representative_dataset
    from darknet2tflite.tflite.export import convert, save_tflite
    from darknet2tflite.darknet.metadata import write_json

    opts = options or QuantizeOptions()
    opts.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    images = load_calibration(calib_npy)
    if opts.calibration_limit:
        images = images[:opts.calibration_limit]
    model = load_keras(keras_path)
    groups = [h.get("outputs") or [h["output"]] for h in meta["heads"]]

    t0 = time.perf_counter()
    with PeakRSS() as mem:
        data, refined, table, check, split, boxes = int8_from_keras(model, images, opts,
                                                                    progress)
    seconds = time.perf_counter() - t0
    progress(f"int8: full-integer model in {seconds:.1f}s "
             f"({sum(check['ops'].values())} ops, peak RSS {mem.peak / 2**20:.0f} MB)")

    heads_int8 = tflite_head_outputs(data, model.output_names, groups)
    by_file = dict(meta.get("head_outputs_by_file") or {})
    by_file["model.int8.tflite"] = heads_int8
    paths: dict[str, Path] = {}
    imeta = dict(meta, head_outputs=heads_int8, quantization={
        "input_type": opts.input_type, "ranges": opts.ranges, "calibration_images": len(images),
        "mirrored_images": mirrored_count(len(images), opts.calibration_mirror),
        "channel_split": {k: v["channels"] for k, v in split["layers"].items()},
        "box_rounding": sorted(boxes.get("layers", {}))})
    paths["tflite_int8"] = save_tflite(data, out / "model.int8.tflite", imeta)

    layer_errs: list[dict[str, Any]] = []
    fallback = None
    if opts.debug_images or opts.float_fallback:
        from darknet2tflite.evaluation.evaluate import layer_errors
        progress("int8: QuantizationDebugger per-layer error")
        cal_out_map = output_layer_map(meta, tflite_head_outputs(
            refined, model.output_names, groups))
        layer_errs = layer_errors(refined, images[:max(opts.debug_images, 4)], cal_out_map)
    if opts.float_fallback:
        worst = []
        for row in layer_errs:
            if row["layer"] is not None and row["layer"] not in worst:
                worst.append(row["layer"])
            if len(worst) == opts.float_fallback:
                break
        deny = layer_tensors(refined, worst, cal_out_map)
        progress(f"int8: float fallback for Darknet layers {worst}")
        fb = quantize_calibrated(refined, opts.input_type, deny)
        fcheck = check_integer(fb, opts.input_type, allow_float_layers=deny)
        fb_heads = tflite_head_outputs(fb, model.output_names, groups)
        by_file["model.int8-fallback.tflite"] = fb_heads
        paths["tflite_int8_fallback"] = save_tflite(
            fb, out / "model.int8-fallback.tflite",
            dict(meta, head_outputs=fb_heads, float_layers=worst))
        fallback = {"layers": worst, "tensors": deny, "check": fcheck}

    variants: dict[str, Any] = {}
    for v in opts.variants:
        progress(f"variant {v}")
        tv = time.perf_counter()
        vd = convert(model, mode=v, representative=representative_dataset(images)
                     if v == "int16x8" else None)
        vh = tflite_head_outputs(vd, model.output_names, groups)
        fname = f"model.{v}.tflite"
        by_file[fname] = vh
        paths[f"tflite_{v}"] = save_tflite(vd, out / fname, dict(meta, head_outputs=vh))
        variants[v] = {"file": fname, "seconds": round(time.perf_counter() - tv, 2)}

    meta["head_outputs"] = heads_int8
    meta["head_outputs_by_file"] = by_file
    meta["quantization"] = imeta["quantization"]
    write_json(out / "model.json", meta)
    paths["meta"] = out / "model.json"
    result = QuantizeResult(paths, round(seconds, 2), mem.to_dict(), check, table, layer_errs,
                            fallback, variants, split, imeta["quantization"]["mirrored_images"],
                            opts.ranges, boxes)
    write_json(out / "quantize.json", result.to_dict())
    paths["quantize"] = out / "quantize.json"
    return result


# --------------------------------------------------------------------------- entry point

#: accuracy / speed targets checked in the report (issue 4)
TARGETS = {"max_ap_loss": 1.0, "max_ap50_loss": 0.3, "min_speedup_1thread": 5.0,
           "max_conversion_seconds": 120.0}


def _existing(path: str | Path | None, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    return p


def plan_images(calibration_dir: str | Path, eval_images: str | Path | None,
                eval_annotations: str | Path | None, eval_fraction: float = 0.5,
                seed: int = 0) -> dict[str, Any]:
    """Which images calibrate and which evaluate; raises InputError before any work.

    Images present in both sets are split deterministically (calibration.holdout_split)
    so the int8 model is never evaluated on its own calibration images. Without explicit
    evaluation images a smaller hold-out of the calibration folder (20 %, at most 50)
    serves for the SQNR numbers."""
    from darknet2tflite.int8.calibration import calibration_images, holdout_split
    from darknet2tflite.evaluation.evaluate import eval_image_list
    calib_all = calibration_images(calibration_dir, limit=None, seed=seed)
    warnings: list[str] = []
    if eval_images is None:
        if eval_annotations is not None:
            raise InputError("evaluation annotations need evaluation images (eval_images)")
        n = len(calib_all)
        if n < 2:
            return {"exclude": [], "eval": list(calib_all), "cross": [], "warnings": [
                "only one calibration image: evaluated on the calibration image itself"]}
        frac = min(0.2, 50 / n) if n > 5 else 1 / n
        _, held = holdout_split(calib_all, frac, seed)
        return {"exclude": held, "eval": held, "cross": [], "warnings": warnings}
    paths, warnings = eval_image_list(eval_images, eval_annotations)
    real_cal = {os.path.realpath(p) for p in calib_all}
    overlap = [p for p in paths if os.path.realpath(p) in real_cal]
    if not overlap:
        return {"exclude": [], "eval": paths, "cross": [], "warnings": warnings}
    if len(overlap) == len(calib_all) and len(calib_all) < 2:
        raise InputError("the only calibration image is also the only evaluation image; "
                         "give more images or a separate evaluation folder")
    _, held = holdout_split(overlap, eval_fraction, seed)
    held_real = {os.path.realpath(p) for p in held}
    evals = [p for p in paths if os.path.realpath(p) not in real_cal
             or os.path.realpath(p) in held_real]
    rest = [p for p in overlap if os.path.realpath(p) not in held_real]
    warnings.append(f"{len(overlap)} evaluation image(s) are also calibration images: "
                    f"{len(held)} held out from calibration for evaluation, "
                    f"{len(rest)} used for calibration only")
    return {"exclude": held, "eval": evals, "warnings": warnings,
            # the swapped fold: calibrate without ``rest``, evaluate on ``rest``
            "cross": [{"exclude": rest, "eval": rest}] if rest else []}


def _targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    ev = report.get("evaluation") or {}
    ap = ev.get("ap")
    cross = ev.get("ap_cross")
    if cross:  # all images, each held out: the steadier estimate (see evaluate.evaluate)
        d_ap, d_ap50, how = cross["dAP"], cross["dAP50"], f"cross-calibrated, {cross['images']} images"
    elif ap and "int8" in ap:
        d_ap, d_ap50 = ap["int8"]["dAP"], ap["int8"]["dAP50"]
        how = f"held-out, {ap['int8']['images']} images"
    else:
        d_ap = None
    if d_ap is not None:
        rows.append({"name": f"int8 AP loss vs float (points; {how})", "value": -d_ap,
                     "limit": f"<= {TARGETS['max_ap_loss']}",
                     "met": -d_ap <= TARGETS["max_ap_loss"]})
        rows.append({"name": f"int8 AP50 loss vs float (points; {how})", "value": -d_ap50,
                     "limit": f"<= {TARGETS['max_ap50_loss']}",
                     "met": -d_ap50 <= TARGETS["max_ap50_loss"]})
    lat = ev.get("latency_ms") or {}
    if "1" in lat.get("float32", {}) and "1" in lat.get("int8", {}):
        sp = lat["float32"]["1"] / lat["int8"]["1"]
        rows.append({"name": "float32 / int8 latency at 1 thread", "value": round(sp, 2),
                     "limit": f">= {TARGETS['min_speedup_1thread']}",
                     "met": sp >= TARGETS["min_speedup_1thread"]})
    secs = (report.get("conversion") or {}).get("seconds")
    if secs is not None:
        rows.append({"name": "int8 conversion seconds", "value": secs,
                     "limit": f"< {TARGETS['max_conversion_seconds']:.0f}",
                     "met": secs < TARGETS["max_conversion_seconds"]})
    return rows


def assemble_report(cfg_path: str | Path, q: QuantizeResult, calib: Any,
                    evaluation: Mapping[str, Any], files: Mapping[str, Path],
                    warnings: Sequence[str] = ()) -> dict[str, Any]:
    from darknet2tflite.rewrites.head_split import DEFAULT_LAYOUT
    report: dict[str, Any] = {
        "model": Path(cfg_path).name,
        "files": {Path(p).name: os.path.getsize(p) for p in files.values() if Path(p).is_file()},
        "conversion": {
            "seconds": q.seconds, "memory": q.memory, "integer_check": q.integer_check,
            "calibration_images": len(calib.images), "mirrored_images": q.mirrored_images,
            "calibration": {k: v for k, v in calib.to_dict().items() if k != "image_names"},
            "ranges": q.range_method or ("mse" if q.ranges else "minmax"),
            "head_split": DEFAULT_LAYOUT,
            "input_type": q.integer_check["input"]["dtype"],
            "variants": q.variants,
            "channel_split": q.channel_split,
            "box_rounding": q.box_rounding,
        },
        "evaluation": dict(evaluation),
        "worst_layers": q.layer_errors[:20],
        "warnings": list(warnings),
    }
    if q.fallback:
        fb = {"layers": q.fallback["layers"], "float_ops": q.fallback["check"]["float_ops_allowed"]}
        ap = evaluation.get("ap") or {}
        if "int8-fallback" in ap:
            fb["dAP"] = round(ap["int8-fallback"]["AP"] - ap["int8"]["AP"], 3)
            fb["dAP50"] = round(ap["int8-fallback"]["AP50"] - ap["int8"]["AP50"], 3)
        report["float_fallback"] = fb
    report["targets"] = _targets(report)
    return report


def cross_models(cfg_path: str | Path, calibration_dir: str | Path, limit: int | None,
                  folds: Sequence[Mapping[str, Any]], keras_path: Path, meta_path: Path,
                  opts: QuantizeOptions, tmp: Path, say: Progress) -> list[tuple[Path, list[Path]]]:
    """int8 models of the swapped folds of ``plan_images(...)["cross"]`` (same conversion,
    other calibration images), written to ``tmp``; pass the result to
    ``evaluate.evaluate(cross=...)`` for the cross-calibrated AP."""
    from darknet2tflite.int8.calibration import calibrate, load_calibration
    from darknet2tflite.tflite.export import save_tflite
    model = load_keras(keras_path)
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    groups = [h.get("outputs") or [h["output"]] for h in meta["heads"]]
    out = []
    for k, fold in enumerate(folds, 2):
        calib = calibrate(cfg_path, calibration_dir, None, limit, exclude=fold["exclude"],
                          progress=say)
        say(f"cross-calibration fold {k}: int8 model calibrated on {len(calib.images)} images")
        data, *_ = int8_from_keras(model, load_calibration(calib.npy), opts, say)
        path = save_tflite(data, tmp / f"model.int8.fold{k}.tflite", dict(
            meta, head_outputs=tflite_head_outputs(data, model.output_names, groups)))
        out.append((path, list(fold["eval"])))
    return out


def convert_int8(cfg_path: str | Path, weights_path: str | Path, out_dir: str | Path,
                 calibration_dir: str | Path, names: str | Path | None = None,
                 eval_annotations: str | Path | None = None,
                 eval_images: str | Path | None = None, input_type: str = "uint8",
                 variants: Sequence[str] = (), float_fallback: int = 0,
                 progress: Progress | None = print, *, calibration_limit: int | None = 500,
                 eval_fraction: float = 0.5, ranges: str = "mse", latency_runs: int = 20,
                 draw: int = 4, cross_validate: bool = True,
                 channel_split: float = MAC_BUDGET,
                 calibration_mirror: int = MIRROR_BELOW) -> dict[str, Any]:
    """Darknet cfg+weights -> calibrated full-integer int8 TFLite, evaluated.

    Writes into ``out_dir`` (all or nothing: staged in a sibling temp folder and moved in
    on success): model.keras, model.float32.tflite, model.int8.tflite, model.json,
    report.json, report.md, report_images/ (+ model.<variant>.tflite,
    model.int8-fallback.tflite, quantize.json). Returns the report dict with ``paths``.

    When the evaluation images are (partly) calibration images, the shared ones are split
    in two halves: the shipped model is calibrated without the first and evaluated on it;
    with ``cross_validate`` a second int8 model, calibrated without the second half, scores
    that half, so AP covers every annotated image, each one unseen by its int8 model
    (report ``ap_cross``; the accuracy targets are judged on it)."""
    from darknet2tflite.int8.calibration import calibrate
    from darknet2tflite.evaluation.evaluate import evaluate, write_report
    from darknet2tflite.stages.pipeline import staged_output

    say = progress or (lambda _m: None)
    opts = QuantizeOptions(input_type=input_type, ranges=ranges, variants=tuple(variants),
                           float_fallback=float_fallback, channel_split=channel_split,
                           calibration_mirror=calibration_mirror)
    opts.validate()
    for p, what in ((cfg_path, "cfg"), (weights_path, "weights"), (names, "names file"),
                    (eval_annotations, "evaluation annotations")):
        if p is not None and not Path(p).is_file():
            raise InputError(f"{what} {p} does not exist")
    _existing(eval_images, "evaluation images")
    if names is not None:  # a names/classes mismatch must not wait for the conversion
        from darknet2tflite.darknet.cfg import parse_cfg
        from darknet2tflite.darknet.metadata import decode_metadata, read_names
        try:
            decode_metadata(parse_cfg(cfg_path), read_names(names))
        except ValueError as e:
            raise InputError(f"{names}: {e}") from None
    # every input problem surfaces here, before any conversion work
    plan = plan_images(calibration_dir, eval_images, eval_annotations, eval_fraction)
    for w in plan["warnings"]:
        say(f"warning: {w}")
    calib = calibrate(cfg_path, calibration_dir, None, calibration_limit,
                      exclude=plan["exclude"], progress=say)
    with staged_output(out_dir) as tmp, tempfile.TemporaryDirectory(prefix="d2t-cross-") as xt:
        xtmp = Path(xt)
        arts = build_int8_model(cfg_path, weights_path, tmp, names, progress=say)
        q = quantize(arts["keras"], calib.npy, arts["meta"], tmp, opts, progress=say)
        extra = {k[len("tflite_"):].replace("_", "-"): v for k, v in q.paths.items()
                 if k.startswith("tflite_") and k != "tflite_int8"}
        cross = []
        if cross_validate and eval_annotations is not None and plan["cross"]:
            cross = cross_models(cfg_path, calibration_dir, calibration_limit, plan["cross"],
                                  arts["keras"], arts["meta"], opts, xtmp, say)
        ev = evaluate(arts["tflite_float32"], q.paths["tflite_int8"], q.paths["meta"],
                      plan["eval"], eval_annotations, tmp, extra_models=extra,
                      latency_runs=latency_runs, draw=draw, cross=cross, progress=say)
        files = {**arts, **q.paths}
        report = assemble_report(cfg_path, q, calib, ev, files, plan["warnings"])
        files.update(write_report(report, tmp))
    out = Path(out_dir)
    report["paths"] = {k: str(out / Path(v).name) for k, v in files.items()}
    return report
