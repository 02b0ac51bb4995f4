"""evaluate stage: float32 vs int8 (and variants) on the held-out / evaluation images -> report.json (conversion facts + evaluation: head SQNR, AP/AP50 with annotations, sizes, latency; with the swapped calibration fold's int8 model, AP over both folds; the per-layer QuantizationDebugger ranking) and side-by-side detection images."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


from darknet2tflite.stages.payload import artifact, Progress, quiet, read_json
LATENCY_RUNS = 20
DRAW = 4


def evaluate_stage(p: Mapping[str, Any], out: Path, progress: Progress = quiet
                   ) -> dict[str, Path]:
    from darknet2tflite.int8.calibration import CalibrationSet
    from darknet2tflite.evaluation.evaluate import evaluate
    from darknet2tflite.darknet.metadata import write_json
    from darknet2tflite.int8.result import QuantizeResult
    from darknet2tflite.evaluation.report import assemble_report

    q, rw = p["quantize"], p["rewrite"]
    plan = read_json(artifact(q, "plan"))
    qd = read_json(artifact(q, "quantize"))
    qres = QuantizeResult(**{**qd, "paths": {k: Path(v) for k, v in qd["paths"].items()}})
    if qres.debugger and not qres.layer_errors:
        qres = _layer_table(q, qres, progress)
    cal = plan["calibration"]
    calib = CalibrationSet(Path("calibration.npy"), [""] * int(cal["images"]),
                           [(s["file"], s["reason"]) for s in cal.get("skipped", [])],
                           bool(cal.get("cached")))
    extra = {v: artifact(vp, f"tflite_{v}") for v, vp in (p.get("variants") or {}).items()}
    if artifact(q, "tflite_int8_fallback"):
        extra["int8-fallback"] = artifact(q, "tflite_int8_fallback")
    for other in ("direct", "onnx2tf"):  # --backend both: the model that did not ship
        if artifact(q, f"tflite_int8_{other}"):
            extra[f"int8-{other}"] = artifact(q, f"tflite_int8_{other}")
    cross = []
    if artifact(p.get("cross"), "tflite_int8"):  # the swapped calibration fold's model
        cross_plan = read_json(artifact(p["cross"], "plan"))
        cross = [(artifact(p["cross"], "tflite_int8"), [Path(x) for x in cross_plan["eval"]])]
    ev = evaluate(artifact(rw, "tflite_float32"), artifact(q, "tflite_int8"), artifact(q, "meta"),
                  [Path(x) for x in plan["eval"]], p.get("eval_annotations"), out,
                  extra_models=extra, latency_runs=LATENCY_RUNS, draw=DRAW, cross=cross,
                  progress=progress)
    files = {"keras": artifact(rw, "keras"), "tflite_float32": artifact(rw, "tflite_float32"),
             "tflite_int8": artifact(q, "tflite_int8"), "meta": artifact(q, "meta"),
             **{f"tflite_{k}": v for k, v in extra.items()}}
    report = assemble_report(p["cfg"], qres, calib, ev, files, plan["warnings"])
    cross_q = read_json(artifact(p.get("cross"), "quantize")) if cross else None
    if cross_q and report["conversion"].get("passes"):
        # the swapped fold is a whole second conversion: its passes, for the evaluation only
        report["conversion"]["passes"]["fold2"] = {
            "seconds": cross_q.get("seconds"),
            "seconds_total": (cross_q.get("passes") or {}).get("seconds_total"),
            "passes": (cross_q.get("passes") or {}).get("passes", [])}
    backends = read_json(artifact(q, "backends"))
    if backends:
        report["backends"] = {k: backends.get(k) for k in
                              ("winner", "decided_by", "reason", "rule", "table", "quantizer")}
    write_json(out / "report.json", report)
    arts: dict[str, Path] = {"report_json": out / "report.json"}
    for rel in ev.get("drawn", []):
        arts[f"image:{rel}"] = out / rel
    return arts


def _layer_table(q: Mapping[str, Any], qres: Any, progress: Progress) -> Any:
    """The QuantizationDebugger ranking (report ``worst_layers``) of the shipped int8 model,
    from the calibrated model and photos the quantize stage saved for it; its pass joins the
    conversion's in ``passes``."""
    from dataclasses import replace
    from darknet2tflite.int8.debugger import run_saved
    from darknet2tflite.int8.passes import with_pass

    progress("int8: QuantizationDebugger per-layer error")
    rows, row = run_saved(artifact(q, "tflite_calibrated"), artifact(q, "debug_images"),
                          qres.debugger)
    return replace(qres, layer_errors=rows, passes=with_pass(qres.passes, row))


def evaluation_rows(report: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Table rows (one per model) for the Prefect UI artifact."""
    if not report:
        return []
    ev = report.get("evaluation") or {}
    ap = ev.get("ap") or {}
    lat = ev.get("latency_ms") or {}
    sizes = ev.get("sizes") or {}
    heads = ev.get("heads") or {}
    rows = []
    for m in sizes:
        sq = [h["sqnr_db"] for h in heads.get(m, [])]
        row = {"model": m, "size KB": round(sizes[m] / 1024),
               "min head SQNR dB": round(min(sq), 2) if sq else "-",
               "latency ms (1 thread)": lat.get(m, {}).get("1", "-"),
               "latency ms (2 threads)": lat.get(m, {}).get("2", "-")}
        if ap:
            row.update({"AP": ap.get(m, {}).get("AP", "-"), "AP50": ap.get(m, {}).get("AP50", "-"),
                        "dAP": ap.get(m, {}).get("dAP", "-")})
        fa = report.get("float_agreement") or {}
        if fa:  # the label-free verdict (agreement.py) belongs to the shipped int8 model
            row["AP50 vs float32"] = fa.get("ap50") if m == "int8" else "-"
        rows.append(row)
    return rows
