"""The onnx2tf int8 backend: Keras -> ONNX -> onnx2tf -> TFLite, a second route to the same
int8 contract.

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
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from darknet2tflite.store.atomic import atomic_write_bytes
from darknet2tflite.reference.parity import compare_heads
from darknet2tflite.tflite.inspect import float_ops
from darknet2tflite.tflite.metrics import latency_ms, sqnr_db
from darknet2tflite.int8.backends.outcome import _ANSI, one_line
from darknet2tflite.int8.backends.compare import int8_fidelity, keras_head_meta
from darknet2tflite.model.load import load_keras
from darknet2tflite.int8.backends.onnx_export import _keras_heads, export_onnx, onnx_heads, onnx_io, onnx_parity
INPUT_SCALE = 1.0 / 255.0
QUANTIZERS = ("onnx2tf", "tflite")
INPUT_TYPES = ("uint8", "int8")

#: onnx2tf keeps process-global state (log level, patched helpers); one run at a time
_ONNX2TF_LOCK = threading.Lock()


# --------------------------------------------------------------------------- TFLite checks

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
    from darknet2tflite.tflite.interpreter import interpreter
    it = interpreter(bytes(data))
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
            return _keras_heads(load_keras(keras_model), batch)
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
    from darknet2tflite.tflite.interpreter import interpreter
    t0 = time.perf_counter()
    info: dict[str, Any] = {"status": "failed"}
    try:
        data = produce()
        info["seconds"] = round(time.perf_counter() - t0, 3)
        m, tnames = _map_outputs(data, onnx_names, meta)
        it = interpreter(bytes(data))
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
            info["latency_ms"] = round(latency_ms(data, runs=latency_runs, warmup=1), 3)
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
    from darknet2tflite.tflite.inspect import check_integer

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

