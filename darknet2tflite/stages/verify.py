"""verify stage (beside evaluate, for tflm / Ethos-U targets): the final int8 model on each requested deployment target with the target's own tool -> verify.json + model.<target>.tflite (Vela-compiled, one per Ethos-U target)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from darknet2tflite.stages.payload import artifact, Progress, quiet, read_json


def verify_stage(p: Mapping[str, Any], out: Path, progress: Progress = quiet
                 ) -> dict[str, Path]:
    from darknet2tflite.targets.verify import verify_targets
    q = p["quantize"]
    meta = read_json(artifact(q, "meta"))
    plan = read_json(artifact(q, "plan"))
    doc = verify_targets(p["target"], artifact(q, "tflite_int8"), meta, plan["eval"], out,
                         float_tflite=artifact(p["rewrite"], "tflite_float32"),
                         annotations=p.get("eval_annotations"),
                         npu_only=bool(p.get("npu_only")), progress=progress)
    (out / "verify.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    arts = {"verify": out / "verify.json"}
    for r in doc["targets"]:
        if r.get("compiled"):
            arts[f"compiled:{r['target']}"] = out / r["compiled"]
    return arts
