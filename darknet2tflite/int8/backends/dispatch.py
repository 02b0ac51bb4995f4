"""The quantize stage's one call for every int8 backend: direct (TFLiteConverter), onnx2tf, or both compared."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from darknet2tflite.store.atomic import atomic_write_bytes
from darknet2tflite.int8 import debugger
from darknet2tflite.int8.backends.compare import compare_backends, int8_fidelity
from darknet2tflite.int8.backends.onnx2tf import onnx2tf_stage
from darknet2tflite.int8.backends.outcome import run_backend
from darknet2tflite.options import BACKENDS




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
    With onnx2tf as the shipped model, quantize.json's per-layer errors and the debugger's
    inputs (and a float fallback model, if asked for) still describe the direct conversion,
    so they are dropped for the onnx2tf winner (the fallback file is kept)."""
    from darknet2tflite.int8.calibration import load_calibration
    from darknet2tflite.errors import UserError
    from darknet2tflite.darknet.metadata import write_json
    from darknet2tflite.int8.result import QuantizeResult
    from darknet2tflite.int8.quantize import quantize

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
        for k in ("tflite_calibrated", "debug_images"):  # the direct model's layer table
            if q_old.paths.get(k):
                Path(q_old.paths[k]).unlink(missing_ok=True)
    else:  # direct failed or not run: drop whatever it left
        for name in ("model.int8.tflite", "model.json", "quantize.json",
                     debugger.CALIBRATED_FILE, debugger.IMAGES_FILE):
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
