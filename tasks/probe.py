"""probe: per-layer TFLite op probe for the target, with automatic rewrite-rule choice
-> probe.json (before/after reports, chosen rewrites) + probe.md (tables)."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, log, run_stage
from darknet2tflite.stages.probe import probe_stage

STAGE = "probe"


def _images(p: Mapping[str, Any]) -> str:
    from darknet2tflite.paths import images_or_default
    return images_or_default(p.get("images"))


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    return ({"cfg": p["cfg"], "weights": p["weights"]},
            {"target": p.get("target") or "int8", "allow": sorted(p.get("allow") or []),
             "tools": _tool_versions(p.get("target"))})


def _tool_versions(spec: Any) -> dict[str, str]:
    """Versions of the tools the probe asks (a new TFLite Micro may accept more layers)."""
    from darknet2tflite.targets import is_legacy_profile, parse_targets, target_list
    if all(is_legacy_profile(n) for n in target_list(spec)):
        return {}
    try:
        return {t.name: t.tool()["version"] for t in parse_targets(
            [n for n in target_list(spec) if not is_legacy_profile(n)])}
    except Exception:  # noqa: BLE001 - an unknown name fails in the stage with its message
        return {}


@task(name=STAGE, **TASK_OPTIONS)
def probe(cfg: str, weights: str, target: str = "int8", images: str | None = None,
          allow: list[str] | None = None, store: str | None = None, refresh: bool = False,
          require_cached: bool = False):
    p = locals()
    return run_stage(STAGE, store, *key_parts(p),
                     lambda tmp: probe_stage(cfg, weights, tmp, p.get("target") or "int8",
                                             _images(p), allow, log),
                     refresh=refresh, require_cached=require_cached)
