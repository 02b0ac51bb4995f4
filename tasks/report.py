"""report: report.json + report.md (+ report_images/) in the store, then ``deliver``: the
final, atomic copy of the deliverables into the user's --out folder."""
from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from ._common import TASK_OPTIONS, artifact, log, run_stage
from darknet2tflite.stages.report import deliver_files, deliverable_files, report_stage

STAGE = "report"


def key_parts(p: Mapping[str, Any]) -> tuple[dict, dict]:
    ev = p["evaluate"]
    inputs = {"evaluation": artifact(ev, "report_json"),
              "parse": artifact(p["parse"], "parsed"), "parity": artifact(p["parity"], "parity"),
              "probe": artifact(p["probe"], "probe"),
              "rewrites": artifact(p["rewrite"], "rewrites")}
    for name, path in sorted((ev.get("artifacts") or {}).items()):
        if name.startswith("image:"):
            inputs[name] = path
    inputs["verify"] = artifact(p.get("verify"), "verify")
    return inputs, {"model": p.get("model"), "target": p.get("target") or "cpu"}


@task(name=STAGE, **TASK_OPTIONS)
def report(model: str, parse: dict, parity: dict, probe: dict, rewrite: dict, evaluate: dict,
           target: str = "cpu", verify: dict | None = None,
           store: str | None = None, refresh: bool = False, require_cached: bool = False):
    p = locals()
    return run_stage(STAGE, store, *key_parts(p), lambda tmp: report_stage(p, tmp, log),
                     refresh=refresh, require_cached=require_cached)


@task(name="deliver", **TASK_OPTIONS)
def deliver(out: str, rewrite: dict, quantize: dict, variants: dict, report: dict,
            verify: dict | None = None) -> list[str]:
    """Copy the deliverables from the store into ``out``: staged in a sibling temp folder
    and moved in only when complete (never cached: the store entries are, the copy is the
    one side effect outside the store)."""
    return deliver_files(out, deliverable_files(rewrite, quantize, variants, report, verify),
                         log)
