"""build: cfg + weights (+ names) -> model.keras, model.float32.tflite, model.json."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, log, run_stage

STAGE = "build"


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    return {"cfg": p["cfg"], "weights": p["weights"], "names": p.get("names")}, {}


@task(name=STAGE, **TASK_OPTIONS)
def build(cfg: str, weights: str, names: str | None = None, store: str | None = None,
          refresh: bool = False, require_cached: bool = False):
    from darknet2tflite.stages.build import build_stage

    p = locals()
    return run_stage(STAGE, store, *key_parts(p),
                     lambda tmp: build_stage(cfg, weights, tmp, names, progress=log),
                     refresh=refresh, require_cached=require_cached)
