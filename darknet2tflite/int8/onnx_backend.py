"""ONNX export and the onnx2tf int8 backend (a second route to the same int8 contract).

The direct backend converts our Keras model with TFLiteConverter. This module offers an
independent route, Keras -> ONNX (tf2onnx) -> TensorFlow (onnx2tf) -> TFLite, because
onnx2tf lowers some constructs differently (explicit PAD before strided convs, its own
transpose elimination, ...) and on some graphs that gives a better int8 model. Both routes
end in the same I/O contract (docs/ARCHITECTURE.md), so :func:`compare_backends` can pick
the better int8 model by a fixed, documented rule.

Offline operation. onnx2tf fetches a 20-image COCO sample from GitHub whenever every model
input looks like an NHWC image: unconditionally for its ONNX-vs-TF validation data
(onnx2tf.py, "download test data"), even when calibration data is given with
``custom_input_op_name_np_data_path`` (-cind), and for int8 calibration when no -cind is
given. This machine (and many CI runners) cannot reach GitHub, and a conversion must not
depend on a third party's sample anyway. :func:`_onnx2tf_offline` therefore replaces
``download_test_image_data`` inside onnx2tf for the duration of the call with a function
returning *our* calibration images (same NHWC float32 [0, 1] layout onnx2tf's sample has),
puts a stub that raises in place of onnx2tf's ``requests`` module as a second line of
defence, and we never enable ``copy_onnx_input_output_names_to_tflite`` (it shells out to
``curl`` for schema.fbs). Calibration data always goes in explicitly via -cind as an .npy
of pixel/255 values with mean 0 and std 1: onnx2tf feeds that array unnormalized to its
onnxruntime dummy inference and as ``(x - mean) / std`` to the calibrator, so only mean 0 /
std 1 makes both see the contract's pixel/255 input.

Layout. Our contract ONNX is NHWC (same tensors as the Keras model). onnx2tf assumes NCHW
inputs and would transpose (1, H, W, 3) into (1, W, 3, H); ``keep_shape_absolutely_input_
names`` keeps the NHWC input and onnx2tf then cancels tf2onnx's internal transposes (the
result has no TRANSPOSE ops). An NCHW export (``export_onnx(..., layout="NCHW")``, the
layout PyTorch-born models have) is converted by onnx2tf's default NCHW->NHWC handling.
Either way the TFLite input is NHWC (1, H, W, 3) and the heads come out NHWC.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from darknet2tflite.store.atomic import atomic_write_bytes
from darknet2tflite.reference.parity import compare_heads

ONNX_MIN_OPSET = 13
LAYOUT_KEY = "darknet2tflite.layout"
INPUT_SCALE = 1.0 / 255.0
QUANTIZERS = ("onnx2tf", "tflite")
INPUT_TYPES = ("uint8", "int8")

#: compare_backends: differences at or below these are ties, so the next criterion decides
AP_TIE = 0.005       # 0.5 AP points
SQNR_TIE_DB = 0.5
LATENCY_TIE = 0.05   # 5 % of the slower model

#: onnx2tf keeps process-global state (log level, patched helpers); one run at a time
_ONNX2TF_LOCK = threading.Lock()
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------- small helpers

def one_line(exc: BaseException) -> str:
    """The reason a backend failed, short enough for a table cell and a log line."""
    if isinstance(exc, SystemExit):
        return f"exited with code {exc.code}"
    msg = _ANSI.sub("", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")[:300]


def run_backend(name: str, fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """Run one backend and turn any failure into a reported result instead of an exception.

    A crash in one backend (onnx2tf even calls ``sys.exit``) must not lose the other
    backend's already-computed int8 model, so callers run each backend through this."""
    t0 = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - reported, never swallowed silently
        return {"backend": name, "status": "failed", "reason": one_line(e),
                "conversion_seconds": {"total": round(time.perf_counter() - t0, 3)}}
    result.setdefault("backend", name)
    result.setdefault("status", "ok")
    return result


def _load_keras(model_or_path: Any):
    import keras
    if isinstance(model_or_path, (str, os.PathLike)):
        from darknet2tflite.model import layers as _layers  # noqa: F401  (registers custom layers)
        with contextlib.suppress(ImportError):
            from darknet2tflite.rewrites import _layers as _rw  # noqa: F401  (rewrite-rule layers)
        return keras.models.load_model(model_or_path)
    return model_or_path


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def onnx_io(onnx_path: str | Path) -> dict:
    """Input/output names and shapes and the layout of an ONNX file (weights not loaded)."""
    import onnx
    m = onnx.load(str(onnx_path), load_external_data=False)
    inputs = [(i.name, _dims(i)) for i in m.graph.input]
    outputs = [(o.name, _dims(o)) for o in m.graph.output]
    props = {p.key: p.value for p in m.metadata_props}
    layout = props.get(LAYOUT_KEY)
    if layout is None:  # not written by us: the usual image-input heuristic
        shape = inputs[0][1]
        layout = "NCHW" if len(shape) == 4 and shape[1] in (1, 3, 4) and \
            shape[-1] not in (1, 3, 4) else "NHWC"
    return {"inputs": inputs, "outputs": outputs, "layout": layout,
            "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
                         default=0)}


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def _keras_heads(model, batch: np.ndarray) -> dict[str, np.ndarray]:
    out = model.predict(batch, batch_size=1, verbose=0)
    out = out if isinstance(out, (list, tuple)) else [out]
    return dict(zip(model.output_names, (np.asarray(o) for o in out)))


def onnx_heads(onnx_path: str | Path, batch: np.ndarray, threads: int = 1
               ) -> dict[str, np.ndarray]:
    """onnxruntime outputs (NHWC, whatever the file's layout) by output name; one image at a
    time because the exported models are batch 1 like the TFLite ones."""
    import onnxruntime as ort
    io_ = onnx_io(onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = io_["inputs"][0][0]
    nchw = io_["layout"] == "NCHW"
    outs: dict[str, list[np.ndarray]] = {o: [] for o, _ in io_["outputs"]}
    for img in batch.astype(np.float32):
        x = img[None].transpose(0, 3, 1, 2) if nchw else img[None]
        for (o, _), y in zip(io_["outputs"], sess.run(None, {name: x})):
            outs[o].append(_to_nhwc(y) if nchw else y)
    return {k: np.concatenate(v) for k, v in outs.items()}


# --------------------------------------------------------------------------- ONNX export

def export_onnx(keras_model_or_path: Any, out_path: str | Path, opset: int = 17,
                layout: str = "NHWC") -> Path:
    """Export the float Keras model to ONNX with tf2onnx, keeping the I/O contract's names.

    tf2onnx's ``from_keras`` needs tf.keras (Keras 2) internals, so the Keras 3 model is
    traced through a ``tf.function`` returning ``{output name: tensor}``; tf2onnx names the
    ONNX outputs after those keys and the input after the TensorSpec, which keeps "image"
    and head_XXX_yolo. ``layout="NCHW"`` asks tf2onnx to transpose input and outputs (and
    then optimizes the transposes away) for NCHW-only consumers. The layout is recorded in
    the ONNX metadata so readers need not guess it from shapes.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    if opset < ONNX_MIN_OPSET:
        raise ValueError(f"opset {opset} < {ONNX_MIN_OPSET}: tf2onnx needs >= 13 for the "
                         f"Split/Slice/Resize forms these models use")
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout must be NHWC or NCHW, not {layout!r}")
    model = _load_keras(keras_model_or_path)
    in_name = model.inputs[0].name
    names = list(model.output_names)
    shape = tuple(model.inputs[0].shape)
    if shape[0] is None:
        shape = (1,) + shape[1:]

    @tf.function
    def serve(image):
        out = model(image, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return {n: o for n, o in zip(names, out)}

    kw: dict[str, Any] = {}
    if layout == "NCHW":
        kw = {"inputs_as_nchw": [in_name], "outputs_as_nchw": names}
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=[tf.TensorSpec(shape, tf.float32, name=in_name)],
        opset=opset, **kw)
    # from_function converts with continue_on_error: an op without an ONNX mapping stays a
    # TF op that no ONNX runtime can execute. Refuse that here, naming the ops.
    foreign = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in proto.graph.node
                      if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise ValueError(f"tf2onnx left non-ONNX ops in the graph: {', '.join(foreign)}")
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != [in_name] or got_out != names:
        raise ValueError(f"ONNX I/O names {got_in} -> {got_out} differ from the Keras model's "
                         f"{[in_name]} -> {names}")
    prop = proto.metadata_props.add()
    prop.key, prop.value = LAYOUT_KEY, layout
    onnx.checker.check_model(proto)
    out = Path(out_path)
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def onnx_parity(onnx_path: str | Path, keras_model: Any, batch: np.ndarray) -> list[dict]:
    """Per-head max abs / max rel (parity.compare_heads) of onnxruntime against Keras.

    Rows follow the Keras output order (= cfg order); the target is max_rel <= 1e-5."""
    model = _load_keras(keras_model)
    ref = _keras_heads(model, batch)
    got = onnx_heads(onnx_path, batch)
    names = list(model.output_names)
    missing = [n for n in names if n not in got]
    if missing:
        raise ValueError(f"ONNX file lacks outputs {missing}")
    rows = compare_heads([ref[n] for n in names], [got[n] for n in names])
    return [{**r.as_dict(), "output": n} for r, n in zip(rows, names)]


# --------------------------------------------------------------------------- TFLite checks

def _interpreter(data: bytes, threads: int = 1):
    from darknet2tflite.tflite.export import interpreter
    return interpreter(bytes(data), threads=threads)


def float_ops(data: bytes) -> list[str]:
    """Ops computing on float tensors (excluding QUANTIZE of a model input / DEQUANTIZE of a
    model output). Uses probe.inspect_tflite so both backends are counted the same way."""
    try:
        from darknet2tflite.probe.prober import inspect_tflite
    except ImportError:  # pragma: no cover - probe.py is part of the package
        inspect_tflite = None
    if inspect_tflite is not None:
        return list(inspect_tflite(data).float_ops)
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=bytes(data), experimental_op_resolver_type=
                     OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    dt = {t["index"]: np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    ins = {d["index"] for d in it.get_input_details()}
    outs = {d["index"] for d in it.get_output_details()}
    found = []
    for op in it._get_ops_details():
        i = [x for x in op["inputs"] if x >= 0]
        o = [x for x in op["outputs"] if x >= 0]
        if not any(dt[x].startswith("float") for x in i + o):
            continue
        if (op["op_name"] == "QUANTIZE" and set(i) <= ins) or \
                (op["op_name"] == "DEQUANTIZE" and set(o) <= outs):
            continue
        found.append(op["op_name"])
    return found


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``got`` against ``ref`` in dB."""
    try:
        from darknet2tflite.evaluation.evaluate import sqnr_db as _sqnr  # the project's definition, when present
        value = _sqnr(ref, got)
        if np.ndim(value) == 0:
            return float(value)
    except ImportError:
        pass
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - got.astype(np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def latency_ms(data: bytes, runs: int = 10, threads: int = 1) -> float:
    """Median single-image invoke time; one warm-up run absorbs allocation/delegate setup."""
    it = _interpreter(data, threads=threads)
    d = it.get_input_details()[0]
    x = np.zeros(d["shape"], dtype=d["dtype"])
    it.set_tensor(d["index"], x)
    it.invoke()
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def _contract_problems(it, meta: dict, onnx_outputs: list[tuple[str, list]], layout: str,
                       names: list[str], input_type: str | None) -> list[str]:
    """Contract violations of a converted model: input (1,H,W,3) NHWC, uint8/int8 with
    scale 1/255 (zp 0 / -128) for int8 models, one NHWC head per [yolo]/[region] whose grid
    matches model.json."""
    problems = []
    inp = it.get_input_details()
    h, w = meta["input"]["height"], meta["input"]["width"]
    c = meta["input"].get("channels", 3)
    if len(inp) != 1:
        problems.append(f"{len(inp)} inputs")
    else:
        d = inp[0]
        if tuple(d["shape"]) != (1, h, w, c):
            problems.append(f"input shape {tuple(d['shape'])} != {(1, h, w, c)}")
        want = np.float32 if input_type is None else np.dtype(input_type).type
        if d["dtype"] != want:
            problems.append(f"input dtype {np.dtype(d['dtype']).name} != {np.dtype(want).name}")
        if input_type is not None:
            scale, zp = d["quantization"]
            want_zp = 0 if input_type == "uint8" else -128
            if not math.isclose(scale, INPUT_SCALE, rel_tol=1e-6) or zp != want_zp:
                problems.append(f"input quantization scale {scale:.9g} zp {zp} != "
                                f"1/255 zp {want_zp}")
    outs = {d["name"]: d for d in it.get_output_details()}
    shapes = {n: s for n, s in onnx_outputs}
    for head, name in zip(meta["heads"], names):
        if name is None and meta.get("head_outputs"):
            continue  # split head: its parts are checked by run_tflite's concatenation
        d = outs.get(name)
        if d is None:
            problems.append(f"no output tensor {name}")
            continue
        shp = tuple(int(v) for v in d["shape"])
        if len(shp) != 4 or shp[0] != 1 or list(shp[1:3]) != list(head["grid"]):
            problems.append(f"head {head['output']}: shape {shp} is not (1, {head['grid'][0]}, "
                            f"{head['grid'][1]}, C)")
        ref = shapes.get(head["output"])
        if ref is not None and len(ref) == 4:
            ch = ref[1] if layout == "NCHW" else ref[-1]
            if shp[-1] != ch:
                problems.append(f"head {head['output']}: {shp[-1]} channels, ONNX has {ch}")
        if input_type is not None and np.dtype(d["dtype"]).name not in ("int8", "uint8"):
            problems.append(f"head {head['output']}: {np.dtype(d['dtype']).name} output")
    return problems


def _map_outputs(data: bytes, onnx_names: list[str], meta: dict
                 ) -> tuple[dict, list[str | None]]:
    """Meta copy with heads[i]["tflite_output"] (cfg order) for this .tflite file.

    onnx2tf's SavedModel signature names outputs output_<k> in ONNX output order, which is
    the Keras output order, so export.head_tensor_names resolves them exactly as it does for
    the direct backend's files."""
    from darknet2tflite.tflite.export import head_tensor_names
    it = _interpreter(data)
    out = copy.deepcopy(meta)
    # with split heads (model.json "head_outputs") a head's own name is no model output
    wanted = [h["output"] for h in meta["heads"] if h["output"] in onnx_names]
    found = dict(zip(wanted, head_tensor_names(it, onnx_names, wanted)))
    tnames = [found.get(h["output"]) for h in meta["heads"]]
    for h, t in zip(out["heads"], tnames):
        if t is not None:
            h["tflite_output"] = t
    if out.get("head_outputs"):
        tmap = dict(zip(onnx_names, head_tensor_names(it, onnx_names, onnx_names)))
        out["head_outputs"] = [[tmap.get(n, n) for n in group] for group in out["head_outputs"]]
    return out, tnames


# --------------------------------------------------------------------------- onnx2tf

class _NoNetwork:
    """Stands in for onnx2tf's ``requests`` module: any HTTP call fails immediately."""

    def __init__(self, real: Any) -> None:
        self.exceptions = getattr(real, "exceptions", None)

    def get(self, url: str, *a: Any, **k: Any) -> Any:
        raise ConnectionError(f"darknet2tflite: network disabled for onnx2tf (wanted {url})")

    post = head = request = get


@contextlib.contextmanager
def _onnx2tf_offline(sample: np.ndarray, counter: dict) -> Iterator[None]:
    """Serve onnx2tf's sample-image request from our calibration images, and make any other
    network use inside onnx2tf fail at once instead of waiting on timeouts."""
    import importlib
    main = importlib.import_module("onnx2tf.onnx2tf")
    common = importlib.import_module("onnx2tf.utils.common_functions")

    def local_sample() -> np.ndarray:
        counter["sample_requests_served_locally"] += 1
        return sample.copy()

    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in
             ((main, "download_test_image_data"), (common, "download_test_image_data"),
              (common, "requests")) if hasattr(mod, attr)]
    try:
        for mod, attr, real in saved:
            setattr(mod, attr, _NoNetwork(real) if attr == "requests" else local_sample)
        yield
    finally:
        for mod, attr, real in saved:
            setattr(mod, attr, real)


def _pin_input_range(cal: np.ndarray) -> np.ndarray:
    """Make the calibration set span exactly [0, 1].

    The converter derives the uint8 input's scale/zero point from the observed input
    range; only a range of exactly [0, 1] gives the contract's scale 1/255, zp 0. Real photo
    sets nearly always contain a 0 and a 255 pixel; when one does not, one pixel of the
    first image is set to the missing extreme (negligible for activation ranges)."""
    cal = np.ascontiguousarray(np.clip(cal, 0.0, 1.0), dtype=np.float32)
    if cal.min() > 0.0 or cal.max() < 1.0:
        cal = cal.copy()
        if cal.min() > 0.0:
            cal[0, 0, 0, :] = 0.0
        if cal.max() < 1.0:
            cal[0, 0, -1, :] = 1.0
    return cal


def _tflite_int8(saved_model: Path, cal: np.ndarray, input_type: str) -> bytes:
    """Full-integer conversion of onnx2tf's SavedModel with our representative dataset:
    TFLITE_BUILTINS_INT8 only (no Flex fallback), uint8/int8 input, int8 outputs - the same
    converter settings export.convert uses for the direct backend."""
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model),
                                                    signature_keys=["serving_default"])
    loaded = tf.saved_model.load(str(saved_model))
    key = next(iter(loaded.signatures["serving_default"].structured_input_signature[1]))

    def representative() -> Iterator[dict[str, np.ndarray]]:
        for x in cal:
            yield {key: x[None]}

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8 if input_type == "uint8" else tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def _tflite_float32(saved_model: Path) -> bytes:
    """Float32 TFLite from onnx2tf's SavedModel. Converted here rather than taking onnx2tf's
    own *_float32.tflite because that one is built from a concrete function without a
    signature, so its outputs could only be matched to heads by position or shape."""
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model),
                                                    signature_keys=["serving_default"])
    return conv.convert()


def onnx2tf_convert(onnx_path: str | Path, out_dir: str | Path, calibration: np.ndarray,
                    input_type: str = "uint8", meta: dict | None = None, *,
                    quantizer: str = "onnx2tf", keras_model: Any = None,
                    eval_batch: np.ndarray | None = None, latency_runs: int = 10) -> dict:
    """ONNX -> onnx2tf -> float32 and full-integer int8 TFLite, offline, with our calibration.

    ``calibration``: (N, H, W, C) float32 pixel/255 images, passed to onnx2tf explicitly
    (-cind). ``quantizer``: "onnx2tf" uses onnx2tf's own full-integer path
    (*_full_integer_quant.tflite; note it also writes int16-activation variants, which costs
    time); "tflite" takes onnx2tf's SavedModel and calibrates it with TFLiteConverter exactly
    as the direct backend does (TFLITE_BUILTINS_INT8 only), which isolates the effect of
    onnx2tf's graph lowering. ``meta`` is model.json's dict; the returned ``meta`` is a copy
    whose heads[i]["tflite_output"] name the int8 file's tensors (``float32["meta"]`` the
    float file's), so export.run_tflite works on both.

    onnx2tf's console output is captured into ``out_dir/onnx2tf.log`` (a failure's reason
    quotes its last error line); that swaps ``sys.stdout`` for the duration of the call.
    Published files: model.onnx2tf.float32.tflite, model.onnx2tf.int8.tflite (model.json
    embedded), onnx2tf.log, onnx2tf_report.json (this result).

    Never raises for conversion problems: each stage's failure is recorded as a one-line
    ``reason`` and whatever succeeded is kept. The float32 result is checked against Keras
    (or onnxruntime on the ONNX file when no Keras model is given), the int8 one for float
    ops, the I/O contract, per-head SQNR and latency.
    """
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {INPUT_TYPES}, not {input_type!r}")
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, not {quantizer!r}")
    if meta is None:
        raise ValueError("meta (model.json dict) is required to map heads to outputs")
    t_start = time.perf_counter()
    out = Path(out_dir)
    result: dict[str, Any] = {
        "backend": "onnx2tf", "status": "failed", "reason": None, "onnx": str(onnx_path),
        "quantizer": quantizer, "input_type": input_type,
        "float32": {"status": "not run"}, "int8": {"status": "not run"}, "meta": None,
        "conversion_seconds": {}, "network": {"sample_requests_served_locally": 0},
    }
    try:
        import onnx2tf
        import tensorflow as tf
        result["versions"] = {"onnx2tf": onnx2tf.__version__, "tensorflow": tf.__version__}
        io_ = onnx_io(onnx_path)
        result["layout"] = io_["layout"]
        cal = np.asarray(calibration, dtype=np.float32)
        c = int(meta["input"].get("channels", 3))
        if cal.ndim != 4 or cal.shape[-1] != c or len(cal) == 0:
            raise ValueError(f"calibration must be (N, H, W, {c}), got {cal.shape}")
        h, w = meta["input"]["height"], meta["input"]["width"]
        if cal.shape[1:3] != (h, w):
            raise ValueError(f"calibration images are {cal.shape[1:3]}, the model takes {(h, w)}")
        cal = _pin_input_range(cal)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        result["reason"] = one_line(e)
        return result
    onnx_names = [n for n, _ in io_["outputs"]]
    in_name = io_["inputs"][0][0]
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".onnx2tf-", dir=out))
    saved = work / "saved_model"
    log = io.StringIO()
    try:
        # ---- onnx2tf: ONNX -> TF SavedModel (+ its own int8 files in "onnx2tf" mode)
        npy = work / "calibration.npy"
        np.save(npy, cal)
        kw: dict[str, Any] = dict(
            input_onnx_file_path=str(onnx_path), output_folder_path=str(saved),
            output_signaturedefs=True, non_verbose=True,
            custom_input_op_name_np_data_path=[[in_name, str(npy),
                                                np.zeros((1, 1, 1, c), np.float32),
                                                np.ones((1, 1, 1, c), np.float32)]],
            copy_onnx_input_output_names_to_tflite=False,  # would curl schema.fbs
        )
        if io_["layout"] == "NHWC":
            kw["keep_shape_absolutely_input_names"] = [in_name]
        if quantizer == "onnx2tf":
            kw.update(output_integer_quantized_tflite=True, input_quant_dtype=input_type,
                      output_quant_dtype="int8", quant_type="per-channel")
        t0 = time.perf_counter()
        try:
            with _ONNX2TF_LOCK, _onnx2tf_offline(cal[:20], result["network"]), \
                    contextlib.redirect_stdout(log):
                onnx2tf.convert(**kw)
            if not (saved / "saved_model.pb").exists():
                raise RuntimeError("onnx2tf wrote no SavedModel: " + _last_error(log))
        except (Exception, SystemExit) as e:  # noqa: BLE001
            reason = one_line(e)
            if isinstance(e, SystemExit):
                reason = f"onnx2tf {reason}: {_last_error(log)}"
            result["reason"] = reason
            return result
        finally:
            result["conversion_seconds"]["onnx2tf"] = round(time.perf_counter() - t0, 3)
            atomic_write_bytes(out / "onnx2tf.log", _ANSI.sub("", log.getvalue()).encode())

        ref_batch = cal[:8] if eval_batch is None else np.asarray(eval_batch, np.float32)
        ref = _reference_heads(keras_model, onnx_path, ref_batch, onnx_names, result)

        # ---- float32
        result["float32"] = _stage(
            result, "float32", lambda: _tflite_float32(saved),
            out / "model.onnx2tf.float32.tflite", onnx_names, io_, meta, None, ref, ref_batch,
            latency_runs=0)
        # ---- int8
        def produce() -> bytes:
            if quantizer == "tflite":
                return _tflite_int8(saved, cal, input_type)
            files = sorted(saved.glob("*_full_integer_quant.tflite"))
            if not files:
                raise RuntimeError("onnx2tf wrote no *_full_integer_quant.tflite: "
                                   + _last_error(log))
            return files[0].read_bytes()
        # in "onnx2tf" mode the int8 calibration ran inside the onnx2tf step (its
        # conversion_seconds); the int8 stage below only reads the file and checks it
        result["int8"] = _stage(
            result, "int8", produce, out / "model.onnx2tf.int8.tflite", onnx_names, io_, meta,
            input_type, ref, ref_batch, latency_runs=latency_runs)
        result["meta"] = result["int8"].pop("meta", None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    i8, f32 = result["int8"], result["float32"]
    result["status"] = "ok" if i8.get("status") == "ok" and f32.get("status") == "ok" else \
        "partial" if "ok" in (i8.get("status"), f32.get("status")) else "failed"
    if result["status"] != "ok":
        result["reason"] = "; ".join(f"{k}: {v['reason']}" for k, v in
                                     (("int8", i8), ("float32", f32)) if v.get("reason"))
    result["conversion_seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    _write_report(out / "onnx2tf_report.json", result)
    return result


def _last_error(log: io.StringIO) -> str:
    lines = [ln.strip() for ln in _ANSI.sub("", log.getvalue()).splitlines() if ln.strip()]
    errs = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    return (errs or lines or ["no log output"])[-1][:300]


def _reference_heads(keras_model: Any, onnx_path: str | Path, batch: np.ndarray,
                     onnx_names: list[str], result: dict) -> dict[str, np.ndarray] | None:
    """Float reference for fidelity numbers: Keras when given, else onnxruntime on the ONNX
    file (itself within 1e-5 of Keras, see onnx_parity)."""
    try:
        if keras_model is not None:
            result["reference"] = "keras"
            return _keras_heads(_load_keras(keras_model), batch)
        result["reference"] = "onnxruntime"
        return onnx_heads(onnx_path, batch)
    except Exception as e:  # noqa: BLE001 - fidelity is reported as unavailable
        result["reference"] = f"unavailable ({one_line(e)})"
        return None


def _stage(result: dict, kind: str, produce: Callable[[], bytes], path: Path,
           onnx_names: list[str], io_: dict, meta: dict, input_type: str | None,
           ref: dict | None, batch: np.ndarray, latency_runs: int) -> dict:
    """Produce one .tflite, check it against the contract and the float reference, and
    publish it with its metadata; any failure becomes {"status": "failed", "reason"}."""
    from darknet2tflite.tflite.export import run_tflite, save_tflite
    t0 = time.perf_counter()
    info: dict[str, Any] = {"status": "failed"}
    try:
        data = produce()
        info["seconds"] = round(time.perf_counter() - t0, 3)
        m, tnames = _map_outputs(data, onnx_names, meta)
        it = _interpreter(data)
        problems = _contract_problems(it, meta, io_["outputs"], io_["layout"], tnames,
                                      input_type)
        fops = float_ops(data) if input_type is not None else []
        d = it.get_input_details()[0]
        if input_type is not None:
            info.update(float_ops=fops, n_float_ops=len(fops))
        info.update(size_bytes=len(data),
                    input={"dtype": np.dtype(d["dtype"]).name,
                           "shape": [int(v) for v in d["shape"]],
                           "scale": float(d["quantization"][0]),
                           "zero_point": int(d["quantization"][1])},
                    outputs=tnames)
        if input_type is not None:
            info["full_integer"] = not fops and not problems
        if problems:
            raise ValueError("breaks the I/O contract: " + "; ".join(problems))
        if ref is not None:
            got = run_tflite(it, batch, m)
            names = [h["output"] for h in meta["heads"]]
            if not meta.get("head_outputs"):
                refs = [ref[n] for n in names]
                if kind == "float32":
                    rows = compare_heads(refs, got)
                    info["parity"] = [{**r.as_dict(), "output": n} for r, n in zip(rows, names)]
                    info["max_rel"] = max(r.max_rel for r in rows)
                else:
                    info["sqnr_db"] = [round(sqnr_db(r, g), 3) for r, g in zip(refs, got)]
        if latency_runs:
            info["latency_ms"] = round(latency_ms(data, runs=latency_runs), 3)
        save_tflite(data, path, m)
        info.update(status="ok", path=str(path), meta=m)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        info["reason"] = one_line(e)
    info.setdefault("seconds", round(time.perf_counter() - t0, 3))
    result["conversion_seconds"][kind] = info["seconds"]
    return info


def _write_report(path: Path, result: dict) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        return str(o)
    with contextlib.suppress(Exception):
        atomic_write_bytes(path, (json.dumps(result, indent=2, default=default,
                                             allow_nan=True) + "\n").encode())


# --------------------------------------------------------------------------- comparison

def _summary(res: dict | None) -> dict:
    """Normalize a backend result (this module's layout, or a flat dict with the same keys
    at top level, as the direct backend may return) to the numbers the rule compares."""
    res = res or {}
    i8 = res.get("int8") if isinstance(res.get("int8"), dict) else res
    status = res.get("status", "failed")
    ok = status in ("ok", "partial") and i8.get("status", "ok") == "ok" and \
        bool(i8.get("path") or i8.get("size_bytes"))
    fops = i8.get("float_ops", i8.get("n_float_ops"))
    n_fops = len(fops) if isinstance(fops, (list, tuple)) else fops
    size = i8.get("size_bytes")
    if size is None and i8.get("path") and Path(i8["path"]).exists():
        size = Path(i8["path"]).stat().st_size
    sq = i8.get("sqnr_db") or res.get("sqnr_db")
    ap = res.get("ap") or i8.get("ap") or {}
    ap50 = res.get("ap50") or i8.get("ap50") or {}
    secs = res.get("conversion_seconds")
    if isinstance(secs, dict):
        secs = secs.get("total")
    reason = res.get("reason") or i8.get("reason")
    return {
        "ok": ok,
        "status": status if ok or status == "failed" else "failed",
        "reason": None if ok else (reason or "no int8 model"),
        "float_ops": n_fops,
        "size_bytes": size,
        "latency_ms": i8.get("latency_ms", res.get("latency_ms")),
        "sqnr_db": list(sq) if sq else None,
        "min_sqnr_db": min(sq) if sq else None,
        "ap_float": ap.get("float") if isinstance(ap, dict) else None,
        "ap_int8": ap.get("int8") if isinstance(ap, dict) else ap,
        "ap50_float": ap50.get("float") if isinstance(ap50, dict) else None,
        "ap50_int8": ap50.get("int8") if isinstance(ap50, dict) else ap50,
        "conversion_seconds": secs,
    }


def compare_backends(direct: dict | None, onnx2tf: dict | None) -> dict:
    """Pick the better int8 model of the two backends by a fixed rule, first decisive
    criterion wins:

    1. a backend without a usable int8 model loses (both failed: no winner);
    2. fewer float ops (a full-integer model beats one that falls back to float kernels,
       since many int8 accelerators reject or CPU-partition float ops);
    3. higher int8 COCO AP when both were evaluated with annotations (ties within 0.5 AP
       points), else higher worst-head SQNR against the float model (ties within 0.5 dB):
       the worst head bounds detection quality;
    4. lower latency (ties within 5 %);
    5. otherwise "direct": one converter fewer in the chain, same contract.

    Returns {"winner", "decided_by", "reason", "table", "backends"}; "table" is a list of
    {"metric", "direct", "onnx2tf"} rows (float ops, size, latency, per-head SQNR, AP/AP50
    float vs int8, conversion time) for reports.
    """
    s = {"direct": _summary(direct), "onnx2tf": _summary(onnx2tf)}
    d, o = s["direct"], s["onnx2tf"]
    winner, by, why = None, None, None
    if not d["ok"] and not o["ok"]:
        by, why = "availability", f"both backends failed (direct: {d['reason']}; " \
                                  f"onnx2tf: {o['reason']})"
    elif d["ok"] != o["ok"]:
        winner = "direct" if d["ok"] else "onnx2tf"
        loser = "onnx2tf" if d["ok"] else "direct"
        by, why = "availability", f"{loser} failed: {s[loser]['reason']}"
    else:
        winner, by, why = _rank(d, o)
    table = [
        {"metric": "status", "direct": d["status"], "onnx2tf": o["status"]},
        {"metric": "float ops", "direct": d["float_ops"], "onnx2tf": o["float_ops"]},
        {"metric": "size (bytes)", "direct": d["size_bytes"], "onnx2tf": o["size_bytes"]},
        {"metric": "latency (ms)", "direct": d["latency_ms"], "onnx2tf": o["latency_ms"]},
        {"metric": "SQNR per head (dB)", "direct": d["sqnr_db"], "onnx2tf": o["sqnr_db"]},
        {"metric": "AP float / int8", "direct": [d["ap_float"], d["ap_int8"]],
         "onnx2tf": [o["ap_float"], o["ap_int8"]]},
        {"metric": "AP50 float / int8", "direct": [d["ap50_float"], d["ap50_int8"]],
         "onnx2tf": [o["ap50_float"], o["ap50_int8"]]},
        {"metric": "conversion (s)", "direct": d["conversion_seconds"],
         "onnx2tf": o["conversion_seconds"]},
    ]
    return {"winner": winner, "decided_by": by, "reason": why, "table": table, "backends": s}


def _rank(d: dict, o: dict) -> tuple[str, str, str]:
    fd, fo = d["float_ops"], o["float_ops"]
    if fd is not None and fo is not None and fd != fo:
        w = "direct" if fd < fo else "onnx2tf"
        return w, "float_ops", f"{w} has fewer float ops ({min(fd, fo)} vs {max(fd, fo)})"
    if d["ap_int8"] is not None and o["ap_int8"] is not None:
        if abs(d["ap_int8"] - o["ap_int8"]) > AP_TIE:
            w = "direct" if d["ap_int8"] > o["ap_int8"] else "onnx2tf"
            return w, "ap", (f"{w} has higher int8 AP ({max(d['ap_int8'], o['ap_int8']):.4f}"
                             f" vs {min(d['ap_int8'], o['ap_int8']):.4f})")
    elif d["min_sqnr_db"] is not None and o["min_sqnr_db"] is not None:
        if abs(d["min_sqnr_db"] - o["min_sqnr_db"]) > SQNR_TIE_DB:
            w = "direct" if d["min_sqnr_db"] > o["min_sqnr_db"] else "onnx2tf"
            hi, lo = sorted((d["min_sqnr_db"], o["min_sqnr_db"]), reverse=True)
            return w, "sqnr", f"{w} has higher worst-head SQNR ({hi:.2f} vs {lo:.2f} dB)"
    ld, lo_ = d["latency_ms"], o["latency_ms"]
    if ld is not None and lo_ is not None and abs(ld - lo_) > LATENCY_TIE * max(ld, lo_):
        w = "direct" if ld < lo_ else "onnx2tf"
        return w, "latency", f"{w} is faster ({min(ld, lo_):.1f} vs {max(ld, lo_):.1f} ms)"
    return "direct", "tie", "no criterion separates the backends; direct has fewer moving parts"


# --------------------------------------------------------------------------- flow stage

def keras_head_meta(meta: dict) -> dict:
    """model.json copy whose ``head_outputs`` name the Keras (= ONNX) outputs per head.

    The rewritten model may split heads (head_split rule: head_NNN_yolo_xy, ..._wh, ...);
    model.json's own ``head_outputs`` name the float32 .tflite's tensors, so the onnx2tf
    route re-derives them from the Keras names; :func:`_map_outputs` then maps each to the
    onnx2tf file's tensor and run_tflite concatenates the parts exactly as for the direct
    backend."""
    m = copy.deepcopy(meta)
    m.pop("head_outputs_by_file", None)
    m["head_outputs"] = [h.get("outputs") or [h["output"]] for h in m["heads"]]
    return m


def int8_fidelity(tflite: str | Path, file_meta: dict, keras_model: Any, batch: np.ndarray,
                  latency_runs: int = 10) -> dict:
    """The numbers compare_backends ranks, measured the same way for either backend:
    float ops, size, per-head SQNR of the (concatenated) heads against Keras, latency."""
    from darknet2tflite.tflite.export import run_tflite
    data = Path(tflite).read_bytes()
    model = _load_keras(keras_model)
    ref = _keras_heads(model, batch)
    groups = [h.get("outputs") or [h["output"]] for h in file_meta["heads"]]
    refs = [np.concatenate([ref[n] for n in g], axis=-1) for g in groups]
    got = run_tflite(_interpreter(data), batch, file_meta)
    fops = float_ops(data)
    return {"status": "ok", "path": str(tflite), "size_bytes": len(data), "float_ops": fops,
            "n_float_ops": len(fops),
            "sqnr_db": [round(sqnr_db(r, g), 3) for r, g in zip(refs, got)],
            "latency_ms": round(latency_ms(data, runs=latency_runs), 3) if latency_runs else None}


def onnx2tf_stage(keras_path: str | Path, calib_npy: str | Path, meta_path: str | Path,
                  out_dir: str | Path, input_type: str = "uint8", *, quantizer: str = "tflite",
                  parity_images: int = 4, eval_images: int = 8, latency_runs: int = 10,
                  progress: Callable[[str], Any] = print) -> dict:
    """The convert flow's onnx2tf backend: Keras model -> model.onnx (+ onnx_parity.json,
    onnxruntime vs Keras) -> onnx2tf with our calibration array -> full-integer int8 model
    ``out_dir/onnx2tf/model.onnx2tf.int8.tflite`` whose embedded model.json maps the heads
    (split or not) to its own tensors.

    ``quantizer="tflite"`` by default: onnx2tf lowers the graph to a SavedModel and
    TFLiteConverter calibrates it with the direct backend's settings; onnx2tf's own int8
    path also writes int16-activation variants and takes several times longer. Raises when
    no verified full-integer model comes out (run it through :func:`run_backend`).
    Returns the onnx2tf_convert result plus "int8" fidelity (:func:`int8_fidelity`),
    "integer_check", "head_outputs" (int8 file's tensors per head), "onnx_parity" and
    "files" {name: path}."""
    from darknet2tflite.int8.calibration import load_calibration
    from darknet2tflite.darknet.metadata import write_json
    from darknet2tflite.int8.quantize import check_integer, load_keras

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    model = load_keras(keras_path)
    cal = np.asarray(load_calibration(calib_npy), dtype=np.float32)
    progress("onnx2tf backend: export ONNX")
    onnx_path = export_onnx(model, out / "model.onnx")
    parity = onnx_parity(onnx_path, model, cal[:parity_images])
    write_json(out / "onnx_parity.json", {
        "reference": "keras", "images": int(min(parity_images, len(cal))), "target_max_rel": 1e-5,
        "max_rel": max(r["max_rel"] for r in parity), "heads": parity})
    progress(f"onnx2tf backend: ONNX parity max_rel {max(r['max_rel'] for r in parity):.2e}; "
             f"onnx2tf ({quantizer} quantizer) on {len(cal)} calibration images")
    kmeta = keras_head_meta(meta)
    res = onnx2tf_convert(onnx_path, out / "onnx2tf", cal, input_type, kmeta,
                          quantizer=quantizer, keras_model=model, eval_batch=cal[:eval_images],
                          latency_runs=0)
    i8 = res.get("int8") or {}
    if i8.get("status") != "ok":
        raise RuntimeError(f"onnx2tf gave no int8 model: {res.get('reason') or i8.get('reason')}")
    path = Path(i8["path"])
    check = check_integer(path.read_bytes(), input_type)
    fmeta = res["meta"]
    res["int8"] = {**i8, **int8_fidelity(path, fmeta, model, cal[:eval_images], latency_runs)}
    res.update(integer_check=check, head_outputs=fmeta["head_outputs"], onnx_parity=parity,
               files={"onnx": onnx_path, "onnx_parity": out / "onnx_parity.json",
                      "tflite_int8_onnx2tf": path})
    res["conversion_seconds"]["total"] = round(time.perf_counter() - t0, 3)
    return res


BACKENDS = ("direct", "onnx2tf", "both")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _dump(path: Path, data: Any) -> Path:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=_json_default) + "\n").encode())
    return path


def quantize_with_backend(backend: str, keras_path: str | Path, calib_npy: str | Path,
                          meta_path: str | Path, out_dir: str | Path, options: Any,
                          progress: Callable[[str], Any] = print, *,
                          quantizer: str = "tflite", eval_images: int = 8) -> dict[str, Path]:
    """The quantize stage for ``backend`` direct | onnx2tf | both; {artifact name: path}.

    Always writes model.int8.tflite, model.json (``head_outputs`` and
    ``head_outputs_by_file`` naming each .tflite's own tensors) and quantize.json
    (QuantizeResult layout, "backend" added). onnx2tf / both add model.onnx and
    onnx_parity.json. "both" runs each backend through :func:`run_backend` (one failing
    never loses the other's model), ranks them with :func:`compare_backends` on the
    numbers :func:`int8_fidelity` measures the same way for both (first ``eval_images``
    calibration images against Keras), ships the winner as model.int8.tflite, keeps the
    other as model.int8.<backend>.tflite and records everything in backends.json.
    With onnx2tf as the shipped model, quantize.json's per-layer errors (and a float
    fallback model, if asked for) still describe the direct conversion, so they are
    dropped from quantize.json for the onnx2tf winner (the fallback file is kept)."""
    from darknet2tflite.int8.calibration import load_calibration
    from darknet2tflite.errors import UserError
    from darknet2tflite.darknet.metadata import write_json
    from darknet2tflite.int8.quantize import QuantizeResult, quantize

    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if backend == "direct":
        return dict(quantize(keras_path, calib_npy, meta_path, out, options,
                             progress=progress).paths)
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    input_type = options.input_type
    side = out / "onnx2tf-work"
    direct: dict[str, Any] | None = None
    if backend == "both":
        def run_direct() -> dict:
            t0 = time.perf_counter()
            q = quantize(keras_path, calib_npy, meta_path, out, options, progress=progress)
            fm = json.loads(Path(q.paths["meta"]).read_text(encoding="utf-8"))
            cal = load_calibration(calib_npy)[:eval_images]
            i8 = int8_fidelity(q.paths["tflite_int8"], fm, keras_path, np.asarray(cal))
            return {"int8": i8, "q": q, "conversion_seconds": {
                "total": round(time.perf_counter() - t0, 3)}}
        progress("backend both: direct")
        direct = run_backend("direct", run_direct)
    progress(f"backend {backend}: onnx2tf")
    o2t = run_backend("onnx2tf", onnx2tf_stage, keras_path, calib_npy, meta_path, side,
                      input_type, quantizer=quantizer, eval_images=eval_images,
                      progress=progress)
    if backend == "onnx2tf" and o2t.get("status") != "ok":
        raise UserError(f"onnx2tf backend failed: {o2t.get('reason')}")
    paths: dict[str, Path] = {}
    if o2t.get("status") == "ok":
        for k in ("onnx", "onnx_parity"):
            dst = out / Path(o2t["files"][k]).name
            shutil.move(str(o2t["files"][k]), dst)
            paths[k] = dst
    winner = "onnx2tf"
    if backend == "both":
        assert direct is not None
        cmp = compare_backends(direct, o2t)
        winner = cmp["winner"]
        record = {"backends": ["direct", "onnx2tf"], "winner": winner,
                  "decided_by": cmp["decided_by"], "reason": cmp["reason"],
                  "rule": (compare_backends.__doc__ or "").split("criterion wins:")[-1]
                  .split("Returns")[0].strip(),
                  "table": cmp["table"], "summary": cmp["backends"],
                  "quantizer": quantizer, "eval_images": eval_images,
                  "direct": {k: v for k, v in direct.items() if k != "q"},
                  "onnx2tf": {k: v for k, v in o2t.items() if k not in ("meta", "files")}}
        paths["backends"] = _dump(out / "backends.json", record)
        progress(f"backend both: winner {winner} ({cmp['reason']})")
        if winner is None:
            raise UserError(f"no int8 model: {cmp['reason']}")
    if winner == "direct":
        assert direct is not None
        q = direct["q"]
        paths.update(q.paths)
        if o2t.get("status") == "ok":  # keep the loser beside the winner
            dst = out / "model.int8.onnx2tf.tflite"
            shutil.move(str(o2t["files"]["tflite_int8_onnx2tf"]), dst)
            m = json.loads(Path(q.paths["meta"]).read_text(encoding="utf-8"))
            m.setdefault("head_outputs_by_file", {})[dst.name] = o2t["head_outputs"]
            write_json(q.paths["meta"], m)
            paths["tflite_int8_onnx2tf"] = dst
        shutil.rmtree(side, ignore_errors=True)
        return paths
    # onnx2tf ships: model.int8.tflite, model.json, quantize.json from its result
    by_file = dict(meta.get("head_outputs_by_file") or {})
    q_old = direct["q"] if direct and direct.get("status") == "ok" else None
    if q_old is not None:
        dst = out / "model.int8.direct.tflite"
        os.replace(q_old.paths["tflite_int8"], dst)
        old_meta = json.loads(Path(q_old.paths["meta"]).read_text(encoding="utf-8"))
        by_file = dict(old_meta.get("head_outputs_by_file") or by_file)
        by_file[dst.name] = by_file.pop("model.int8.tflite", old_meta.get("head_outputs"))
        paths["tflite_int8_direct"] = dst
        if q_old.paths.get("tflite_int8_fallback"):
            paths["tflite_int8_fallback"] = q_old.paths["tflite_int8_fallback"]
    else:  # direct failed or not run: drop whatever it left
        for name in ("model.int8.tflite", "model.json", "quantize.json"):
            (out / name).unlink(missing_ok=True)
    int8 = out / "model.int8.tflite"
    shutil.move(str(o2t["files"]["tflite_int8_onnx2tf"]), int8)
    by_file[int8.name] = o2t["head_outputs"]
    meta.update(head_outputs=o2t["head_outputs"], head_outputs_by_file=by_file,
                backend="onnx2tf", quantization={
                    "input_type": input_type, "ranges": "minmax", "backend": "onnx2tf",
                    "quantizer": quantizer,
                    "calibration_images": int(len(load_calibration(calib_npy)))})
    write_json(out / "model.json", meta)
    secs = o2t.get("conversion_seconds") or {}
    qres = QuantizeResult({"tflite_int8": int8, "meta": out / "model.json"},
                          round(float(secs.get("total") or 0.0), 2), {},
                          o2t["integer_check"])
    qd = qres.to_dict()
    qd["paths"].update({k: Path(v).name for k, v in paths.items()})
    write_json(out / "quantize.json", qd)
    paths.update(tflite_int8=int8, meta=out / "model.json", quantize=out / "quantize.json")
    shutil.rmtree(side, ignore_errors=True)
    return paths


__all__ = ["ONNX_MIN_OPSET", "compare_backends", "export_onnx", "float_ops", "latency_ms",
           "int8_fidelity", "keras_head_meta", "onnx2tf_convert", "onnx2tf_stage", "onnx_heads", "quantize_with_backend", "onnx_io", "onnx_parity", "run_backend",
           "sqnr_db"]
