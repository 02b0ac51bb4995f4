"""A whole conversion in this process: every stage body in pipeline order, without Prefect
or the artifact store.

For the benchmarks and the library tests, so that what they measure is what the product
ships: the same checks (:func:`~darknet2tflite.options.check_parameters`), the same stage
bodies with the arguments the tasks give them, the probe's rule choice applied by the
rewrite stage, the run's one plan (:func:`~darknet2tflite.stages.quantize.plan_run`) and the
same deliverables copied into ``out``.  The order is :data:`STAGES`; each entry of
:data:`STEPS` only says what its stage body reads from the payloads of the earlier ones.
Nothing is cached: every call recomputes every stage (the flow is the cached route).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from darknet2tflite.stages import STAGES
from darknet2tflite.stages.payload import Progress, artifact, quiet, read_json

#: payloads of the stages run so far, by the names the flow gives them ("quantize[fold2]")
Done = dict[str, dict[str, Any]]
#: (checked parameters, payloads so far, the stage's folder, progress) -> {name: artifacts}
Step = Callable[[Mapping[str, Any], Done, Path, Progress], dict[str, Mapping[str, Any]]]
STEPS: dict[str, Step] = {}


def step(stage: str) -> Callable[[Step], Step]:
    def register(fn: Step) -> Step:
        STEPS[stage] = fn
        return fn
    return register


def _images(p: Mapping[str, Any]) -> str:
    from darknet2tflite.paths import images_or_default
    return images_or_default(p.get("images"))


@step("parse")
def _parse(p, done, folder, progress):
    from darknet2tflite.stages.parse import parse_stage
    return {"parse": parse_stage(p["cfg"], p["weights"], folder, p.get("names"),
                                 progress=progress)}


@step("build")
def _build(p, done, folder, progress):
    from darknet2tflite.stages.build import build_stage
    return {"build": build_stage(p["cfg"], p["weights"], folder, p.get("names"),
                                 progress=progress)}


@step("parity")
def _parity(p, done, folder, progress):
    from darknet2tflite.stages.parity import parity_stage
    b = done["build"]
    return {"parity": parity_stage(p["cfg"], p["weights"], artifact(b, "keras"),
                                   artifact(b, "tflite_float32"), artifact(b, "meta"), folder,
                                   images=_images(p), progress=progress)}


@step("probe")
def _probe(p, done, folder, progress):
    from darknet2tflite.options import variant_list
    from darknet2tflite.stages.probe import probe_stage
    from darknet2tflite.targets.requirements import check_met
    arts = probe_stage(p["cfg"], p["weights"], folder, p["target"], _images(p),
                       variant_list(p.get("allow_approximate")) or None, progress)
    check_met(read_json(arts["probe"]), p["target"], bool(p.get("npu_only")))
    return {"probe": arts}


@step("rewrite")
def _rewrite(p, done, folder, progress):
    from darknet2tflite.stages.rewrite import rewrite_stage
    return {"rewrite": rewrite_stage(p["cfg"], p["weights"], p.get("names"),
                                     artifact(done["probe"], "probe"), folder, _images(p),
                                     progress)}


@step("quantize")
def _quantize(p, done, folder, progress):
    """int8, each extra variant, and the swapped calibration fold when there is one."""
    from darknet2tflite.options import variant_list
    from darknet2tflite.stages.quantize import (INT8_OPTIONS, has_cross_fold, plan_run,
                                                quantize_int8_stage, quantize_variant_stage)
    plan = plan_run(p["calibration"], p.get("eval_images"), p.get("eval_annotations"))
    common = {k: p.get(k) for k in ("cfg", "calibration", "calibration_limit", "eval_images",
                                    "eval_annotations")}
    common.update(rewrite=done["rewrite"], plan=plan)
    int8 = dict(common, **{k: p.get(k) for k in INT8_OPTIONS})
    out: dict[str, Mapping[str, Any]] = {}
    jobs = [("quantize", quantize_int8_stage, dict(int8, mode="int8"))]
    jobs += [(f"quantize[{v}]", quantize_variant_stage, dict(common, mode=v))
             for v in variant_list(p.get("variants"))]
    if has_cross_fold(plan, p.get("eval_images"), p.get("eval_annotations")):
        jobs.append(("quantize[fold2]", quantize_int8_stage, dict(int8, mode="int8", fold=2)))
    for name, body, q in jobs:
        sub = folder / name.replace("[", "-").rstrip("]")
        sub.mkdir()
        out[name] = body(q, sub, progress)
    return out


def _variants(done: Done) -> dict[str, dict[str, Any]]:
    return {k[len("quantize["):-1]: v for k, v in done.items()
            if k.startswith("quantize[") and k != "quantize[fold2]"}


@step("evaluate")
def _evaluate(p, done, folder, progress):
    """evaluate, and verify beside it for targets with a tool of their own (as in the flow)."""
    from darknet2tflite.stages.evaluate import evaluate_stage
    from darknet2tflite.targets import verified_targets
    arts = {"evaluate": evaluate_stage(
        {"cfg": p["cfg"], "quantize": done["quantize"], "rewrite": done["rewrite"],
         "variants": _variants(done), "cross": done.get("quantize[fold2]"),
         **{k: p.get(k) for k in ("calibration", "eval_images", "eval_annotations")}},
        folder, progress)}
    if verified_targets(p["target"]):
        from darknet2tflite.stages.verify import verify_stage
        vf = folder / "verify"
        vf.mkdir()
        arts["verify"] = verify_stage({"target": p["target"], "quantize": done["quantize"],
                                       "rewrite": done["rewrite"],
                                       "eval_annotations": p.get("eval_annotations"),
                                       "npu_only": p.get("npu_only")}, vf, progress)
    return arts


@step("report")
def _report(p, done, folder, progress):
    from darknet2tflite.stages.report import report_stage
    return {"report": report_stage(
        {"model": p.get("name") or Path(p["cfg"]).stem, "target": p["target"],
         "verify": done.get("verify"),
         **{k: done[k] for k in ("parse", "parity", "probe", "rewrite", "evaluate")}},
        folder, progress)}


def convert_in_process(params: Mapping[str, Any], progress: Progress = quiet,
                       work: str | Path | None = None) -> dict[str, Any]:
    """Convert as the ``convert`` flow does, with its parameters (options.OPTIONS; ``store``
    and ``from_stage`` are ignored); returns the delivered report.json.

    Every input is checked before any stage runs (a UserError; ``out`` is then untouched).
    The stages write into ``work/<stage>`` (a temp folder removed afterwards by default);
    the deliverables land in ``params["out"]``, all or nothing, like the flow's."""
    from darknet2tflite.options import OPTIONS, check_parameters
    from darknet2tflite.stages.report import deliver_files, deliverable_files

    given = {k: v for k, v in params.items() if k not in ("store", "from_stage")}
    p = check_parameters({**{o.name: o.default for o in OPTIONS if o.default is not None},
                          **given})  # the flow's defaults for what is not given
    with tempfile.TemporaryDirectory(prefix="d2t-stages-") as tmp:
        root = Path(work) if work is not None else Path(tmp)
        done: Done = {}
        for stage in STAGES:
            folder = root / stage
            folder.mkdir(parents=True)
            for name, arts in STEPS[stage](p, done, folder, progress).items():
                done[name] = {"stage": stage, "key": None,
                              "artifacts": {k: str(v) for k, v in arts.items()}}
        deliver_files(p["out"], deliverable_files(done["rewrite"], done["quantize"],
                                                  _variants(done), done["report"],
                                                  done.get("verify")), progress)
    return read_json(Path(p["out"]) / "report.json")
