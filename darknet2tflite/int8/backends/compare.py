"""Ranking two int8 models of the same network by a fixed rule (AP, then head SQNR, then latency), measured the same way for both."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from darknet2tflite.tflite.inspect import float_ops
from darknet2tflite.tflite.metrics import latency_ms, sqnr_db
from darknet2tflite.model.load import load_keras
from darknet2tflite.int8.backends.onnx_export import _keras_heads

#: compare_backends: differences at or below these are ties, so the next criterion decides
AP_TIE = 0.005       # 0.5 AP points
SQNR_TIE_DB = 0.5
LATENCY_TIE = 0.05   # 5 % of the slower model


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
    from darknet2tflite.tflite.interpreter import interpreter
    data = Path(tflite).read_bytes()
    model = load_keras(keras_model)
    ref = _keras_heads(model, batch)
    groups = [h.get("outputs") or [h["output"]] for h in file_meta["heads"]]
    refs = [np.concatenate([ref[n] for n in g], axis=-1) for g in groups]
    got = run_tflite(interpreter(bytes(data)), batch, file_meta)
    fops = float_ops(data)
    return {"status": "ok", "path": str(tflite), "size_bytes": len(data), "float_ops": fops,
            "n_float_ops": len(fops),
            "sqnr_db": [round(sqnr_db(r, g), 3) for r, g in zip(refs, got)],
            "latency_ms": round(latency_ms(data, runs=latency_runs, warmup=1), 3) if latency_runs else None}
