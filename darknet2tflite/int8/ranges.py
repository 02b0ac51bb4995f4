"""Activation ranges for int8: calibrate, observe (min/max and histograms in one pass) and refine (MSE) the ranges the converter recorded, then quantize."""
from __future__ import annotations

import contextlib
import io
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from darknet2tflite.errors import InputError, UserError
from darknet2tflite.options import RANGE_METHODS
from darknet2tflite.tflite.flatbuffer import _op_names, _tname, _to_bytes, _to_obj
from darknet2tflite.tflite.interpreter import interpreter

Progress = Callable[[str], None]
#: histogram resolution for the MSE range search (bins over the calibrated min/max range)
HIST_BINS = 2048
#: ``ranges="mse-tail"``: the upper clip moves this fraction of the way from the MSE optimum
#: back to the calibrated maximum (0 = "mse", 1 = keep the maximum)
TAIL_KEEP = 0.5
#: at most this many calibration images feed the histograms (ranges converge long before)
HIST_MAX_IMAGES = 128
#: bins a :class:`GrowingHistogram` holds before its bin width doubles
FINE_BINS = 1 << 16
#: a photo's range-carrying tensors up to this size are counted while the next photo runs
OVERLAP_MAX_BYTES = 512 * 2**20
#: interpreter threads of the passes over the calibration photos
THREADS = min(2, os.cpu_count() or 1)


# --------------------------------------------------------------------------- calibration

def _tf() -> Any:
    import tensorflow as tf
    return tf


def annotate_for_calibration(model: Any, images: np.ndarray) -> bytes:
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


class GrowingHistogram:
    """A value histogram that needs no range in advance.

    Why: the MSE clipping ranges are searched over histograms binned on each tensor's
    min/max over all photos, which is known only after a whole pass. Bins of a width that
    doubles when the values outgrow ``FINE_BINS`` of them (each doubling merges whole bins, so
    nothing is approximated) let the min/max and the histograms come from one pass;
    :meth:`over` then re-bins to ``HIST_BINS`` bins of the final range. At least 16 fine
    bins fall in each final bin, so a final count is off by at most the values that sit in
    the one fine bin straddling its edge."""

    __slots__ = ("origin", "width", "counts")

    def __init__(self) -> None:
        self.origin = 0.0
        self.width = 0.0
        self.counts: np.ndarray | None = None

    def _regrid(self, lo: float, hi: float) -> None:
        """Widen the bins (by a power of two) and move the origin (by whole new bins) until
        [lo, hi] fits in ``FINE_BINS`` bins."""
        assert self.counts is not None
        n = len(self.counts)
        first = min(0, int(np.floor((lo - self.origin) / self.width)))
        last = max(n - 1, int(np.floor((hi - self.origin) / self.width)))
        if first == 0 and last == n - 1:
            return
        d = 0
        while (last - (first >> d << d)) >> d >= FINE_BINS:
            d += 1
        a = first >> d << d  # a whole number of new bins below the old origin
        size = ((last - a) >> d) + 1
        moved = (np.arange(n, dtype=np.int64) - a) >> d
        self.counts = np.bincount(moved, weights=self.counts, minlength=size)
        self.origin += a * self.width
        self.width *= 2 ** d

    def add(self, v: np.ndarray, vmin: float, vmax: float) -> None:
        """Count ``v`` (whose min and max the caller has measured); ``v`` is overwritten."""
        if self.counts is None:
            span = vmax - vmin
            self.origin = vmin
            self.width = span / (FINE_BINS // 2) if span > 0 else max(abs(vmin), 1.0) / FINE_BINS
            self.counts = np.zeros(FINE_BINS // 2 + 1)
        self._regrid(vmin, vmax)
        n = len(self.counts)
        np.subtract(v, np.float32(self.origin), out=v)
        np.multiply(v, np.float32(1.0 / self.width), out=v)
        np.clip(v, 0, n - 1, out=v)  # float rounding at the two ends
        self.counts += np.bincount(v.astype(np.intp), minlength=n)

    def over(self, lo: float, hi: float, bins: int = HIST_BINS) -> np.ndarray:
        """The counts re-binned to ``bins`` equal bins over [lo, hi] (each fine bin goes
        whole to the final bin that holds its centre)."""
        assert self.counts is not None
        centres = self.origin + (np.arange(len(self.counts)) + 0.5) * self.width
        idx = np.clip(np.floor((centres - lo) * (bins / (hi - lo))), 0, bins - 1)
        return np.bincount(idx.astype(np.intp), weights=self.counts, minlength=bins)


def _histogram_picks(n_images: int, max_images: int) -> set[int]:
    """Which of ``n_images`` photos feed the histograms: ``max_images`` spread evenly."""
    n = min(n_images, max_images)
    return set(np.linspace(0, n_images - 1, n).round().astype(int).tolist()) if n else set()


class Observed(NamedTuple):
    """What :func:`observe_ranges` measured in its pass."""
    #: the annotated model with each tensor's min/max over all photos
    model: bytes
    #: per tensor, HIST_BINS counts over that [min, max] (for :func:`refine_ranges`)
    hists: dict[str, np.ndarray]
    #: the interpreter's fastest float forward pass over the photos (the others ran while
    #: the counting of the photo before took one core): the floor of a calibrated
    #: conversion, per photo (passes.PassLog)
    invoke_s_per_image: float


def _one_pass(model: bytes, ranges: dict[str, tuple[int, float, float]], images: np.ndarray,
              order: Sequence[int], picks: set[int], progress: Progress | None = None,
              progress_every: int = 50
              ) -> tuple[dict[str, float], dict[str, float], dict[str, GrowingHistogram], float]:
    """Every range-carrying tensor of ``model`` (``ranges``, :func:`calibrated_ranges`'s):
    min and max over the photos ``order`` of
    ``images`` and histogram over the ``picks`` among them, one interpreter run per photo
    (and the fastest of those runs, in seconds).

    The counting (numpy, which lets go of the GIL) of one photo's tensors runs on a worker
    thread while the interpreter runs the next photo: a pass costs about the larger of the
    two instead of their sum (yolov4-tiny: 7 s instead of 8 for 86 photos). That holds a
    photo's tensors in memory, so models whose tensors of one photo exceed
    ``OVERLAP_MAX_BYTES`` count in turn instead."""
    from concurrent.futures import ThreadPoolExecutor
    it = interpreter(model, threads=THREADS, preserve_all_tensors=True)
    inp = it.get_input_details()[0]["index"]
    lo = {name: np.inf for name in ranges}
    hi = {name: -np.inf for name in ranges}
    hists = {name: GrowingHistogram() for name in ranges}
    sizes = {d["index"]: int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
             for d in it.get_tensor_details()}
    overlap = sum(sizes.get(ti, 0) for ti, _, _ in ranges.values()) <= OVERLAP_MAX_BYTES

    def count(values: dict[str, np.ndarray], histogram: bool) -> None:
        for name, v in values.items():
            vmin, vmax = float(v.min()), float(v.max())
            lo[name] = min(lo[name], vmin)
            hi[name] = max(hi[name], vmax)
            if histogram and np.isfinite(vmin) and np.isfinite(vmax):
                hists[name].add(v.ravel(), vmin, vmax)

    t0 = time.perf_counter()
    invoke_s = np.inf
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = None
        for done, i in enumerate(order, 1):
            it.set_tensor(inp, np.ascontiguousarray(images[i:i + 1], dtype=np.float32))
            ti0 = time.perf_counter()
            it.invoke()
            invoke_s = min(invoke_s, time.perf_counter() - ti0)
            if overlap:  # copies, taken before the next invoke overwrites the tensors
                values = {name: it.get_tensor(ti) for name, (ti, _, _) in ranges.items()}
                if pending is not None:
                    pending.result()
                pending = worker.submit(count, values, i in picks)
            else:  # one tensor at a time
                for name, (ti, _, _) in ranges.items():
                    count({name: it.get_tensor(ti)}, i in picks)
            if progress and (done % max(progress_every, 1) == 0 or done == len(order)):
                progress(f"int8: activation ranges {done}/{len(order)} images "
                         f"({done / max(time.perf_counter() - t0, 1e-9):.1f} images/s)")
        if pending is not None:
            pending.result()
    return lo, hi, hists, invoke_s


def _binned(hists: dict[str, GrowingHistogram], ranges: dict[str, tuple[int, float, float]]
            ) -> dict[str, np.ndarray]:
    return {name: hists[name].over(lo, hi) for name, (_, lo, hi) in ranges.items()
            if hi > lo and hists[name].counts is not None}


def observe_ranges(annotated: bytes, images: np.ndarray, progress: Progress | None = None,
                   progress_every: int = 50, hist_images: int = 0) -> Observed:
    """``annotated`` with every recorded min/max replaced by the min/max over ``images``,
    with histograms of ``hist_images`` of them over those ranges for :func:`refine_ranges`.

    Same min/max as TFLite's calibrator (global min/max per tensor; equal to 1e-6 relative
    on yolov4-tiny), but about 5x faster per image here: the calibrator runs its logging
    kernels at ~0.3 s per 416x416 image, this loop ~0.05-0.07 s (0.1 s with the
    histograms). That is what keeps a 500-photo calibration folder within the
    conversion-time target. The histograms come from the same interpreter runs
    (:class:`GrowingHistogram`), not from a second pass."""
    ranges = calibrated_ranges(annotated)
    lo, hi, hists, invoke_s = _one_pass(annotated, ranges, images, range(len(images)),
                                        _histogram_picks(len(images), hist_images), progress,
                                        progress_every)
    bad = [n for n in lo if not (np.isfinite(lo[n]) and np.isfinite(hi[n]))]
    if bad:
        raise UserError(f"the float model produces non-finite values in {len(bad)} tensor(s) "
                        f"on the calibration images (first: {bad[0]}); check the weights")
    model = _to_obj(annotated)
    tensors = model.subgraphs[0].tensors
    for name, (ti, _, _) in ranges.items():
        q = tensors[ti].quantization
        q.min, q.max = [lo[name]], [hi[name]]
    # binned on the ranges as the flatbuffer stores them (float32), as refine_ranges reads
    # them back
    stored = {name: (ti, float(np.float32(lo[name])), float(np.float32(hi[name])))
              for name, (ti, _, _) in ranges.items()}
    return Observed(_to_bytes(model), _binned(hists, stored),
                    float(invoke_s) if len(images) else 0.0)


#: images TFLite's own calibrator runs: it only has to mark the tensors that need ranges
#: (the graph decides which), and :func:`observe_ranges` then measures them on every image
ANNOTATE_IMAGES = 1


def calibrate_model(model: Any, images: np.ndarray, progress: Progress | None = None) -> bytes:
    """A float TFLite model annotated with per-tensor min/max over ``images``."""
    if not len(images):
        raise InputError("no calibration images")
    annotated = annotate_for_calibration(model, images[:ANNOTATE_IMAGES])
    return observe_ranges(annotated, images, progress).model


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


def tensor_histograms(calibrated: bytes, images: np.ndarray, max_images: int = HIST_MAX_IMAGES
                      ) -> dict[str, np.ndarray]:
    """Per-tensor value histograms (``HIST_BINS`` bins over each tensor's calibrated [min,
    max]) of ``max_images`` of ``images``, for a model calibrated elsewhere; the same counts
    :func:`observe_ranges` gives in its pass."""
    ranges = calibrated_ranges(calibrated)
    picks = _histogram_picks(len(images), max_images)
    return _binned(_one_pass(calibrated, ranges, images, sorted(picks), picks)[2], ranges)


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
                  progress: Progress | None = None, hist_images: int = HIST_MAX_IMAGES,
                  hists: dict[str, np.ndarray] | None = None) -> tuple[bytes, dict[str, Any]]:
    """Calibrated model with the input pinned to [0, 1] and every activation range replaced
    by its clipping range: MSE-optimal (``mse``), or MSE-optimal below and ``TAIL_KEEP`` of
    the way back to the calibrated maximum above (``mse-tail``); ``minmax`` keeps the
    calibrated ranges. ``hists`` are :func:`observe_ranges`'s (else a pass of
    :func:`tensor_histograms` makes them). Returns (model, range table: per tensor min/max,
    MSE optimum and the range used)."""
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
        if hists is None:
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
