"""probe: per-layer TFLite op probe for the target, with automatic rewrite-rule choice
-> probe.json (before/after reports, chosen rewrites) + probe.md (tables)."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, StoreCachePolicy, log, run_stage
from darknet2tflite.stages.probe import probe_stage

STAGE = "probe"


def _images(p: Mapping[str, Any]) -> str:
    from darknet2tflite.paths import images_or_default
    return images_or_default(p.get("images"))


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    return ({"cfg": p["cfg"], "weights": p["weights"]},
            {"target": p.get("target") or "int8", "allow": sorted(p.get("allow") or [])})


@task(name=STAGE, cache_policy=StoreCachePolicy(stage=STAGE, key_parts=key_parts),
      **TASK_OPTIONS)
def probe(cfg: str, weights: str, target: str = "int8", images: str | None = None,
          allow: list[str] | None = None, store: str | None = None, refresh: bool = False,
          require_cached: bool = False):
    p = locals()
    return run_stage(STAGE, store, *key_parts(p),
                     lambda tmp: probe_stage(cfg, weights, tmp, p.get("target") or "int8",
                                             _images(p), allow, log),
                     refresh=refresh, require_cached=require_cached)
