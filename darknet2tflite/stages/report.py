"""report stage: report.json + report.md (+ report_images/) from the stage artifacts; and which store files the deliver step copies into --out."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping


from darknet2tflite.stages.payload import artifact, Progress, quiet, read_json


def safe_relpath(rel: str) -> str:
    """``rel`` if it names a file strictly inside its output folder (image names come from
    input file names via the evaluate stage: they must never write outside --out)."""
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel
            or any(part in ("", ".", "..") for part in parts)):
        raise ValueError(f"refusing output name {rel!r}: not a relative path inside the "
                         "output folder")
    return rel


def _pipeline_summary(p: Mapping[str, Any]) -> dict[str, Any]:
    parsed = read_json(artifact(p["parse"], "parsed")) or {}
    parity = read_json(artifact(p["parity"], "parity")) or {}
    probe = read_json(artifact(p["probe"], "probe")) or {}
    rewrites = read_json(artifact(p["rewrite"], "rewrites")) or []
    return {
        "parse": {k: parsed.get(k) for k in ("cfg", "weights", "n_layers", "n_params",
                                             "header", "input")},
        "parity": {k: parity.get(k) for k in ("status", "max_rel", "tolerance", "reference",
                                              "reason", "images") if k in parity},
        "probe": {"target": probe.get("target"), "ok_before": probe.get("ok_before"),
                  "ok_after": probe.get("ok_after"),
                  "not_ok_before": [{"layer": r["index"], "section": r["section"],
                                     "status": r["status"]}
                                    for r in (probe.get("before") or {}).get("rows", [])
                                    if r["status"] != "ok"]},
        "rewrites": [{"name": r["name"], "layers": r.get("applied_layers", []),
                      "exact": r.get("exact"), "max_rel": r.get("max_rel"),
                      "max_abs": r.get("max_abs")} for r in rewrites],
    }


def _pipeline_markdown(s: Mapping[str, Any]) -> str:
    L = ["## Pipeline", ""]
    pa = s["parse"]
    h = pa.get("header") or {}
    L.append(f"- parse: {pa.get('n_layers')} layers, {pa.get('n_params'):,} parameters, "
             f"weights format {h.get('major')}.{h.get('minor')}.{h.get('revision')} "
             f"(seen {h.get('seen')})")
    pr = s["parity"]
    if pr.get("status") == "skipped":
        L.append(f"- float parity: skipped ({pr.get('reason')})")
    elif pr:
        L.append(f"- float parity vs {pr.get('reference')}: {pr.get('status')}, worst relative "
                 f"error {pr.get('max_rel'):.2e} (tolerance {pr.get('tolerance'):.0e}) on "
                 f"{len(pr.get('images') or [])} images")
    pb = s["probe"]
    bad = ", ".join(f"{r['layer']} ({r['section']}: {r['status']})" for r in pb["not_ok_before"])
    L.append(f"- op probe ({pb.get('target')}): "
             + (f"layers not ok before rewrites: {bad}; " if bad else "all layers ok; ")
             + f"after rewrites: {'all ok' if pb.get('ok_after') else 'NOT all ok'}")
    for r in s["rewrites"]:
        dev = f", float max_rel {r['max_rel']:.1e}" if r.get("max_rel") is not None else ""
        L.append(f"- rewrite {r['name']} on layers {r['layers']}"
                 f"{' (exact' + dev + ')' if r.get('exact') else ''}"
                 f"{' (APPROXIMATE' + dev + ', allowed by --allow-approximate)' if r.get('exact') is False else ''}")
    return "\n".join(L) + "\n"


def report_stage(p: Mapping[str, Any], out: Path, progress: Progress = quiet
                 ) -> dict[str, Path]:
    from darknet2tflite.evaluation.report import write_report

    ev = p["evaluate"]
    report = dict(read_json(artifact(ev, "report_json")))
    # entries are content-addressed: a renamed copy of a model reuses them, so the name
    # shown is this run's label, not whatever file name produced the shared entries
    report["model"] = p.get("model") or report.get("model")
    summary = _pipeline_summary(p)
    report["pipeline"] = summary
    from darknet2tflite.targets import report as deployment_report
    report["deployment"] = deployment_report.deployment(
        p.get("target") or "cpu", report, read_json(artifact(p.get("verify"), "verify")))
    arts: dict[str, Path] = {}
    for name, path in (ev.get("artifacts") or {}).items():
        if name.startswith("image:"):
            rel = safe_relpath(name[len("image:"):])
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / rel)
            arts[name] = out / rel
    probe = read_json(artifact(p["probe"], "probe")) or {}
    layer_types = {r["index"]: r["section"] for r in (probe.get("before") or {}).get("rows", [])}
    arts.update(write_report(report, out, layer_types))
    md = Path(arts["report_md"])
    text = md.read_text(encoding="utf-8")
    cut = text.find("\n## ") + 1 or len(text)  # the pipeline facts before the first section
    md.write_text(text[:cut] + _pipeline_markdown(summary) + "\n"
                  + deployment_report.markdown(report["deployment"]) + "\n" + text[cut:],
                  encoding="utf-8")
    progress(f"report: {len(text.splitlines())} lines, {len(arts) - 2} images")
    return arts


def deliverable_files(rewrite: Mapping[str, Any], quantize: Mapping[str, Any],
                      variants: Mapping[str, Mapping[str, Any]],
                      report: Mapping[str, Any], verify: Mapping[str, Any] | None = None
                      ) -> dict[str, str]:
    """{relative name in --out: store path}."""
    files = {"model.keras": artifact(rewrite, "keras"),
             "model.float32.tflite": artifact(rewrite, "tflite_float32"),
             "model.int8.tflite": artifact(quantize, "tflite_int8"),
             "model.json": artifact(quantize, "meta"),
             "quantize.json": artifact(quantize, "quantize"),
             "model.int8-fallback.tflite": artifact(quantize, "tflite_int8_fallback"),
             "report.json": artifact(report, "report_json"),
             "report.md": artifact(report, "report_md"),
             # --backend onnx2tf / both
             "model.onnx": artifact(quantize, "onnx"),
             "onnx_parity.json": artifact(quantize, "onnx_parity"),
             "backends.json": artifact(quantize, "backends"),
             "model.int8.direct.tflite": artifact(quantize, "tflite_int8_direct"),
             "model.int8.onnx2tf.tflite": artifact(quantize, "tflite_int8_onnx2tf")}
    for v, vp in variants.items():
        files[f"model.{v}.tflite"] = artifact(vp, f"tflite_{v}")
    for name, path in (report.get("artifacts") or {}).items():
        if name.startswith("image:"):
            files[safe_relpath(name[len("image:"):])] = path
    files["verify.json"] = artifact(verify, "verify")
    for name, path in ((verify or {}).get("artifacts") or {}).items():
        if name.startswith("compiled:"):  # Vela's NPU model per Ethos-U target
            files[safe_relpath(f"model.{name[len('compiled:'):]}.tflite")] = path
    return {k: v for k, v in files.items() if v}


def deliver_files(out: str | Path, files: Mapping[str, str], progress: Progress = quiet
                  ) -> list[str]:
    """Copy ``files`` ({name in out: store path}) into ``out``: staged in a sibling temp
    folder and moved in only when complete."""
    from darknet2tflite.store.output import staged_output

    with staged_output(out) as tmp:
        for rel, src in files.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    progress(f"wrote {len(files)} files to {out}")
    return sorted(files)
