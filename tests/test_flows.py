"""The Prefect DAG (flows/, tasks/) against a real Prefect server (prefect_test_harness).

One session-scoped harness (its own SQLite DB) and one session artifact store in a temp dir;
PREFECT_HOME is a temp dir too, so nothing is read from or written to ~/.prefect or the repo.
Tests share the store on purpose and run in file order: the first test converts yolov4-tiny
once (~45 s), the later ones prove what is and is not recomputed against that store.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# (Prefect's home is a per-session temp dir: tests/conftest.py)

import flows  # noqa: E402,F401  (Prefect env defaults)

from conftest import CFG_DIR, REPO, shared_path  # noqa: E402

STAGES = ("parse", "build", "parity", "probe", "rewrite", "quantize", "evaluate", "report")
DELIVERABLES = {"model.keras", "model.float32.tflite", "model.int8.tflite", "model.json",
                "report.json", "report.md"}


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flows")


@pytest.fixture(scope="session")
def store(work) -> Path:
    return work / "store"


@pytest.fixture(scope="session")
def coco_split(work) -> tuple[Path, Path, Path]:
    """8 COCO photos to calibrate on, 8 others (+ their annotations) to evaluate on."""
    coco = shared_path("images", "coco")
    photos = sorted(coco.glob("*.jpg"))
    calib, ev = work / "calib", work / "eval"
    for folder, chosen in ((calib, photos[:8]), (ev, photos[8:16])):
        folder.mkdir()
        for p in chosen:
            shutil.copyfile(p, folder / p.name)
    return calib, ev, coco / "instances.json"


@pytest.fixture(scope="session")
def base_params(yolov4_tiny, coco_split, store, work) -> dict:
    cfg, weights = yolov4_tiny
    calib, ev, ann = coco_split
    return dict(cfg=str(cfg), weights=str(weights), out=str(work / "out-v4t"),
                calibration=str(calib), eval_images=str(ev), eval_annotations=str(ann),
                names=str(CFG_DIR / "coco.names"), calibration_limit=8, variants="float16",
                store=str(store))


def run_convert(params: dict, **options):
    from flows.convert import convert
    flow = convert.with_options(**options) if options else convert
    return flow(**params, return_state=True)


def produced() -> list[tuple[str, str]]:
    from tasks._common import PRODUCED
    return list(PRODUCED)


def states(result: dict) -> dict[str, str]:
    return {k: v["state"] for k, v in result["stages"].items()}


def store_files(store: Path) -> dict[str, int]:
    """Every file of every stage entry -> mtime_ns (Prefect records and locks excluded)."""
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*")
            if p.is_file() and p.relative_to(store).parts[0] not in
            (".locks", ".tmp", "prefect-results")}


def entry_file(result: dict, stage: str, artifact: str) -> Path:
    return Path(result["stages"][stage]["artifacts"][artifact])


@pytest.fixture(scope="session")
def first_run(prefect_server, base_params):
    state = run_convert(base_params)
    assert state.is_completed(), state.message
    return state.result()


# ------------------------------------------------------------------------------ tests

@pytest.mark.slow
def test_first_conversion_runs_every_stage_and_delivers(first_run, base_params, store):
    assert set(states(first_run)) == set(STAGES) | {"quantize[float16]"}
    assert set(states(first_run).values()) == {"Completed"}
    out = Path(base_params["out"])
    assert DELIVERABLES | {"model.float16.tflite"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["conversion"]["integer_check"]["full_integer"] is True
    assert set(report["evaluation"]["ap"]) == {"float32", "int8", "float16"}
    assert report["pipeline"]["parity"]["status"] == "pass"
    assert [r["name"] for r in report["pipeline"]["rewrites"]] == ["route_groups", "head_split"]
    # the exact rule's float deviation is measured on real images in the rewrite stage
    assert report["pipeline"]["rewrites"][0]["max_rel"] == 0.0
    md = (out / "report.md").read_text()
    assert "## Pipeline" in md and "report_images/" in md
    for rel in report["evaluation"]["drawn"]:
        assert (out / rel).is_file()
    # quantize.json names its sibling files, never the temp/store folder it was written in
    qpaths = json.loads((out / "quantize.json").read_text())["paths"]
    assert qpaths and all("/" not in v and (out / v).is_file() for v in qpaths.values())
    # every artifact path handed between tasks is a string inside the store
    for s in first_run["stages"].values():
        assert all(isinstance(p, str) and p.startswith(str(store)) for p in s["artifacts"].values())
    # Prefect persists nothing: the store holds only verified stage entries
    assert not (store / "prefect-results").exists()


@pytest.mark.slow
def test_identical_rerun_is_all_cached_and_computes_nothing(first_run, base_params, store):
    before_files, before_produced = store_files(store), produced()
    out_int8 = Path(base_params["out"]) / "model.int8.tflite"
    out_int8.unlink()  # the deliverable copy is not a cache: it is always rewritten
    state = run_convert(base_params)
    assert state.is_completed()
    result = state.result()
    assert set(states(result).values()) == {"Cached"}, states(result)
    assert produced() == before_produced  # no stage function (no TF conversion) ran
    assert store_files(store) == before_files  # no store file rewritten or added
    assert out_int8.is_file()
    assert {k: s["key"] for k, s in result["stages"].items()} == \
        {k: s["key"] for k, s in first_run["stages"].items()}


class _PlantedCode:
    """Unpickling this touches ``marker``: proof that a record's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant_pickle_records(folder: Path, names: list[str], marker: Path) -> None:
    """Prefect result records, as Prefect itself writes them, whose serializer is pickle."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        record = ResultRecord(result=_PlantedCode(marker), metadata=ResultRecordMetadata(
            storage_key=str(folder / name), serializer=PickleSerializer()))
        (folder / name).write_bytes(record.serialize())


@pytest.mark.slow
def test_planted_code_bearing_records_are_never_executed(first_run, base_params, store,
                                                          tmp_path):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    marker = tmp_path / "planted-code-ran"
    # a record under every name a cache lookup could try, in the store and in Prefect's
    # own local result storage
    names = [f"{k.split('[')[0]}-{s['key']}" for k, s in first_run["stages"].items()]
    names += [s["key"] for s in first_run["stages"].values()]
    _plant_pickle_records(store / "prefect-results", names, marker)
    _plant_pickle_records(Path(PREFECT_LOCAL_STORAGE_PATH.value()), names, marker)
    from prefect.serializers import PickleSerializer  # the planted payload really is live
    PickleSerializer().loads(PickleSerializer().dumps(_PlantedCode(marker)))
    assert marker.exists()
    marker.unlink()

    n = len(produced())
    state = run_convert(base_params)
    assert state.is_completed(), state.message
    assert set(states(state.result()).values()) == {"Cached"}  # answered by the store
    assert len(produced()) == n
    assert not marker.exists()
    shutil.rmtree(store / "prefect-results")


@pytest.mark.slow
def test_moved_store_is_reused_and_never_hands_out_stale_paths(first_run, base_params, store):
    moved = store.with_name("store-moved")
    os.rename(store, moved)
    try:
        n = len(produced())
        result = run_convert(dict(base_params, store=str(moved))).result()
        assert set(states(result).values()) == {"Cached"}
        assert len(produced()) == n
        for s in result["stages"].values():
            assert all(p.startswith(str(moved) + os.sep) and Path(p).is_file()
                       for p in s["artifacts"].values())
    finally:
        os.rename(moved, store)


@pytest.mark.slow
def test_corrupt_artifact_recomputes_only_that_stage_and_changed_dependants(
        first_run, base_params, store):
    # 1. corrupt the parity report inside its store entry
    parity = entry_file(first_run, "parity", "parity")
    good = parity.read_bytes()
    parity.write_bytes(good.replace(b'"pass"', b'"fail"'))
    n = len(produced())
    result = run_convert(base_params).result()
    assert states(result)["parity"] == "Completed"
    assert [s for s, _ in produced()[n:]] == ["parity"] + (
        [] if parity.read_bytes() == good else ["report"])
    assert parity.read_bytes() == good  # recomputed, same numbers
    assert all(v == "Cached" for k, v in states(result).items() if k != "parity")

    # 2. delete the int8 model: quantize reruns; evaluate/report rerun only if it changed
    qarts = first_run["stages"]["quantize"]["artifacts"]
    old = {k: Path(v).read_bytes() for k, v in qarts.items()}
    Path(qarts["tflite_int8"]).unlink()
    n = len(produced())
    result = run_convert(base_params).result()
    st = states(result)
    assert st["quantize"] == "Completed"
    for s in ("parse", "build", "parity", "probe", "rewrite", "quantize[float16]"):
        assert st[s] == "Cached", (s, st)
    # evaluate's inputs: the int8 model, model.json, quantize.json (timings), plan.json
    changed = any(Path(v).read_bytes() != old[k]
                  for k, v in result["stages"]["quantize"]["artifacts"].items())
    expect = ["quantize"] + (["evaluate", "report"] if changed else [])
    assert [s for s, _ in produced()[n:]] == expect
    assert st["evaluate"] == ("Completed" if changed else "Cached")


@pytest.mark.slow
def test_failed_run_fixed_then_retried_with_prefect_flow_run_retry(
        first_run, base_params, store, work, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    bad = work / "calib-bad"
    bad.mkdir()
    for name in ("a.jpg", "b.png"):
        (bad / name).write_bytes(b"\xff\xd8 not really an image " * 40)
    params = dict(base_params, calibration=str(bad), out=str(work / "out-retry"))
    state = run_convert(params)
    assert state.is_failed()
    assert "could be read as an image" in state.message and str(bad) in state.message
    assert not Path(params["out"]).exists()  # nothing delivered by a failed run
    flow_run_id = state.state_details.flow_run_id

    # fix the input: one valid photo next to the corrupt files (those are skipped)
    shutil.copyfile(REPO / "data" / "samples" / "dog.jpg", bad / "dog.jpg")
    earlier = {s: first_run["stages"][s]["key"] for s in ("parse", "build", "parity", "probe",
                                                          "rewrite")}
    mtimes = {s: store_files(store / s) for s in earlier}

    # retry THE SAME flow run exactly as a user would (no deployment: --entrypoint)
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "retry", str(flow_run_id),
         "--entrypoint", "flows/convert.py:convert"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(flow_run_id)
        assert fr.state.is_completed() and fr.run_count == 2
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # task run names: "<stage>-<random>" ("quantize-<mode>" for quantize)
    attempt2 = {tr.name: tr.state.name for tr in runs if tr.flow_run_run_count == 2}
    for s in earlier:
        assert [v for k, v in attempt2.items() if k.startswith(f"{s}-")] == ["Cached"], attempt2
        assert store_files(store / s) == mtimes[s]  # earlier stages not recomputed
    assert attempt2["quantize-int8"] == "Completed"
    assert (Path(params["out"]) / "model.int8.tflite").is_file()
    report = json.loads((Path(params["out"]) / "report.json").read_text())
    assert report["conversion"]["calibration_images"] == 1
    assert len(report["conversion"]["calibration"]["skipped"]) == 2


@pytest.mark.slow
def test_from_stage_recomputes_that_stage_and_later_ones(first_run, base_params, capsys):
    from cli.main import main

    p = base_params
    argv = ["convert", p["cfg"], p["weights"], "--out", p["out"], "--calibration",
            p["calibration"], "--eval-images", p["eval_images"], "--eval-annotations",
            p["eval_annotations"], "--names", p["names"], "--calibration-limit", "8",
            "--variants", "float16", "--store", p["store"], "--from-stage", "evaluate"]
    n = len(produced())
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"report: {Path(p['out']) / 'report.md'}" in out
    assert [s for s, _ in produced()[n:]] == ["evaluate", "report"]
    lines = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()
             if ln.startswith("  ") and len(ln.split()) == 2}
    assert lines["evaluate"] == lines["report"] == "Completed"
    assert all(lines[s] == "Cached" for s in ("parse", "build", "parity", "probe", "rewrite",
                                               "quantize", "quantize[float16]"))


@pytest.mark.slow
def test_evaluation_photos_among_calibration_photos_add_the_swapped_fold(
        first_run, base_params, work):
    """Evaluating on the calibration folder itself: the shipped model is calibrated without
    one half and scored on it, the fold-2 model without the other half, and the targets are
    judged on AP over all annotated photos (no int8 model scores its own
    calibration photos)."""
    calib = base_params["calibration"]
    # own run name: its UI artifacts must not become the latest "yolov4-tiny-*" versions
    params = dict(base_params, eval_images=calib, variants="", out=str(work / "out-cross"),
                  name="v4t-cross")
    result = run_convert(params).result()
    st = states(result)
    assert st["quantize[fold2]"] == "Completed" and st["quantize"] == "Completed"
    plan1 = json.loads(entry_file(result, "quantize", "plan").read_text())
    plan2 = json.loads(entry_file(result, "quantize[fold2]", "plan").read_text())
    photos = {p.name for p in Path(calib).glob("*.jpg")}
    held1, held2 = ({Path(x).name for x in pl["eval"]} for pl in (plan1, plan2))
    assert held1 and held2 and not held1 & held2 and held1 | held2 == photos
    assert {Path(x).name for x in plan2["exclude"]} == held2  # never calibrated on its photos
    assert plan1["calibration"]["images"] == len(photos) - len(held1)
    assert plan2["calibration"]["images"] == len(photos) - len(held2)
    # the per-layer debugger table is the shipped model's, made by the evaluate stage from
    # the calibrated model quantize kept for it; the swapped fold keeps nothing for it
    q1, q2 = (json.loads(entry_file(result, s, "quantize").read_text())
              for s in ("quantize", "quantize[fold2]"))
    assert q1["debugger"]["n_images"] == min(8, plan1["calibration"]["images"])
    assert not q2["debugger"] and not q2["layer_errors"]
    assert entry_file(result, "quantize", "tflite_calibrated").is_file()
    assert "tflite_calibrated" not in result["stages"]["quantize[fold2]"]["artifacts"]
    report = json.loads((Path(params["out"]) / "report.json").read_text())
    assert report["worst_layers"] and all(isinstance(w["layer"], int)
                                          for w in report["worst_layers"][:5])
    cross = report["evaluation"]["ap_cross"]
    assert (cross["folds"], cross["images"]) == (2, len(photos))
    assert report["evaluation"]["ap"]["int8"]["images"] == len(held1)
    assert any("cross-calibrated, 8 images" in t["name"] for t in report["targets"])
    assert "Cross-calibrated (2 folds" in (Path(params["out"]) / "report.md").read_text()
    # the fold is a cached stage like the others
    again = run_convert(params).result()
    assert set(states(again).values()) == {"Cached"}, states(again)


def test_from_stage_without_a_previous_conversion_is_a_user_error(
        yolov3_tiny, coco_split, work):
    from conftest import clean_env

    cfg, weights = yolov3_tiny
    calib, _, _ = coco_split
    argv = ["convert", str(cfg), str(weights), "--out", str(work / "never"),
            "--calibration", str(calib), "--store", str(work / "empty-store"),
            "--from-stage", "quantize"]
    r = subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=REPO, timeout=600,
                       capture_output=True, text=True, env=clean_env(work / "prefect-home"))
    assert r.returncode == 2, r.stderr
    assert "no stored result" in r.stderr and "Traceback" not in r.stderr
    assert not (work / "never").exists()


@pytest.mark.slow
def test_batch_of_three_with_one_broken_model(first_run, base_params, work, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.batch import batch

    models = work / "models"
    models.mkdir()
    v4_cfg, v4_w = Path(base_params["cfg"]), Path(base_params["weights"])
    shutil.copyfile(v4_cfg, models / "v4t.cfg")
    os.symlink(v4_w, models / "v4t.weights")
    shutil.copyfile(CFG_DIR / "yolov3-tiny.cfg", models / "v3t.cfg")
    os.symlink(shared_path("darknet", "weights", "yolov3-tiny.weights"), models / "v3t.weights")
    shutil.copyfile(v4_cfg, models / "broken.cfg")
    (models / "broken.weights").write_bytes(v4_w.read_bytes()[:1_000_000])  # truncated copy

    out = work / "batch-out"
    state = batch(source=str(models), out=str(out), calibration=base_params["calibration"],
                  eval_images=base_params["eval_images"],
                  eval_annotations=base_params["eval_annotations"],
                  names=base_params["names"], calibration_limit=8,
                  variants=base_params["variants"], store=base_params["store"],
                  return_state=True)
    assert state.is_failed() and "1/3 model(s) failed: broken" in state.message
    summary = state.result(raise_on_failure=False)
    rows = {r["model"]: r for r in summary["models"]}
    assert (summary["completed"], summary["failed"]) == (2, 1)
    assert rows["broken"]["state"] == "Failed"
    assert "broken.weights" in rows["broken"]["error"] and "file ended" in rows["broken"]["error"]
    for m in ("v4t", "v3t"):
        assert rows[m]["state"] == "Completed" and not rows[m]["error"]
        assert (out / m / "model.int8.tflite").is_file()
    # v4t is yolov4-tiny under another name: content-addressed, so every stage but the
    # report (which carries the run's model name) came from the store
    assert rows["v4t"]["cached stages"] == "8/9"
    assert rows["v3t"]["cached stages"] == "0/9"

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["batch-summary"])))
    table = json.loads(arts[0].data) if isinstance(arts[0].data, str) else arts[0].data
    assert {r["model"]: r["state"] for r in table} == \
        {"broken": "Failed", "v3t": "Completed", "v4t": "Completed"}


@pytest.mark.slow
def test_run_publishes_ui_artifacts(first_run, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = [f"yolov4-tiny-{k}" for k in ("stages", "parity", "probe", "rewrites",
                                          "int8-evaluation", "report")]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=keys)))
    by_key = {a.key: a for a in arts}
    assert set(by_key) == set(keys)
    assert by_key["yolov4-tiny-parity"].type == "table"
    assert by_key["yolov4-tiny-rewrites"].type == "markdown"
    assert "route_groups" in by_key["yolov4-tiny-rewrites"].data
    ev = by_key["yolov4-tiny-int8-evaluation"].data
    ev = json.loads(ev) if isinstance(ev, str) else ev
    assert {r["model"] for r in ev} == {"float32", "int8", "float16"}


def test_deployments_are_registered_with_their_schedule(prefect_server, work):
    from prefect.client.orchestration import get_client

    from cli.main import build_parser
    from flows.deployments import build_deployments

    deps = build_deployments(batch_parameters={"source": str(work), "out": str(work / "o")},
                             cron="30 2 * * 1", timezone="Europe/Paris")
    for d in deps:
        d.apply()
    with get_client(sync_client=True) as client:
        conv = client.read_deployment_by_name("convert/convert")
        bat = client.read_deployment_by_name("batch/batch")
    assert conv.entrypoint == "flows.convert.convert" and conv.schedules == []
    (sched,) = bat.schedules
    assert sched.active and sched.schedule.cron == "30 2 * * 1"
    assert sched.schedule.timezone == "Europe/Paris"
    assert bat.parameters == {"source": str(work), "out": str(work / "o")}
    # every `darknet2tflite convert` option is a deployment parameter (UI form field)
    sub = build_parser()._subparsers._group_actions[0].choices["convert"]
    # (but where stages run is the serving process's choice, `serve --task-runner`)
    cli_opts = {a.dest for a in sub._actions if a.dest not in ("help", "task_runner")}
    assert cli_opts <= set(conv.parameter_openapi_schema["properties"])

    # without a batch source the schedule is registered but not active
    for d in build_deployments():
        d.apply()
    with get_client(sync_client=True) as client:
        (sched,) = client.read_deployment_by_name("batch/batch").schedules
    assert sched.schedule.cron == "0 3 * * *" and not sched.active


def test_serve_subcommand_is_registered_and_needs_a_server(capsys):
    from cli.main import main

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--batch-source" in capsys.readouterr().out
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["serve"]) == 2
    assert "prefect server start" in capsys.readouterr().err


@pytest.mark.slow
def test_dask_task_runner_runs_the_same_cached_dag(first_run, base_params, store):
    """Same DAG on Dask worker processes: nothing is recomputed. The proof is the store
    (no entry rewritten); the state names are checked too, but a task whose Prefect cache
    record was not visible to the worker may report its store hit as plain Completed."""
    from flows.runners import make_task_runner

    before = store_files(store)
    state = run_convert(base_params, task_runner=make_task_runner("dask"))
    assert state.is_completed(), state.message
    assert store_files(store) == before
    names = states(state.result())
    assert set(names.values()) <= {"Cached", "Completed"}, names
    assert list(names.values()).count("Cached") >= len(names) - 1, names


def test_prefect_settings_embedded_default_and_server_mode(tmp_path):
    from flows import _settings

    env: dict[str, str] = {"HOME": str(tmp_path)}
    assert _settings.apply(env) == "ephemeral"
    assert env["PREFECT_HOME"] == str(REPO / ".prefect")
    assert int(env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 60
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"

    env = {"PREFECT_API_URL": "http://10.0.0.5:4200/api"}
    assert _settings.apply(env) == "server" and "PREFECT_HOME" not in env

    home = tmp_path / "userhome"  # a URL configured only in the user's active profile
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "work"\n[profiles.work]\nPREFECT_API_URL = "http://prefect:4200/api"\n')
    env = {"PREFECT_HOME": str(home)}
    assert _settings.apply(env) == "server" and env["PREFECT_HOME"] == str(home)
    assert "PREFECT_SERVER_EPHEMERAL_ENABLED" not in env


def test_batch_sources_folder_pairs_and_yaml_manifest(tmp_path):
    from flows.batch import discover_models

    (tmp_path / "a.cfg").write_text("[net]\n")
    (tmp_path / "a.weights").write_bytes(b"")
    (tmp_path / "a.names").write_text("x\n")
    (tmp_path / "lonely.cfg").write_text("[net]\n")
    found = {m["name"]: m for m in discover_models(tmp_path, {"calibration": "/c"})}
    assert found["a"]["params"] == {"calibration": "/c", "cfg": str(tmp_path / "a.cfg"),
                                    "weights": str(tmp_path / "a.weights"),
                                    "names": str(tmp_path / "a.names")}
    assert "no lonely.weights" in found["lonely"]["error"]

    man = tmp_path / "sub" / "models.yaml"
    man.parent.mkdir()
    man.write_text(
        "defaults: {calibration: calib, calibration_limit: 50}\n"
        "models:\n"
        "  - {name: one, cfg: ../a.cfg, weights: ../a.weights, variants: float16}\n"
        "  - {cfg: /abs/two.cfg, weights: /abs/two.weights, calibration: /other}\n"
        "  - {name: one, cfg: x.cfg, weights: x.weights}\n"
        "  - {name: bad, cfg: x.cfg, colour: red}\n")
    found = discover_models(man, {"input_type": "uint8"})
    assert [m["name"] for m in found] == ["one", "two", "one", "bad"]
    assert found[0]["params"] == {
        "input_type": "uint8", "calibration": str(man.parent / "calib"),
        "calibration_limit": 50, "cfg": str(tmp_path / "a.cfg"),
        "weights": str(tmp_path / "a.weights"), "variants": "float16"}
    assert found[1]["params"]["calibration"] == "/other"
    assert "duplicate model name" in found[2]["error"]
    assert "unknown keys colour" in found[3]["error"] and "missing weights" in found[3]["error"]
    with pytest.raises(ValueError, match="not valid YAML"):
        (tmp_path / "broken.yaml").write_text("models: [\n")
        discover_models(tmp_path / "broken.yaml", {})


def test_cli_stage_list_matches_the_flow():
    from cli import convert as convert_cli
    from tasks._common import STAGES as TASK_STAGES

    assert convert_cli.STAGES == TASK_STAGES == STAGES


@pytest.mark.parametrize("option, value, message", [
    ("channel_split", 2.0, "channel_split 2.0: expected a fraction"),
    ("calibration_mirror", -1, "calibration_mirror -1: must be >= 0"),
    ("variants", "float16,int4", "variants float16,int4: unknown int4")])
def test_ui_run_with_a_bad_option_fails_before_any_stage(prefect_server, base_params, work,
                                                         option, value, message):
    """A run triggered from the UI never passes the CLI's checks: the flow makes the same
    ones (darknet2tflite/options.py) before the first stage, and nothing is written."""
    params = dict(base_params, out=str(work / f"bad-{option}"),
                  store=str(work / f"bad-store-{option}"), **{option: value})
    state = run_convert(params)
    assert state.is_failed()
    with pytest.raises(Exception, match=message):
        state.result()
    assert not Path(params["out"]).exists() and not Path(params["store"]).exists()
