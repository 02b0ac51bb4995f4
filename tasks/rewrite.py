"""rewrite: rebuild the model with the rules the probe chose (+ the int8 head split)
-> model.keras, model.float32.tflite, model.json (recording the rewrites) + rewrites.json."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, artifact, log, run_stage
from darknet2tflite.stages.rewrite import DEVIATION_IMAGES, rewrite_stage

STAGE = "rewrite"


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    return ({"cfg": p["cfg"], "weights": p["weights"], "names": p.get("names"),
             "probe": artifact(p["probe"], "probe"), "images": _images(p)},
            {"head_split": True, "deviation_images": DEVIATION_IMAGES})


def _images(p: Mapping[str, Any]) -> str:
    from darknet2tflite.paths import images_or_default
    return images_or_default(p.get("images"))


@task(name=STAGE, **TASK_OPTIONS)
def rewrite(cfg: str, weights: str, probe: dict, names: str | None = None,
            images: str | None = None, store: str | None = None, refresh: bool = False, require_cached: bool = False):
    p = locals()
    return run_stage(STAGE, store, *key_parts(p),
                     lambda tmp: rewrite_stage(cfg, weights, names, artifact(probe, "probe"), tmp,
                                               _images(p), log),
                     refresh=refresh, require_cached=require_cached)
