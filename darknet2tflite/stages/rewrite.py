"""rewrite stage: rebuild the model with the rules the probe chose (+ the int8 head split) -> model.keras, model.float32.tflite, model.json (recording the rewrites) + rewrites.json."""
from __future__ import annotations

import json
from pathlib import Path


from darknet2tflite.stages.payload import Progress, quiet, read_json
DEVIATION_IMAGES = 4


def rewrite_stage(cfg: str, weights: str, names: str | None, probe_json: str,
                  out_dir: Path, images: str | None = None,
                  progress: Progress = quiet) -> dict[str, Path]:
    """The int8-ready model: the rules the probe chose plus the int8 head split."""
    from darknet2tflite.int8.quantize import build_int8_model
    from darknet2tflite.rewrites import load_rules
    from darknet2tflite.rewrites.head_split import RULE as HEAD_SPLIT

    out = Path(out_dir)
    chosen = read_json(probe_json).get("rewrites", [])
    registry = load_rules()
    missing = [r["name"] for r in chosen if r["name"] not in registry]
    if missing:
        raise RuntimeError(f"probe chose unknown rewrite rules {missing}")
    rules = [registry[r["name"]] for r in chosen] + [HEAD_SPLIT]
    progress("build with rewrites: " + ", ".join(r.name for r in rules))
    arts = build_int8_model(cfg, weights, out, names, rules=rules, progress=progress)
    applied = read_json(arts["meta"]).get("rewrites") or {}
    doc = [{**r, "applied_layers": applied.get(r["name"], [])} for r in chosen]
    if chosen and images:
        from darknet2tflite.stages.parse import load_model_inputs
        from darknet2tflite.probe.rules import rule_deviations
        progress(f"float deviation of {len(chosen)} rule(s) on real images")
        dcfg, dweights = load_model_inputs(cfg, weights)
        per_rule, _ = rule_deviations(dcfg, dweights, rules[:-1], images,
                                      limit=DEVIATION_IMAGES)
        for d, (mabs, mrel) in zip(doc, per_rule):
            d.update(max_abs=mabs, max_rel=mrel, deviation_images=DEVIATION_IMAGES)
    doc.append({"name": HEAD_SPLIT.name, "exact": HEAD_SPLIT.exact, "opt_in": True,
                "emits": HEAD_SPLIT.emits, "description": HEAD_SPLIT.description,
                "reason": "int8: one output (own scale) per channel group of each head",
                "applied_layers": applied.get(HEAD_SPLIT.name, [])})
    (out / "rewrites.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return {**arts, "rewrites": out / "rewrites.json"}
