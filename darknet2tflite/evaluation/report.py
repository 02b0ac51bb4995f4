"""report.json / report.md: the conversion and evaluation facts, rendered for people."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping


from darknet2tflite.evaluation.evaluate import DRAW_CONF_THRESH, LAYER_CHART, NMS_THRESH

import os
from typing import Sequence


from darknet2tflite.int8.result import QuantizeResult


# --------------------------------------------------------------------------- report

def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{nd}f}"
    return str(v)


def _by_size(ap: Mapping[str, Any]) -> str:
    """"12.3 / 45.6 / 78.9" (n/a for a size without ground truth; "" for older reports)."""
    sizes = ap.get("AP_by_size")
    if not sizes:
        return ""
    return " / ".join("n/a" if sizes.get(k) is None else _fmt(sizes[k])
                      for k in ("small", "medium", "large"))


def _cell(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return " / ".join(_fmt(x) for x in v)
    return _fmt(v)


#: why one report's AP loss is not the last word (measured with bench/int8_noise.py)
NOISE_NOTE = ("AP and AP50 losses are one draw: on 86 COCO photos, int8 models of yolov4-tiny "
              "that differ only in their rounding pattern (activation ranges scaled by "
              "1 + 1e-6) score ~0.3 AP apart (bench/int8_noise.py, docs/int8.md); compare "
              "settings by means over several calibrations (bench/int8_splits.py).")


def write_report(report: Mapping[str, Any], out_dir: str | Path,
                 layer_types: Mapping[int, str] | None = None) -> dict[str, Path]:
    """report.json (everything) and report.md (tables + detection images, and the per-layer
    error chart ``report_images/layer_error.png``, its bars named by Darknet layer index and
    ``layer_types``' section kinds)."""
    from darknet2tflite.darknet.metadata import write_json
    from darknet2tflite.store.atomic import atomic_write_bytes
    out = Path(out_dir)
    write_json(out / "report.json", report)
    from darknet2tflite.evaluation.agreement import verdict_line
    fa = report.get("float_agreement")
    L: list[str] = []
    if fa:  # the verdict first: what a reader wants to know before any table
        L += [verdict_line(fa), ""] + [f"> warning: {w}" for w in fa.get("warnings", [])]
        L += [""] if fa.get("warnings") else []
    L += [f"# int8 conversion report: {report.get('model', '')}", ""]
    conv = report.get("conversion") or {}
    if conv:
        L += ["## Conversion", "", "| item | value |", "|---|---|"]
        labels = {"seconds": "int8 conversion s (calibrate + ranges + quantize + check)",
                  "calibration_images": "calibration images",
                  "mirrored_images": "mirrored copies added to calibration",
                  "ranges": "activation ranges",
                  "input_type": "input type", "head_split": "head split layout"}
        for k, label in labels.items():
            if k in conv:
                L.append(f"| {label} | {_fmt(conv[k])} |")
        mem = conv.get("memory") or {}
        if mem:
            L.append(f"| peak RSS (MB) | {_fmt(mem.get('peak_mb'), 0)} "
                     f"(+{_fmt(mem.get('delta_mb'), 0)} during conversion) |")
        chk = conv.get("integer_check") or {}
        if chk:
            L.append(f"| full integer | {chk.get('full_integer')} |")
        L.append("")
        # long values as a list, not table cells: a list wraps wherever it is rendered, a
        # table cell does not in the Prefect UI (the table is clipped at its pane)
        if conv.get("channel_split"):
            from darknet2tflite.int8.channel_split import describe
            L.append(f"- outlier channels split: {describe(conv['channel_split'])}")
        if (conv.get("equalize") or {}).get("layers"):
            from darknet2tflite.int8.equalize import describe as describe_equalize
            L.append(f"- channel ranges equalized into the next layer's weights: "
                     f"{describe_equalize(conv['equalize'])}")
        if conv.get("box_rounding"):
            from darknet2tflite.int8.box_rounding import describe as describe_boxes
            L.append(f"- box weights rounded with error feedback: "
                     f"{describe_boxes(conv['box_rounding'])}")
        ps = conv.get("passes") or {}
        if ps.get("passes"):
            floor = ps.get("floor") or {}
            L.append("- passes over the calibration photos: " + ", ".join(
                f"{p['pass']} {p['images']} photo{'' if p['images'] == 1 else 's'} "
                f"{p['seconds']:.1f} s"
                + (f" ({p['stage']} stage)" if p.get("stage") else "") for p in ps["passes"])
                + (f"; {ps['seconds_total']:.1f} s in all, {ps['passes_over_floor']}x the floor "
                   f"of one float pass per photo ({floor['seconds']:.1f} s)"
                   if ps.get("passes_over_floor") else "")
                + (f"; the swapped calibration fold (for the evaluation only) converted in "
                   f"{ps['fold2']['seconds']:.1f} s more" if (ps.get("fold2") or {}).get("seconds")
                   else ""))
        if chk:
            L.append(f"- integer I/O: input {chk['input']['dtype']}, scale "
                     f"{chk['input']['scale']:.9g}, zero point {chk['input']['zero_point']}; "
                     f"outputs {chk.get('outputs')}")
            L.append(f"- ops: {', '.join(f'{k} x{v}' for k, v in sorted(chk['ops'].items()))}")
        L.append("")
        if mem:
            L += [f"Memory: {mem.get('method')}.", ""]
    bk = report.get("backends")
    if bk:
        L += ["## Int8 backends (direct vs onnx2tf)", "",
              f"Shipped as model.int8.tflite: **{bk.get('winner')}** (decided by "
              f"{bk.get('decided_by')}: {bk.get('reason')}). The other backend's model is "
              "delivered beside it (model.int8.<backend>.tflite); SQNR on calibration images "
              "vs the Keras model.", "",
              "| metric | direct | onnx2tf |", "|---|---|---|"]
        for r in bk.get("table") or []:
            L.append(f"| {r['metric']} | {_cell(r['direct'])} | {_cell(r['onnx2tf'])} |")
        L.append("")
    ev = report.get("evaluation") or {}
    if ev.get("ap"):
        L += ["## Accuracy (held-out images)", "",
              f"{len(ev.get('images', []))} images, COCO AP@[.5:.95] / AP50, conf "
              f"{ev.get('conf_thresh_ap')}, NMS {ev.get('nms_thresh')}.", "",
              "| model | AP | AP50 | dAP | dAP50 | AP small / medium / large | detections |",
              "|---|---|---|---|---|---|---|"]
        for k, v in ev["ap"].items():
            L.append(f"| {k} | {_fmt(v['AP'])} | {_fmt(v['AP50'])} | {_fmt(v['dAP'])} | "
                     f"{_fmt(v['dAP50'])} | {_by_size(v)} | {v['detections']} |")
        L += ["", NOISE_NOTE, ""]
    cr = ev.get("ap_cross")
    if cr:
        L += [f"Cross-calibrated ({cr['folds']} folds, every one of {cr['images']} images scored "
              "by an int8 model calibrated without it; the shipped model is fold 1):", "",
              "| model | AP | AP50 | dAP | dAP50 | AP small / medium / large |",
              "|---|---|---|---|---|---|",
              f"| float32 | {_fmt(cr['float32']['AP'])} | {_fmt(cr['float32']['AP50'])} | 0.00 | "
              f"0.00 | {_by_size(cr['float32'])} |",
              f"| int8 | {_fmt(cr['int8']['AP'])} | {_fmt(cr['int8']['AP50'])} | {_fmt(cr['dAP'])} | "
              f"{_fmt(cr['dAP50'])} | {_by_size(cr['int8'])} |", ""]
    if ev.get("heads"):
        L += ["## Raw head error vs float32", "",
              "SQNR in dB (higher is better) of the whole head and of its box x/y, box "
              "w/h, objectness and class channels; cosine similarity in report.json.", "",
              "| model | head (grid) | SQNR dB | xy / wh / obj / cls dB |", "|---|---|---|---|"]
        for k, rows in ev["heads"].items():
            for r in rows:
                p = r["parts"]
                L.append(f"| {k} | {r['head']} ({r['grid'][0]}x{r['grid'][1]}) | "
                         f"{_fmt(r['sqnr_db'])} | "
                         + " / ".join(_fmt(p[q]['sqnr_db']) for q in ("xy", "wh", "obj", "cls"))
                         + " |")
        L.append("")
    if ev.get("sizes"):
        lat = ev.get("latency_ms", {})
        thr = sorted({t for v in lat.values() for t in v}, key=int)
        L += ["## Size and latency", "",
              "| model | size (KB) | " + " | ".join(f"{t} thread(s) ms" for t in thr) + " |",
              "|---|---|" + "---|" * len(thr)]
        for k, s in ev["sizes"].items():
            L.append(f"| {k} | {s / 1024:.0f} | "
                     + " | ".join(_fmt(lat.get(k, {}).get(t)) for t in thr) + " |")
        L += ["", "Latency: median of repeated `invoke()` on one input, LiteRT's interpreter "
              "with its default XNNPACK delegate.", ""]
    fb = report.get("float_fallback")
    if fb:
        L += ["## Float fallback", "",
              f"Darknet layers kept float: {fb.get('layers')}.", ""]
        if fb.get("dAP") is not None:
            L += [f"AP bought vs full int8: {_fmt(fb['dAP'])} AP, {_fmt(fb['dAP50'])} AP50.", ""]
    le = report.get("worst_layers") or []
    if le:
        from darknet2tflite.evaluation.charts import layer_error_chart
        from darknet2tflite.evaluation.draw import save_image
        L += ["## Worst-quantized layers (QuantizationDebugger)", "",
              "RMSE/scale per op output, each op fed the quantized input (0.29 = rounding only).",
              ""]
        chart = layer_error_chart(le, dict(layer_types or {}))
        if chart is not None:
            save_image(out / LAYER_CHART, chart)
            L += [f"![int8 error per Darknet layer]({LAYER_CHART})", ""]
        L += ["| Darknet layer | type | op | RMSE/scale | range |", "|---|---|---|---|---|"]
        for r in le[:10]:
            L.append(f"| {_fmt(r['layer'])} | {(layer_types or {}).get(r['layer'], '-')} | "
                     f"{r['op']} | {_fmt(r['rmse_over_scale'], 3)} | {_fmt(r['range'], 3)} |")
        L.append("")
    if ev.get("drawn"):
        L += ["## Detections: float32 (left) vs int8 (right)", "",
              f"conf {DRAW_CONF_THRESH}, NMS {NMS_THRESH}.", ""]
        L += [f"![{Path(d).stem}]({d})" for d in ev["drawn"]]
        L.append("")
    for w in ev.get("warnings", []) + list(report.get("warnings", [])):
        L.append(f"> warning: {w}")
    text = "\n".join(L) + "\n"  # file names that are not UTF-8 shown as \xNN
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    atomic_write_bytes(out / "report.md", text.encode())
    arts = {"report_json": out / "report.json", "report_md": out / "report.md"}
    if (out / LAYER_CHART).is_file():
        arts[f"image:{LAYER_CHART}"] = out / LAYER_CHART
    return arts


TARGETS = {"max_ap_loss": 1.0, "max_ap50_loss": 0.3, "min_speedup_1thread": 5.0,
           "max_conversion_seconds": 120.0}


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
            "equalize": q.equalize,
            "passes": q.passes,
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
    if "float_agreement" in report["evaluation"]:  # the verdict: top level, see agreement.py
        from darknet2tflite.evaluation.agreement import calibration_warning
        fa = report["float_agreement"] = dict(report["evaluation"].pop("float_agreement"))
        fa["warnings"] = fa.get("warnings", []) + calibration_warning(len(calib.images))
    return report
