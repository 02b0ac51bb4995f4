"""rewrite: rebuild the model with the rules the probe chose (+ the int8 head split)
-> model.keras, model.float32.tflite, model.json (recording the rewrites) + rewrites.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, StoreCachePolicy, artifact, log, read_json, run_stage

STAGE = "rewrite"
DEVIATION_IMAGES = 4


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    return ({"cfg": p["cfg"], "weights": p["weights"], "names": p.get("names"),
             "probe": artifact(p["probe"], "probe"), "images": _images(p)},
            {"head_split": True, "deviation_images": DEVIATION_IMAGES})


def _images(p: Mapping[str, Any]) -> str:
    from darknet2tflite.paths import images_or_default
    return images_or_default(p.get("images"))


def rewrite_stage(cfg: str, weights: str, names: str | None, probe_json: str,
                  out_dir: Path, images: str | None = None) -> dict[str, Path]:
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
    log("build with rewrites: " + ", ".join(r.name for r in rules))
    arts = build_int8_model(cfg, weights, out, names, rules=rules, progress=log)
    applied = read_json(arts["meta"]).get("rewrites") or {}
    doc = [{**r, "applied_layers": applied.get(r["name"], [])} for r in chosen]
    if chosen and images:
        from darknet2tflite.stages.pipeline import load_model_inputs
        from darknet2tflite.probe.rules import rule_deviations
        log(f"float deviation of {len(chosen)} rule(s) on real images")
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


@task(name=STAGE, cache_policy=StoreCachePolicy(stage=STAGE, key_parts=key_parts),
      **TASK_OPTIONS)
def rewrite(cfg: str, weights: str, probe: dict, names: str | None = None,
            images: str | None = None, store: str | None = None, refresh: bool = False, require_cached: bool = False):
    p = locals()
    return run_stage(STAGE, store, *key_parts(p),
                     lambda tmp: rewrite_stage(cfg, weights, names, artifact(probe, "probe"), tmp,
                                                 _images(p)),
                     refresh=refresh, require_cached=require_cached)
