"""parity: float Keras + float32 TFLite vs OpenCV DNN's Darknet importer -> parity.json."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, artifact, log, run_stage

STAGE = "parity"


def _images(p: Mapping[str, Any]) -> str:
    from darknet2tflite.paths import images_or_default
    return images_or_default(p.get("images"))


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    b = p["build"]
    return ({"cfg": p["cfg"], "weights": p["weights"], "keras": artifact(b, "keras"),
             "tflite": artifact(b, "tflite_float32"), "meta": artifact(b, "meta"),
             "images": _images(p)},
            {"tolerance": p.get("tolerance")})


@task(name=STAGE, **TASK_OPTIONS)
def parity(cfg: str, weights: str, build: dict, images: str | None = None,
           tolerance: float | None = None, store: str | None = None, refresh: bool = False,
           require_cached: bool = False):
    from darknet2tflite.stages.parity import parity_stage

    p = locals()

    def produce(tmp):
        return parity_stage(cfg, weights, artifact(build, "keras"),
                            artifact(build, "tflite_float32"), artifact(build, "meta"), tmp,
                            images=_images(p), tolerance=tolerance, progress=log)

    return run_stage(STAGE, store, *key_parts(p), produce, refresh=refresh,
                     require_cached=require_cached)
