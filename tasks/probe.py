"""probe: per-layer TFLite op probe for the target, with automatic rewrite-rule choice
-> probe.json (before/after reports, chosen rewrites) + probe.md (tables)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, StoreCachePolicy, log, run_stage

STAGE = "probe"


def _images(p: Mapping[str, Any]) -> str:
    from darknet2tflite.paths import images_or_default
    return images_or_default(p.get("images"))


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    return ({"cfg": p["cfg"], "weights": p["weights"]},
            {"target": p.get("target") or "int8", "allow": sorted(p.get("allow") or [])})


def probe_stage(cfg: str, weights: str, out_dir: Path, target: str = "int8",
                images: str | None = None, allow: list[str] | None = None) -> dict[str, Path]:
    from darknet2tflite.probe.rules import probe_with_rewrites

    log(f"probe {Path(cfg).name} for target {target}")
    # the rules' float deviation is measured where the rewritten model is built (rewrite
    # stage), so the probe's cost stays per layer signature, not per model size
    before, after, applied = probe_with_rewrites(cfg, weights, target, images=None,
                                                 allow=tuple(allow or ()))
    doc = {"target": target, "ok_before": before.ok, "ok_after": after.ok,
           "rewrites": [a.to_dict() for a in applied],
           "before": json.loads(before.to_json()), "after": json.loads(after.to_json())}
    out = Path(out_dir)
    (out / "probe.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    def verdict(report) -> str:
        return "all layers ok" if report.ok else f"{len(report.unsupported())} layer(s) not ok"

    md = [f"# TFLite op probe: {Path(cfg).name} for {target}", "",
          f"Before rewrites: {verdict(before)}; after: {verdict(after)}.", "",
          "## Rewrites chosen", ""]
    md += [f"- **{a.name}** ({'exact' if a.exact else 'approximate'}) on layers "
           f"{', '.join(map(str, a.layers))}: {a.description}" for a in applied] or ["- none"]
    md += ["", "## Before rewrites", "", before.to_markdown(), "",
           "## After rewrites", "", after.to_markdown(), ""]
    (out / "probe.md").write_text("\n".join(md), encoding="utf-8")
    return {"probe": out / "probe.json", "probe_md": out / "probe.md"}


@task(name=STAGE, cache_policy=StoreCachePolicy(stage=STAGE, key_parts=key_parts),
      **TASK_OPTIONS)
def probe(cfg: str, weights: str, target: str = "int8", images: str | None = None,
          allow: list[str] | None = None, store: str | None = None, refresh: bool = False,
          require_cached: bool = False):
    p = locals()
    return run_stage(STAGE, store, *key_parts(p),
                     lambda tmp: probe_stage(cfg, weights, tmp, p.get("target") or "int8",
                                             _images(p), allow),
                     refresh=refresh, require_cached=require_cached)
