"""Prefect flow ``convert``: one Darknet model -> calibrated int8 TFLite + report.

DAG (each name a cached stage task, see tasks/)::

    parse ─┬─> build ──> parity ──┐ (float parity must pass before anything is quantized)
           │                      v
           └─> probe ──> rewrite ─┬─> quantize int8 ─┬─> quantize int8 fold 2 ─┐
                                  │                  └─────────────────────────┼─> evaluate ─> report ─> deliver
                                  └─> quantize float16/... ────────────────────┘
        (fold 2: only when evaluation photos are calibration photos; variants: --variants;
         verify, beside evaluate and before report: only for tflm / Ethos-U --target)

(``deliver`` copies the deliverables from the store into ``out``; it is never cached.)

Independent stages are submitted together and run concurrently on the task runner (local
threads by default, Dask on request; see flows/runners.py): build || probe, parity || rewrite,
int8 || the other variants (int8's swapped calibration fold follows int8).  Every stage's
artifacts live in the content-addressed store, so a re-run with identical inputs is all
"Cached", a changed or damaged input recomputes exactly the stages whose inputs changed,
and ``from_stage`` forces one stage and all later ones to recompute while the earlier ones
must come from the store.

Entrypoint: ``flows/convert.py:convert`` (deployments use the module path flows.convert.convert).
"""
from __future__ import annotations

import flows._settings  # noqa: F401  (Prefect env defaults before `import prefect`)

import asyncio
import re
from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import (acreate_markdown_artifact, acreate_table_artifact,
                               create_markdown_artifact, create_table_artifact)
from prefect.runtime import flow_run as runtime_flow_run

from darknet2tflite.int8.augment import MIRROR_BELOW
from darknet2tflite.int8.channel_split import MAC_BUDGET
from darknet2tflite.options import check_parameters, variant_list
from darknet2tflite.store.artifacts import ArtifactStore
from flows.runners import make_task_runner
from tasks._common import STAGES, artifact, read_json, store_root
from darknet2tflite.stages.quantize import has_cross_fold, plan_run


def _run_name() -> str:
    p = runtime_flow_run.parameters
    return f"convert-{p.get('name') or Path(p.get('cfg', 'model')).stem}"


def slug(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def _check_inputs(p: dict[str, Any]) -> None:
    """Same checks as the CLI (darknet2tflite/options.py), for runs triggered from the UI /
    `prefect deployment run`."""
    check_parameters(p)


@flow(name="convert", flow_run_name=_run_name, task_runner=make_task_runner(),
      persist_result=False, validate_parameters=True)
def convert(cfg: str, weights: str, out: str, calibration: str,
            eval_annotations: Optional[str] = None, eval_images: Optional[str] = None,
            names: Optional[str] = None, input_type: Literal["uint8", "int8"] = "uint8",
            calibration_limit: int = 500, float_fallback: int = 0,
            channel_split: float = MAC_BUDGET, equalize: bool = False,
            calibration_mirror: int = MIRROR_BELOW, variants: str = "",
            backend: Literal["direct", "onnx2tf", "both"] = "direct",
            images: Optional[str] = None, store: Optional[str] = None,
            from_stage: Optional[str] = None, target: str = "cpu",
            allow_approximate: str = "", npu_only: bool = False,
            name: Optional[str] = None) -> dict[str, Any]:
    """Convert one Darknet model (cfg + weights) to a calibrated full-integer int8 TFLite
    model plus float32 TFLite, Keras, decode metadata and an evaluation report.

    Paths are read by the process that executes the run: give absolute paths.

    Args:
        cfg: Darknet .cfg file.
        weights: Darknet .weights file matching the cfg.
        out: output folder; receives model.keras, model.float32.tflite, model.int8.tflite,
            model.json, report.json, report.md (written atomically at the end).
        calibration: folder of calibration images (jpg/png/bmp).
        eval_annotations: COCO-format annotations json for AP/AP50 (with eval_images).
        eval_images: folder of evaluation images (with eval_annotations).
        names: class names file, one per line.
        input_type: int8 model input type (uint8: raw pixels, scale 1/255, zero point 0).
        calibration_limit: use at most this many calibration images.
        float_fallback: keep up to N most quantization-sensitive layers in float.
        channel_split: extra MACs (fraction of the model's) allowed for splitting outlier
            channels of early layers before int8 calibration; 0 turns it off.
        equalize: equalize outlier channel ranges into the next layers' weights instead of
            splitting channels (no extra MACs: plain int8 speed; more AP50 lost).
        calibration_mirror: calibration sets of fewer images than this also calibrate on a
            left-right mirrored copy of every image (int8); 0 turns it off.
        variants: comma list of extra variants: float16, dynamic, int16x8.
        backend: int8 backend: direct (TFLiteConverter), onnx2tf, or both (keep the better).
        images: images for the float parity check and probe (default: data/samples).
        store: artifact store folder (default: $DARKNET2TFLITE_STORE, else .store in the
            current folder of the process that runs the flow).
        from_stage: recompute this stage and every later one (parse, build, parity, probe,
            rewrite, quantize, evaluate, report); earlier ones must already be in the store.
        target: comma list of deployment targets: cpu (LiteRT, default), tflm (TensorFlow
            Lite Micro), ethos-u55-256 and every other Vela --accelerator-config. One int8
            model serves them all; each is verified with its own tool (verify stage).
            The probe profiles int8 and float (or a profile .json) are accepted too.
        allow_approximate: comma list of opt-in approximate rewrite rules the probe may use
            to meet a target (e.g. mish_poly for tflm); their deviation is reported.
        npu_only: refuse a model whose operators Vela leaves on the CPU (Ethos-U targets).
        name: label of the run and its UI artifacts (default: the cfg file's stem).
    """
    params = dict(locals())
    from tasks.build import build as build_task
    from tasks.evaluate import evaluate as evaluate_task
    from tasks.parity import parity as parity_task
    from tasks.parse import parse as parse_task
    from tasks.probe import probe as probe_task
    from tasks.quantize import quantize as quantize_task
    from tasks.report import deliver as deliver_task
    from tasks.report import report as report_task
    from tasks.rewrite import rewrite as rewrite_task

    from flows._served import quiet_user_error_tracebacks
    quiet_user_error_tracebacks()  # served runs too: a bad input is its one-line message
    _check_inputs(params)
    logger = get_run_logger()
    model = name or Path(cfg).stem
    store_s = str(store_root(store))
    from flows._served import divert_served_run
    divert_served_run(store_s, "convert", model)
    # temp dirs of producers that were killed (SIGKILL, power cut) in this store; entries
    # being produced right now by live runs are flock-ed and left alone
    for stale in ArtifactStore(store_s).gc_tmp():
        logger.info("store: removed stale temp dir %s", stale.name)
    first = STAGES.index(from_stage) if from_stage else None
    if first is not None:
        logger.info("from_stage=%s: recomputing %s; earlier stages come from the store",
                    from_stage, ", ".join(STAGES[first:]))

    def stage(task: Any, stage_name: str) -> tuple[Any, dict[str, Any]]:
        """The task and its store keywords (refresh from ``from_stage`` on)."""
        i = STAGES.index(stage_name)
        refresh = first is not None and i >= first
        return task, {"store": store_s, "refresh": refresh,
                      "require_cached": first is not None and i < first}

    futures: dict[str, Any] = {}
    t, kw = stage(parse_task, "parse")
    futures["parse"] = t.submit(cfg=cfg, weights=weights, names=names, **kw)
    t, kw = stage(build_task, "build")
    futures["build"] = t.submit(cfg=cfg, weights=weights, names=names,
                                wait_for=[futures["parse"]], **kw)
    t, kw = stage(probe_task, "probe")
    futures["probe"] = t.submit(cfg=cfg, weights=weights, target=target, images=images,
                                allow=variant_list(allow_approximate) or None,
                                wait_for=[futures["parse"]], **kw)
    # rewrite before parity: a worker thread that takes a task waits there for its inputs,
    # so the task queued first gets the first worker that build or probe frees, and the
    # rewrite is the one on the way to quantize
    t, kw = stage(rewrite_task, "rewrite")
    futures["rewrite"] = t.submit(cfg=cfg, weights=weights, probe=futures["probe"], images=images,
                                  names=names, **kw)
    t, kw = stage(parity_task, "parity")
    futures["parity"] = t.submit(cfg=cfg, weights=weights, build=futures["build"],
                                 images=images, **kw)
    # A model that fails float parity is not worth quantizing: join parity first (its
    # exception, a ParityError with the numbers, fails the run here).
    results: dict[str, dict[str, Any]] = {}
    for s in ("parse", "build", "parity", "probe", "rewrite"):
        results[s] = futures[s].result()
        if s == "probe":  # a target the graph cannot meet: one line, before quantizing
            from darknet2tflite.targets.requirements import check_met
            check_met(read_json(artifact(results[s], "probe")), target, npu_only)

    # Joined payloads are passed on as plain dicts; wait_for keeps the dependency edges in
    # the UI's task graph.  int8 and the extra variants convert concurrently.
    t, kw = stage(quantize_task, "quantize")
    plan = plan_run(calibration, eval_images, eval_annotations)  # once per run, for every fold
    qopts = dict(cfg=cfg, rewrite=results["rewrite"], calibration=calibration, plan=plan,
                 calibration_limit=calibration_limit, eval_images=eval_images,
                 eval_annotations=eval_annotations,
                 wait_for=[futures["rewrite"], futures["parity"]], **kw)
    futures["quantize"] = t.submit(mode="int8", input_type=input_type,
                                   float_fallback=float_fallback, channel_split=channel_split,
                                   equalize=equalize, calibration_mirror=calibration_mirror,
                                   backend=backend, **qopts)
    for v in variant_list(variants):
        futures[f"quantize[{v}]"] = t.submit(mode=v, **qopts)
    # evaluation photos that are also calibration photos: the swapped calibration fold, so
    # AP covers every annotated photo, each scored by an int8 model that never saw it.  It
    # runs after the shipped model's conversion, not beside it: a conversion already keeps
    # the cores busy (no wall time gained) and the shipped model's timing stays its own.
    if has_cross_fold(plan, eval_images, eval_annotations):
        fold2 = t.with_options(task_run_name="quantize-int8-fold2")
        futures["quantize[fold2]"] = fold2.submit(
            mode="int8", fold=2, input_type=input_type, channel_split=channel_split,
            equalize=equalize,
            calibration_mirror=calibration_mirror, backend=backend,
            **dict(qopts, wait_for=qopts["wait_for"] + [futures["quantize"]]))
    results["quantize"] = futures["quantize"].result()
    variant_payloads = {}
    for v in variant_list(variants):
        results[f"quantize[{v}]"] = variant_payloads[v] = futures[f"quantize[{v}]"].result()
    if "quantize[fold2]" in futures:
        results["quantize[fold2]"] = futures["quantize[fold2]"].result()

    t, kw = stage(evaluate_task, "evaluate")
    futures["evaluate"] = t.submit(cfg=cfg, quantize=results["quantize"],
                                   rewrite=results["rewrite"], variants=variant_payloads,
                                   cross=results.get("quantize[fold2]"),
                                   calibration=calibration, eval_images=eval_images,
                                   eval_annotations=eval_annotations,
                                   wait_for=[f for k, f in futures.items()
                                             if k.startswith("quantize")], **kw)
    from darknet2tflite.targets import verified_targets
    if verified_targets(target):  # tflm / Ethos-U: their own tools, beside evaluate
        from tasks.verify import verify as verify_task
        t, kw = stage(verify_task, "evaluate")  # --from-stage: verify belongs to evaluate
        futures["verify"] = t.submit(target=target, quantize=results["quantize"],
                                     rewrite=results["rewrite"],
                                     eval_annotations=eval_annotations, npu_only=npu_only,
                                     wait_for=[futures["quantize"]], **kw)
    results["evaluate"] = futures["evaluate"].result()
    if "verify" in futures:
        results["verify"] = futures["verify"].result()

    t, kw = stage(report_task, "report")
    futures["report"] = t.submit(model=model, parse=results["parse"], parity=results["parity"],
                                 probe=results["probe"], rewrite=results["rewrite"],
                                 evaluate=results["evaluate"], target=target,
                                 verify=results.get("verify"),
                                 wait_for=[futures[k] for k in ("parse", "parity", "probe",
                                                                "rewrite", "evaluate")
                                           + (("verify",) if "verify" in futures else ())],
                                 **kw)
    results["report"] = futures["report"].result()

    deliver = deliver_task.submit(out=out, rewrite=results["rewrite"],
                                  quantize=results["quantize"], variants=variant_payloads,
                                  report=results["report"], verify=results.get("verify"),
                                  wait_for=[futures["report"]])
    stages = {s: {"state": futures[s].state.name, "key": results[s]["key"],
                  "artifacts": results[s]["artifacts"]} for s in results}
    publish_artifacts(model, stages, out)  # the UI artifacts, while deliver copies the files
    deliverables = deliver.result()
    logger.info("report: %s", Path(out) / "report.md")
    return {"model": model, "out": str(Path(out)), "deliverables": deliverables,
            "report": str(Path(out) / "report.md"), "stages": stages,
            "flow_run_id": str(runtime_flow_run.id)}


# ------------------------------------------------------------------------------------------
# Prefect UI artifacts (published by every run, cached or not, from the stage artifacts)


def _fmt(x: Any, spec: str = ".3g") -> Any:
    return format(x, spec) if isinstance(x, float) else x


def publish_artifacts(model: str, stages: dict[str, dict[str, Any]], out: str) -> None:
    """Publish the run's UI artifacts (all of them concurrently: one by one, their API round
    trips were a tenth of a fully cached run)."""
    key = slug(model)
    pending: list[tuple[str, dict[str, Any]]] = []

    def table_artifact(**kw: Any) -> None:
        pending.append(("table", kw))

    def markdown_artifact(**kw: Any) -> None:
        pending.append(("markdown", kw))

    table_artifact(
        key=f"{key}-stages",
        table=[{"stage": n, "state": s["state"], "store key": s["key"][:16]}
               for n, s in stages.items()],
        description=f"{model}: pipeline stages ('Cached' = taken from the artifact store)")

    parity = read_json(artifact(stages["parity"], "parity"))
    if parity:
        if parity.get("status") == "skipped":
            markdown_artifact(key=f"{key}-parity",
                                     markdown=f"**Parity skipped:** {parity.get('reason')}",
                                     description=f"{model}: float parity vs OpenCV DNN")
        else:
            rows = [{"model": kind, "head": r["head"], "shape": "x".join(map(str, r["shape"])),
                     "max_abs": _fmt(r["max_abs"]), "max_rel": _fmt(r["max_rel"])}
                    for kind in ("keras", "tflite_float32") for r in parity.get(kind, [])]
            table_artifact(
                key=f"{key}-parity", table=rows,
                description=f"{model}: float parity vs {parity.get('reference')} — "
                            f"{parity.get('status')} (worst rel {_fmt(parity.get('max_rel'))}, "
                            f"tolerance {parity.get('tolerance')})")

    probe = read_json(artifact(stages["probe"], "probe"))
    if probe:
        before = {r["index"]: r for r in probe["before"]["rows"]}
        rows = [{"layer": r["index"], "section": r["section"], "activation": r["activation"],
                 "before": before.get(r["index"], {}).get("status"), "after": r["status"],
                 "rules": ", ".join(r["rules"]) or "-",
                 "ops": ", ".join(dict.fromkeys(
                     op for t in r["targets"].values() for op in t["ops"])) or "-"}
                for r in probe["after"]["rows"]]
        table_artifact(key=f"{key}-probe", table=rows,
                              description=f"{model}: TFLite op probe for {probe['target']}")

    rewrites = read_json(artifact(stages["rewrite"], "rewrites")) or []
    md = [f"### Rewrites applied to {model}", ""]
    md += [f"- **{r['name']}** ({'exact' if r.get('exact') else 'approximate'}) on layers "
           f"{', '.join(map(str, r.get('applied_layers') or r.get('layers') or []))}: "
           f"{r.get('description', '')}"
           + (f" (float deviation max_rel {_fmt(r['max_rel'])})"
              if r.get("max_rel") is not None else "") for r in rewrites] or ["None needed."]
    markdown_artifact(key=f"{key}-rewrites", markdown="\n".join(md),
                             description=f"{model}: op rewrites")

    from darknet2tflite.stages.evaluate import evaluation_rows
    rows = evaluation_rows(read_json(artifact(stages["evaluate"], "report_json")))
    if rows:
        table_artifact(key=f"{key}-int8-evaluation", table=rows,
                              description=f"{model}: int8 evaluation")

    from darknet2tflite.targets.report import rows as deployment_rows
    report = read_json(artifact(stages["report"], "report_json")) or {}
    if report.get("deployment"):
        table_artifact(key=f"{key}-deployment", table=deployment_rows(report["deployment"]),
                       description=f"{model}: deployment targets, each checked by its own "
                                   "tool, accuracy with the target's arithmetic")

    report_md = artifact(stages["report"], "report_md")
    if report_md:
        from darknet2tflite.evaluation.ui_markdown import inline_images
        markdown_artifact(key=f"{key}-report",
                                 markdown=inline_images(Path(report_md).read_text(
                                     encoding="utf-8"), Path(report_md).parent),
                                 description=f"{model}: report (copied to {out}/report.md)")
    _publish(pending)


def _publish(pending: list[tuple[str, dict[str, Any]]]) -> None:
    async def all_of_them() -> None:
        make = {"table": acreate_table_artifact, "markdown": acreate_markdown_artifact}
        await asyncio.gather(*(make[kind](**kw) for kind, kw in pending))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(all_of_them())  # the usual case: a sync flow has no running loop
        return
    for kind, kw in pending:  # called from async code: stay on its loop, one by one
        (create_table_artifact if kind == "table" else create_markdown_artifact)(**kw)
