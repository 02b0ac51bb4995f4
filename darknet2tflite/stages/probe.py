"""probe stage: per-layer TFLite op probe for the target, with automatic rewrite-rule choice -> probe.json (before/after reports, chosen rewrites) + probe.md (tables)."""
from __future__ import annotations

import json
from pathlib import Path


from darknet2tflite.stages.payload import Progress, quiet


def probe_stage(cfg: str, weights: str, out_dir: Path, target: str = "int8",
                images: str | None = None, allow: list[str] | None = None,
                progress: Progress = quiet) -> dict[str, Path]:
    from darknet2tflite.probe.rules import probe_with_rewrites

    progress(f"probe {Path(cfg).name} for target {target}")
    # the rules' float deviation is measured where the rewritten model is built (rewrite
    # stage), so the probe's cost stays per layer signature, not per model size
    from darknet2tflite.targets import probe_profiles
    before, after, applied = probe_with_rewrites(cfg, weights, probe_profiles(target),
                                                 images=None, allow=tuple(allow or ()))
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
