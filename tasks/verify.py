"""verify: the final int8 model on each requested deployment target, with the target's own
tool (TFLite Micro interpreter, Vela) -> verify.json + model.<target>.tflite (Vela-compiled,
one per Ethos-U target). Runs only when a target other than ``cpu`` is requested."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, artifact, log, run_stage
from darknet2tflite.stages.verify import verify_stage

STAGE = "verify"


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    from darknet2tflite.targets import target_list
    from darknet2tflite.targets.verify import COMPARE_IMAGES
    q = p["quantize"]
    return ({"int8": artifact(q, "tflite_int8"), "meta": artifact(q, "meta"),
             "plan": artifact(q, "plan"), "float32": artifact(p["rewrite"], "tflite_float32"),
             "eval_annotations": p.get("eval_annotations")},
            {"targets": target_list(p.get("target")), "npu_only": bool(p.get("npu_only")),
             "compare_images": COMPARE_IMAGES,
             "tools": _tool_versions(p.get("target"))})


def _tool_versions(spec: Any) -> dict[str, str]:
    from darknet2tflite.targets import parse_targets
    return {t.name: t.tool()["version"] for t in parse_targets(spec)}


@task(name=STAGE, **TASK_OPTIONS)
def verify(target: str, quantize: dict, rewrite: dict, eval_annotations: str | None = None,
           npu_only: bool = False, store: str | None = None, refresh: bool = False,
           require_cached: bool = False):
    p = locals()
    return run_stage(STAGE, store, *key_parts(p), lambda tmp: verify_stage(p, tmp, log),
                     refresh=refresh, require_cached=require_cached)
