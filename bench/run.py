"""Cost of every pipeline stage, cold vs cached, and of the int8 model.

Usage::

    .venv/bin/python bench/run.py [--models yolov4-tiny,yolov3-tiny,yolov4,yolov4-csp]
                                  [--json OUT.json] [--peers shipped,plain,onnx2tf,equalize]
                                  [--photos N]   # quick: N photos, no AP (the tests use it)

For each model, every measurement runs in its own child process (this script re-executed as
``bench/run.py _child ...``), so no run inherits imports, caches or memory from another:

1. **cold**: the Prefect flow ``flows/convert.py:convert`` on a fresh temporary artifact store
   (ephemeral Prefect, project-local ``PREFECT_HOME``, exactly like ``darknet2tflite convert``).
   ``cold_s`` is the child's wall time from spawn to exit (Python start, imports, the embedded
   server, the flow); ``cold_flow_s`` only the ``convert(...)`` call.  Inside the child each
   stage's task body is timed (``stages[S].flow_s``) and the process RSS is sampled with psutil
   every 50 ms and attributed to the stage(s) running at that moment (``flow_peak_rss_mb``).
2. **cached**: the same flow, same store, a second time: ``cached_s`` (every stage must say
   ``Cached``; the states are recorded).
3. **quantize rerun**: ``from_stage="quantize"`` on the same store: ``quantize_rerun_s``; the
   states of parse/build/parity/probe/rewrite (must be ``Cached``) and the stage bodies that
   actually produced something in that process (``tasks._common.PRODUCED``) are recorded.
4. **isolated stages**: each stage's task function (``tasks.<stage>.<stage>.fn``, i.e. the
   library stage plus the store publish, without Prefect) in its own child process on a
   fresh store, fed the artifacts of the runs above: ``stages[S].cold_s`` is the stage call's
   wall time and ``stages[S].peak_rss_mb`` the child's peak RSS from the kernel
   (``os.wait4`` rusage ``ru_maxrss``; includes the interpreter, Prefect and TensorFlow
   imports, reported separately as ``base_rss_mb``).  quantize is not isolated by default:
   its figures come from the quantize rerun, where it is the first stage computed in a fresh
   process.  Other stages not isolated (yolov4 but its probe, by default: isolation would
   repeat a ~10 min conversion) report the in-flow figures instead; ``method`` says which.
5. **latency**: ``model.float32.tflite`` and ``model.int8.tflite`` in LiteRT with XNNPACK at 1
   and 2 threads: median of ``--latency-runs`` invokes after 3 warm-up runs (fewer runs when
   one invoke is slow, see ``--latency-budget``), and file sizes (MiB).
6. **peers** (``--peers``, bench/peers.py): the cold run's model.int8.tflite next to a plain
   TFLiteConverter int8 and the onnx2tf backend's int8 of the same cfg + weights, each
   converted in its own child process on the same calibration photos, scored (AP / AP50) on
   the same held-out photos by the evaluate stage's own code, and timed interleaved in one
   latency child: ``models.<model>.peers.<name>``.
7. **deployment targets** (``--deploy-targets``, default tflm,ethos-u55-256; off with
   ``--photos`` unless given): the flow once more on the same store with ``target=`` that
   list: the probe with the targets' own tools (vs the cpu probe of the cold run), and the
   verify stage per target (TFLite Micro run + arena search, Vela compile, reference-kernel
   accuracy), from the verify stage's own timings.
8. **orchestration** (all models done): a fully cached run in the CLI's default mode (the
   embedded server, reported as "ephemeral"), in Prefect's own ephemeral mode
   (``DARKNET2TFLITE_EMBEDDED_SERVER=0``) and against an already running ``prefect server
   start`` (temporary ``PREFECT_HOME``, free port), runs interleaved; the server is stopped
   afterwards.

Figures are printed and saved (JSON written atomically, also after each model), never
asserted: the exit status is 0 even when a target is missed or a run failed (the failure is
recorded in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import peers

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PYTHON = sys.executable
STAGES = ("parse", "build", "parity", "probe", "rewrite", "quantize", "evaluate", "report")
EARLY = STAGES[:5]
DEPLOY_TARGETS = "tflm,ethos-u55-256"
MIB = 2 ** 20

COCO = SHARED / "images" / "coco"
NAMES = REPO / "cfg" / "coco.names"

#: model -> how it is benchmarked.  ``weights=None``: deterministic generated weights
#: (weights.random_weights(seed=0) -> write_weights in the temp dir).  ``calibration``:
#: "coco" = the shared COCO photos, calibrated on one half, evaluated (AP) on the other half;
#: an int N = a temp folder with the first N COCO photos (sorted), no annotations (generated
#: weights detect nothing), the pipeline holds one of them out for evaluation.
#: ``peers``: which of peers.PEERS the model is measured against (default all; the big
#: generated-weights models only against the plain conversion: no AP to compare, and the
#: onnx2tf route would add many minutes).
#: stages re-run alone in a child process by default; quantize is measured in the quantize
#: rerun instead (it runs first in a fresh process there), which saves repeating it.
ISOLATE = ("parse", "build", "parity", "probe", "rewrite", "evaluate", "report")

MODELS: dict[str, dict[str, Any]] = {
    "yolov4-tiny": {"cfg": REPO / "cfg" / "yolov4-tiny.cfg",
                    "weights": SHARED / "darknet" / "weights" / "yolov4-tiny.weights",
                    "calibration": "coco", "calibration_limit": 100, "isolate": ISOLATE},
    "yolov3-tiny": {"cfg": REPO / "cfg" / "yolov3-tiny.mask123.cfg",
                    "weights": SHARED / "darknet" / "weights" / "yolov3-tiny.weights",
                    "calibration": "coco", "calibration_limit": 100, "isolate": ISOLATE},
    # 608x608, 162 layers, 64 M parameters: int8 calibration costs ~17 s per image on 2
    # cores, so 2 calibration images and 1 evaluation image; only the probe is re-run
    # isolated (for a like-for-like probe-vs-layers comparison with yolov4-tiny).
    "yolov4": {"cfg": REPO / "cfg" / "yolov4.cfg", "weights": None,
               "calibration": 3, "calibration_limit": 2, "isolate": ("probe",),
               "peers": ("shipped", "plain")},
    # Scaled-YOLOv4 size (512x512 letterbox, 175 layers, mish, new_coords heads): the same
    # small calibration as yolov4, for the per-stage time and peak memory of a big model
    # ``head_gain``: its generated weights give head logits of ~1e3-2e4 (175 layers of
    # residual growth), and its logistic heads turn their 3e-6 relative float error into
    # 7e-3 after the sigmoid, which the parity gate rightly refuses; the heads' weights
    # scaled by 1e-4 give trained-like logits (~0.1-2) without touching the 175 layers
    "yolov4-csp": {"cfg": REPO / "cfg" / "yolov4-csp.cfg", "weights": None,
                   "calibration": 3, "calibration_limit": 2, "isolate": ("probe",),
                   "peers": ("shipped", "plain"), "head_gain": 1e-4},
}

#: targets the product is held to (reported as met / missed, never asserted)
TARGETS = {"cached_fraction": 0.10, "probe_ratio": 3.0, "conversion_s": 120.0,
           "latency_vs_onnx2tf_1thread": 1.0, "latency_vs_plain_1thread": 1.05,
           "convert_vs_onnx2tf": 1.0}


# ------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json_atomic(path: Path, doc: Any) -> None:
    from darknet2tflite.store.atomic import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())


def source_digest() -> str:
    """sha256 over the code a conversion runs (library, tasks, flows, cfgs): the stage keys
    include none of it, so an edit during a run (e.g. a changed key recipe) shows up as
    unexpected recomputation; recorded so such a run can be recognised."""
    import hashlib
    h = hashlib.sha256()
    for d in ("darknet2tflite", "tasks", "flows", "cli", "cfg"):
        for p in sorted((REPO / d).rglob("*")):
            if p.is_file() and p.suffix in (".py", ".json", ".cfg"):
                h.update(p.relative_to(REPO).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rnd(x: Any, nd: int = 2) -> Any:
    return round(x, nd) if isinstance(x, (int, float)) and x is not None else x


def ephemeral_env() -> dict[str, str]:
    """Environment of a `darknet2tflite convert` without a server: no PREFECT_API_URL, the
    project-local PREFECT_HOME (flows/_settings.py fills in the rest)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILE")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def run_child(kind: str, spec: dict[str, Any], workdir: Path, label: str,
              env: dict[str, str] | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``bench/run.py _child KIND`` in a fresh process; returns its JSON result plus
    ``process_s`` (spawn to exit), ``peak_rss_mb`` (kernel ru_maxrss of the child via
    os.wait4), ``returncode`` and ``log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / f"{label}.spec.json"
    out_path = workdir / f"{label}.result.json"
    log_path = workdir / f"{label}.log"
    spec_path.write_text(json.dumps(spec, default=str), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    with open(log_path, "w", encoding="utf-8") as logf:
        t0 = time.perf_counter()
        p = subprocess.Popen([PYTHON, str(Path(__file__).resolve()), "_child", kind,
                              str(spec_path), str(out_path)], cwd=REPO, stdout=logf,
                             stderr=subprocess.STDOUT, env=env or ephemeral_env(),
                             start_new_session=True)
        timed_out = threading.Event()

        def watchdog() -> None:
            if not done.wait(timeout):
                timed_out.set()
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the child's own process group
                except ProcessLookupError:
                    pass

        done = threading.Event()
        threading.Thread(target=watchdog, daemon=True).start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:  # e.g. Ctrl-C: take the child (own session) down with us
            os.killpg(p.pid, signal.SIGKILL)
            os.wait4(p.pid, 0)
            raise
        finally:
            done.set()
        elapsed = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    res: dict[str, Any] = {}
    if out_path.is_file():
        res = json.loads(out_path.read_text(encoding="utf-8"))
    res.update(process_s=round(elapsed, 2), peak_rss_mb=round(ru.ru_maxrss / 1024, 1),
               returncode=p.returncode, log=str(log_path))
    if timed_out.is_set():
        res["error"] = f"timed out after {timeout:.0f} s"
    elif p.returncode != 0 and "error" not in res:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        res["error"] = f"exit code {p.returncode}: " + " | ".join(tail)
    return res


# ------------------------------------------------------------------------------------------
# child processes (bench/run.py _child KIND SPEC OUT)


class RSSSampler:
    """RSS of this process every ``interval`` s (psutil), with wall-clock timestamps."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil
        self.proc = psutil.Process()
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), self.proc.memory_info().rss))
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> "RSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), self.proc.memory_info().rss))

    def window(self, start: float, end: float) -> dict[str, Any]:
        inside = [r for t, r in self.samples if start <= t <= end]
        before = [r for t, r in self.samples if t <= start]
        at_start = before[-1] if before else (inside[0] if inside else None)
        peak = max(inside + ([at_start] if at_start else []), default=None)
        return {"peak_mb": rnd(peak / MIB, 1) if peak else None,
                "start_mb": rnd(at_start / MIB, 1) if at_start else None}


def window_label(stage: str, args: tuple[Any, ...]) -> str:
    """A stage window's name: the stage, with the quantize task's fold / variant mode
    (``quantize[fold2]``, ``quantize[float16]``) so the shipped fold keeps its own row.
    ``args`` are run_stage's (STAGE, store, key_inputs, options, produce)."""
    opts = args[3] if len(args) > 3 and isinstance(args[3], dict) else {}
    if stage == "quantize" and opts.get("mode", "int8") != "int8":
        return f"quantize[{opts['mode']}]"
    if stage == "quantize" and int(opts.get("fold") or 1) != 1:
        return f"quantize[fold{int(opts['fold'])}]"
    return stage


def child_flow(spec: dict[str, Any]) -> dict[str, Any]:
    """One `convert` flow run in this process (as cli.convert.run_convert does)."""
    sys.path.insert(0, str(REPO))
    t_imp = time.perf_counter()
    from flows import _embedded, _settings
    _embedded.start_early()
    from cli.convert import import_flow
    convert = import_flow()
    import tasks._common as common
    import importlib
    mods = {s: importlib.import_module(f"tasks.{s}") for s in STAGES + ("verify",)}
    import_s = time.perf_counter() - t_imp

    # time every stage task body (store lookup + compute + publish) from the outside
    windows: list[dict[str, Any]] = []
    lock = threading.Lock()
    for stage, mod in mods.items():
        orig = mod.run_stage

        def timed(*a: Any, _orig: Any = orig, _stage: str = stage, **kw: Any) -> Any:
            t0 = time.time()
            try:
                return _orig(*a, **kw)
            finally:
                with lock:
                    windows.append({"stage": window_label(_stage, a), "start": t0,
                                    "end": time.time()})
        mod.run_stage = timed

    out: dict[str, Any] = {"mode": _settings.MODE, "prefect": _embedded.describe(),
                           "import_s": round(import_s, 2)}
    with RSSSampler() as rss:
        t0, t_flow = time.perf_counter(), time.time()
        _embedded.wait_ready()
        with _embedded.flow_settings():
            state = convert(**spec["params"], return_state=True)
        out["flow_s"] = round(time.perf_counter() - t0, 2)
    if not state.is_completed():
        try:
            state.result(raise_on_failure=True)
        except BaseException as e:  # noqa: BLE001 - recorded, not raised
            out["error"] = f"{type(e).__name__}: {e}"
        out.setdefault("error", f"flow ended in state {state.name}")
        return out
    result = state.result()
    out["states"] = {s: v["state"] for s, v in result["stages"].items()}
    out["payloads"] = {s: {"stage": s.split("[")[0], "key": v["key"],
                           "artifacts": v["artifacts"]} for s, v in result["stages"].items()}
    out["produced"] = [s for s, _ in common.PRODUCED]
    out["out"] = result["out"]
    stages: dict[str, Any] = {}
    for w in sorted(windows, key=lambda w: w["start"]):
        overlap = sorted({o["stage"] for o in windows if o is not w and o["start"] < w["end"]
                          and o["end"] > w["start"]})
        stages[w["stage"]] = {"flow_s": round(w["end"] - w["start"], 2),
                              "t0": round(w["start"] - t_flow, 2),
                              "t1": round(w["end"] - t_flow, 2),
                              "flow_peak_rss_mb": rss.window(w["start"], w["end"])["peak_mb"],
                              "flow_start_rss_mb": rss.window(w["start"], w["end"])["start_mb"],
                              "concurrent_with": overlap}
    out["stages"] = stages
    out["flow_peak_rss_mb"] = rnd(max(r for _, r in rss.samples) / MIB, 1)
    return out


def child_stage(spec: dict[str, Any]) -> dict[str, Any]:
    """One stage's task function (library stage + store publish, no Prefect run)."""
    sys.path.insert(0, str(REPO))
    import importlib
    import psutil
    stage = spec["stage"]
    t_imp = time.perf_counter()
    import flows._settings  # noqa: F401
    if stage != "parse":
        import tensorflow  # noqa: F401  (every later stage needs it; counted as base RSS)
    mod = importlib.import_module(f"tasks.{stage}")
    import tasks._common as common
    import_s = time.perf_counter() - t_imp
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    getattr(mod, stage).fn(**spec["kwargs"])
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "import_s": round(import_s, 2),
            "base_rss_mb": round(base / MIB, 1),
            "computed": [s for s, _ in common.PRODUCED]}


def child_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Median invoke time of each .tflite at each thread count (LiteRT, XNNPACK default)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    res: dict[str, Any] = {"latency_ms": {}, "runs": {}}
    for name, path in spec["models"].items():
        res["latency_ms"][name], res["runs"][name] = {}, {}
        for threads in spec["threads"]:
            it = Interpreter(model_path=path, num_threads=threads)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            rng = np.random.default_rng(0)
            if d["dtype"] == np.float32:
                x = rng.random(d["shape"], dtype=np.float32)
            else:
                info = np.iinfo(d["dtype"])
                x = rng.integers(info.min, info.max + 1, d["shape"]).astype(d["dtype"])
            it.set_tensor(d["index"], x)
            warm = []
            for _ in range(spec["warmup"]):
                t = time.perf_counter()
                it.invoke()
                warm.append(time.perf_counter() - t)
            one = min(warm) if warm else 0.0
            runs = spec["runs"]
            if one > 0 and one * runs > spec["budget_s"]:
                runs = max(spec["min_runs"], int(spec["budget_s"] / one))
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                it.invoke()
                times.append((time.perf_counter() - t) * 1000.0)
            res["latency_ms"][name][str(threads)] = round(statistics.median(times), 2)
            res["runs"][name][str(threads)] = runs
            del it
    return res


def child_main(argv: list[str]) -> int:
    kind, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    fn = {"flow": child_flow, "stage": child_stage, "latency": child_latency,
          **peers.CHILDREN}[kind]
    try:
        res = fn(spec)
    except BaseException as e:  # noqa: BLE001 - the parent records it
        import traceback
        traceback.print_exc()
        res = {"error": f"{type(e).__name__}: {e}"}
    write_json_atomic(Path(out_path), res)
    return 1 if "error" in res else 0


# ------------------------------------------------------------------------------------------
# per model


def prepare(name: str, conf: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Flow parameters for this model (generating weights / a small calibration folder)."""
    cfg = Path(conf["cfg"])
    weights = conf["weights"]
    if weights is None:
        sys.path.insert(0, str(REPO))
        from darknet2tflite.darknet.cfg import parse_cfg
        from darknet2tflite.darknet.weights import random_weights, write_weights
        c = parse_cfg(cfg)
        weights = tmp / f"{name}.weights"
        generated = random_weights(c, seed=0)
        for prev, sec in zip(c.layers, c.layers[1:]):  # see MODELS: head_gain
            if sec.kind == "yolo" and prev.index in generated and conf.get("head_gain"):
                generated[prev.index].weights *= conf["head_gain"]
        write_weights(weights, c, generated)
    params: dict[str, Any] = {"cfg": str(cfg), "weights": str(weights),
                              "names": str(NAMES), "out": str(tmp / f"out-{name}"),
                              "calibration_limit": conf["calibration_limit"]}
    cal = conf["calibration"]
    if cal == "coco" and (COCO / "instances.json").is_file():
        params.update(calibration=str(COCO), eval_images=str(COCO),
                      eval_annotations=str(COCO / "instances.json"))
    else:
        n = cal if isinstance(cal, int) else 8
        src = COCO if COCO.is_dir() else REPO / "data" / "samples"
        folder = tmp / f"calibration-{name}"
        folder.mkdir(exist_ok=True)
        for p in sorted(src.glob("*.jpg"))[:n]:
            shutil.copyfile(p, folder / p.name)
        params["calibration"] = str(folder)
    return params


def peer_annotations(conf: dict[str, Any], params: dict[str, Any]) -> str | None:
    """COCO annotations the peers are scored with: the run's own, or, for a model with
    real weights calibrated on a folder of COCO photos (``--photos``), the COCO file, which
    covers its held-out photos too.  Generated weights detect nothing: None (AP null)."""
    if params.get("eval_annotations"):
        return params["eval_annotations"]
    if conf["weights"] is not None and (COCO / "instances.json").is_file():
        return str(COCO / "instances.json")
    return None


def stage_kwargs(stage: str, params: dict[str, Any], pay: dict[str, Any],
                 store: str) -> dict[str, Any]:
    """Arguments of tasks.<stage>.<stage>.fn as the flow passes them."""
    p = params
    common = {"store": store}
    if stage in ("parse", "build"):
        return dict(cfg=p["cfg"], weights=p["weights"], names=p.get("names"), **common)
    if stage == "parity":
        return dict(cfg=p["cfg"], weights=p["weights"], build=pay["build"], **common)
    if stage == "probe":
        return dict(cfg=p["cfg"], weights=p["weights"], target="int8", **common)
    if stage == "rewrite":
        return dict(cfg=p["cfg"], weights=p["weights"], probe=pay["probe"],
                    names=p.get("names"), **common)
    ev = dict(eval_images=p.get("eval_images"), eval_annotations=p.get("eval_annotations"))
    if stage == "quantize":
        return dict(cfg=p["cfg"], rewrite=pay["rewrite"], calibration=p["calibration"],
                    mode="int8", calibration_limit=p["calibration_limit"], **ev, **common)
    if stage == "evaluate":
        return dict(cfg=p["cfg"], quantize=pay["quantize"], rewrite=pay["rewrite"],
                    variants={}, calibration=p["calibration"], **ev, **common)
    if stage == "report":
        return dict(model=Path(p["cfg"]).stem, parse=pay["parse"], parity=pay["parity"],
                    probe=pay["probe"], rewrite=pay["rewrite"], evaluate=pay["evaluate"],
                    **common)
    raise ValueError(stage)


def bench_model(name: str, conf: dict[str, Any], tmp: Path, args: argparse.Namespace
                ) -> dict[str, Any]:
    res: dict[str, Any] = {"cfg": str(conf["cfg"]), "source_digest_start": source_digest()}
    work = tmp / name
    work.mkdir(parents=True, exist_ok=True)
    params = prepare(name, conf, work)
    store = work / "store"
    params["store"] = str(store)
    res["weights"] = "generated (weights.random_weights seed 0)" if conf["weights"] is None \
        else params["weights"]
    res["settings"] = {k: params.get(k) for k in ("calibration", "calibration_limit",
                                                   "eval_images", "eval_annotations")}

    log(f"{name}: cold run (fresh store {store})")
    cold = run_child("flow", {"params": params}, work, "cold")
    res["cold"] = {k: cold.get(k) for k in ("process_s", "flow_s", "import_s", "peak_rss_mb",
                                             "flow_peak_rss_mb", "states", "produced", "mode",
                                             "error", "log")}
    if "error" in cold:
        res["error"] = f"cold run: {cold['error']}"
        return res
    res["cold_s"] = cold["process_s"]
    res["cold_flow_s"] = cold["flow_s"]
    # windows of the quantize tasks that are not the shipped fold (fold 2, variants)
    res["cold"]["other_stages"] = {k: v for k, v in cold["stages"].items() if k not in STAGES}
    # what this cold run delivered, set aside before the later runs rewrite the store entry
    shipped = peers.keep_shipped(cold, work / "peers") if args.peers else None
    log(f"{name}: cold {cold['process_s']:.1f} s")

    log(f"{name}: cached run (same store)")
    cached = run_child("flow", {"params": params}, work, "cached")
    res["cached"] = {k: cached.get(k) for k in ("process_s", "flow_s", "import_s",
                                                 "peak_rss_mb", "states", "produced", "error",
                                                 "log")}
    if "error" not in cached:
        res["cached_s"] = cached["process_s"]
        res["cached_flow_s"] = cached["flow_s"]
        res["cached_fraction"] = round(cached["process_s"] / cold["process_s"], 4)
        res["all_cached"] = all(v == "Cached" for v in cached["states"].values())
        log(f"{name}: cached {cached['process_s']:.1f} s "
            f"({100 * res['cached_fraction']:.1f} % of cold)")

    log(f"{name}: rerun from_stage=quantize")
    rerun = run_child("flow", {"params": dict(params, from_stage="quantize")}, work, "rerun")
    res["quantize_rerun"] = {k: rerun.get(k) for k in ("process_s", "flow_s", "peak_rss_mb",
                                                        "states", "produced", "stages", "error",
                                                        "log")}
    latest = cold
    if "error" not in rerun:
        latest = rerun
        res["quantize_rerun_s"] = rerun["process_s"]
        res["quantize_rerun_flow_s"] = rerun["flow_s"]
        res["rerun_skipped_early_stages"] = (
            all(rerun["states"].get(s) == "Cached" for s in EARLY)
            and not set(rerun["produced"]) & set(EARLY)
            and all(rerun["states"].get(s) == "Completed" for s in STAGES[5:]))
        log(f"{name}: quantize rerun {rerun['process_s']:.1f} s, recomputed "
            f"{', '.join(rerun['produced'])}")

    # per-stage: isolated child per stage, fed the artifacts of the latest run
    iso_store = str(work / "iso-store")
    isolate = STAGES if args.isolate == "all" else () if args.isolate == "none" else \
        tuple(conf["isolate"]) if args.isolate == "default" else \
        tuple(s for s in args.isolate.split(",") if s)
    stages: dict[str, Any] = {}
    for s in STAGES:
        row = dict(cold["stages"].get(s, {}))
        rr = (rerun.get("stages") or {}).get(s) if "error" not in rerun else None
        if rr:  # recomputed by the quantize rerun, in a process where earlier stages were cached
            row.update(rerun_s=rr["flow_s"], rerun_peak_rss_mb=rr["flow_peak_rss_mb"],
                       rerun_start_rss_mb=rr["flow_start_rss_mb"])
        if s in isolate:
            log(f"{name}: isolated {s}")
            iso = run_child("stage", {"stage": s, "kwargs": stage_kwargs(
                s, params, latest["payloads"], iso_store)}, work / "stages", s)
            if "error" in iso:
                row.update(method="isolated", error=iso["error"])
            else:
                row.update(cold_s=iso["seconds"], peak_rss_mb=iso["peak_rss_mb"],
                           base_rss_mb=iso["base_rss_mb"], import_s=iso["import_s"],
                           method="isolated child process (ru_maxrss)")
        if "cold_s" not in row and s == "quantize" and row.get("rerun_s") is not None:
            # the quantize rerun recomputes it first thing in a fresh process (earlier stages
            # cached, nothing of theirs resident): nearly an isolated measurement, for free
            row.update(cold_s=row["rerun_s"], peak_rss_mb=row["rerun_peak_rss_mb"],
                       base_rss_mb=row["rerun_start_rss_mb"],
                       method="quantize-rerun flow (first computed stage of a fresh process; "
                              "sampled process RSS)")
        if "cold_s" not in row:
            row.update(cold_s=row.get("flow_s"), peak_rss_mb=row.get("flow_peak_rss_mb"),
                       method="in cold flow (task body time, sampled process RSS)")
        stages[s] = row
    res["stages"] = stages
    res["probe_s"] = stages["probe"].get("cold_s")
    res["probe_method"] = stages["probe"].get("method")
    parsed = latest["payloads"]["parse"]["artifacts"].get("parsed")
    if parsed and Path(parsed).is_file():
        doc = json.loads(Path(parsed).read_text(encoding="utf-8"))
        res["n_layers"], res["n_params"] = doc.get("n_layers"), doc.get("n_params")

    out = Path(latest["out"])
    files = {"float32": out / "model.float32.tflite", "int8": out / "model.int8.tflite"}
    res["size_mb"] = {k: round(p.stat().st_size / MIB, 3) for k, p in files.items()
                      if p.is_file()}
    log(f"{name}: latency")
    lat = run_child("latency", {"models": {k: str(p) for k, p in files.items()},
                                "threads": [1, 2], "runs": args.latency_runs, "warmup": 3,
                                "min_runs": 5, "budget_s": args.latency_budget},
                    work, "latency")
    if "error" in lat:
        res["latency_error"] = lat["error"]
    else:
        res["latency_ms"] = lat["latency_ms"]
        res["latency_runs"] = lat["runs"]
        f1, i1 = lat["latency_ms"]["float32"]["1"], lat["latency_ms"]["int8"]["1"]
        res["int8_speedup"] = {t: round(lat["latency_ms"]["float32"][t]
                                        / lat["latency_ms"]["int8"][t], 2) for t in ("1", "2")}
        log(f"{name}: float32 {f1} ms, int8 {i1} ms at 1 thread")
    if shipped is not None:
        # the shipped conversion's passes over the calibration photos (int8/passes.py), with
        # the evaluate stage's debugger pass; fold 2 apart
        passes = json.loads(Path(shipped["report"]).read_text())["conversion"].get("passes")
        res["passes"] = {k: v for k, v in (passes or {}).items() if k != "fold2"} or None
        res.update(peers.bench_peers(name, conf, params, shipped, cold["stages"], work, args,
                                     run_child, log, peer_annotations(conf, params)))
    if args.deploy_targets:
        log(f"{name}: flow with target={args.deploy_targets} (same store)")
        dep = run_child("flow", {"params": dict(params, target=args.deploy_targets)}, work,
                        "targets")
        res["deployment"] = deployment_costs(dep, cold)
    res["params"] = params
    res["source_digest_end"] = source_digest()
    if res["source_digest_end"] != res["source_digest_start"]:
        res["warning"] = ("project source (darknet2tflite/, tasks/, flows/, cli/, cfg/) changed during "
                          "this model's runs: cached / rerun figures may include recomputation "
                          "caused by the edit")
        log(f"{name}: WARNING {res['warning']}")
    return res


def deployment_costs(run: dict[str, Any], cold: dict[str, Any]) -> dict[str, Any]:
    """What each deployment target's checks cost: the probe with the targets' tools against
    the cold run's cpu probe, and the verify stage's per-target timings (verify.json)."""
    if "error" in run:
        return {"error": run["error"]}
    st = run.get("stages") or {}
    out: dict[str, Any] = {
        "probe_s": (st.get("probe") or {}).get("flow_s"),
        "probe_cpu_s": (cold.get("stages") or {}).get("probe", {}).get("flow_s"),
        "verify_s": (st.get("verify") or {}).get("flow_s"), "targets": {}}
    path = ((run.get("payloads") or {}).get("verify") or {}).get("artifacts", {}).get("verify")
    if path and Path(path).is_file():
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        for t in doc.get("targets", []):
            out["targets"][t["target"]] = {k: t.get(k) for k in (
                "runs", "seconds", "seconds_arena_search", "seconds_per_image",
                "seconds_compile", "max_step_difference", "arena_bytes", "ops_npu",
                "ops_total") if t.get(k) is not None}
        acc = doc.get("accuracy_reference") or {}
        out["reference_run_s"] = doc.get("seconds_reference_run")
        out["reference_accuracy_s"] = acc.get("seconds")
    return out


# ------------------------------------------------------------------------------------------
# orchestration: ephemeral vs a running server


def start_server(home: Path, port: int, timeout: float = 180.0
                 ) -> tuple[subprocess.Popen, float, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log_path = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    prefect = Path(PYTHON).with_name("prefect")
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=home, env=env, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/health"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited ({proc.returncode}), see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0, log_path
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"prefect server did not answer {url} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (we started it)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def bench_orchestration(results: dict[str, Any], tmp: Path, reps: int) -> dict[str, Any]:
    todo = [(n, r) for n, r in results.items() if r.get("cached_s") is not None]
    if not todo:
        return {"error": "no model with a cached run"}
    home = tmp / "prefect-server-home"
    port = free_port()
    log(f"orchestration: starting prefect server on 127.0.0.1:{port} (PREFECT_HOME={home})")
    try:
        proc, startup, server_log = start_server(home, port)
    except RuntimeError as e:
        return {"error": str(e)}
    summary: dict[str, Any] = {"server_startup_s": round(startup, 2), "port": port,
                               "server_log": str(server_log), "reps": reps}
    senv = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    senv.update(PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_HOME=str(home),
                PREFECT_SERVER_ANALYTICS_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="3")
    try:
        for name, r in todo:
            work = tmp / name / "orchestration"
            # "ephemeral": the CLI's default (embedded server started before Prefect is
            # imported, flows/_embedded.py); "prefect_ephemeral": Prefect's own lazy
            # ephemeral start (DARKNET2TFLITE_EMBEDDED_SERVER=0); "server": a running server
            pen = dict(ephemeral_env(), DARKNET2TFLITE_EMBEDDED_SERVER="0")
            modes = (("ephemeral", None), ("prefect_ephemeral", pen), ("server", senv))
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m, _ in modes}
            for i in range(reps):  # interleaved, so all modes see the same machine load
                for mode, env in modes:
                    log(f"orchestration: {name} cached run {i + 1}/{reps}, {mode}")
                    c = run_child("flow", {"params": r["params"]}, work, f"{mode}-{i}", env=env)
                    runs[mode].append({k: c.get(k) for k in ("process_s", "flow_s", "mode",
                                                             "states", "error")})
            o: dict[str, Any] = {}
            for mode, rs in runs.items():
                ok = [x for x in rs if "error" not in x or x["error"] is None]
                o[f"{mode}_cached_s"] = [x["process_s"] for x in ok]
                o[f"{mode}_cached_flow_s"] = [x["flow_s"] for x in ok]
                o[f"{mode}_all_cached"] = all(
                    all(v == "Cached" for v in (x.get("states") or {}).values()) for x in ok)
                o[f"{mode}_recorded_as"] = sorted({str(x.get("mode")) for x in ok})
                errs = [x["error"] for x in rs if x.get("error")]
                if errs:
                    o[f"{mode}_errors"] = errs
            for mode in runs:
                if o[f"{mode}_cached_s"]:
                    o[f"{mode}_median_s"] = round(statistics.median(o[f"{mode}_cached_s"]), 2)
            if o.get("ephemeral_median_s") is not None and o.get("server_median_s") is not None:
                o["ephemeral_minus_server_s"] = round(
                    o["ephemeral_median_s"] - o["server_median_s"], 2)
            r["orchestration"] = o
        summary["models"] = {n: res.get("orchestration") for n, res in todo}
    finally:
        log("orchestration: stopping prefect server")
        stop_server(proc)
    return summary


# ------------------------------------------------------------------------------------------
# summary, table


def peer_targets(peers: dict[str, Any]) -> dict[str, bool]:
    """The shipped model against its peers: no slower than onnx2tf and within 5 % of plain
    at 1 thread, converted no slower than onnx2tf (a peer timed off XNNPACK does not count)."""
    ship, row = peers.get("shipped") or {}, {}
    for peer, limit, name in (
            ("onnx2tf", "latency_vs_onnx2tf_1thread", "as_fast_as_onnx2tf_1_thread"),
            ("plain", "latency_vs_plain_1thread", "within_5pct_of_plain_1_thread")):
        p = peers.get(peer) or {}
        if (ship.get("latency_ms_1thread") and p.get("latency_ms_1thread")
                and p.get("latency_delegate") == ship.get("latency_delegate")):
            row[name] = ship["latency_ms_1thread"] / p["latency_ms_1thread"] <= TARGETS[limit]
    o = peers.get("onnx2tf") or {}
    if ship.get("convert_s") and o.get("convert_s"):
        row["converts_as_fast_as_onnx2tf"] = \
            ship["convert_s"] / o["convert_s"] <= TARGETS["convert_vs_onnx2tf"]
    return row


def targets(results: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    for n, r in results.items():
        row: dict[str, Any] = {}
        if r.get("cached_fraction") is not None:
            row["cached_le_10pct_of_cold"] = (
                r["cached_fraction"] <= TARGETS["cached_fraction"] if r.get("all_cached")
                else "invalid: the cached run recomputed something")
        o = r.get("orchestration") or {}
        if o.get("server_median_s") is not None and r.get("cold_s"):
            row["cached_le_10pct_of_cold_with_running_server"] = \
                o["server_median_s"] / r["cold_s"] <= TARGETS["cached_fraction"]
        if r.get("rerun_skipped_early_stages") is not None:
            row["quantize_rerun_skips_earlier_stages"] = r["rerun_skipped_early_stages"]
        row.update(peer_targets(r.get("peers") or {}))
        if r.get("cold_s") is not None:
            row["conversion_under_2_min"] = r["cold_s"] < TARGETS["conversion_s"]
        t[n] = row
    a, b = results.get("yolov4-tiny", {}), results.get("yolov4", {})
    if a.get("probe_s") and b.get("probe_s") and a.get("n_layers") and b.get("n_layers"):
        ratio = b["probe_s"] / a["probe_s"]
        t["probe_ratio"] = {"yolov4_probe_s": b["probe_s"], "yolov4_tiny_probe_s": a["probe_s"],
                            "time_ratio": round(ratio, 2),
                            "layer_ratio": round(b["n_layers"] / a["n_layers"], 2),
                            "met": ratio < TARGETS["probe_ratio"]}
    return t


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, (int, float)):
        return format(x, spec)
    return str(x)


def table(doc: dict[str, Any]) -> str:
    models = doc["models"]
    L: list[str] = []
    warnings: list[str] = []
    L.append("== Totals (wall s, end to end per process; cached % = cached / cold) ==")
    L.append(f"{'model':12s} {'layers':>6s} {'cold':>8s} {'cached':>7s} {'cached%':>7s} "
             f"{'all Cached':>10s} {'q-rerun':>8s} {'rerun skips early':>17s} {'probe':>7s}")
    for n, r in models.items():
        if r.get("error"):
            L.append(f"{n:12s} ERROR {r['error'][:100]}")
            continue
        if r.get("warning"):
            warnings.append(f"{n}: {r['warning']}")
        frac = r.get("cached_fraction")
        L.append(f"{n:12s} {fmt(r.get('n_layers'), 'd'):>6s} {fmt(r.get('cold_s')):>8s} "
                 f"{fmt(r.get('cached_s')):>7s} "
                 f"{fmt(100 * frac if frac is not None else None):>7s} "
                 f"{fmt(r.get('all_cached')):>10s} {fmt(r.get('quantize_rerun_s')):>8s} "
                 f"{fmt(r.get('rerun_skipped_early_stages')):>17s} {fmt(r.get('probe_s')):>7s}")
    L.append("")
    L.append("== Stages, cold. cold_s / peakMiB: stage alone in a child process (kernel peak "
             "RSS; baseMiB = after imports). flow_s / flowMiB: inside the cold flow run "
             "(sampled process RSS; fl.start = RSS when the stage began) ==")
    L.append(f"{'model':12s} {'stage':9s} {'cold_s':>7s} {'peakMiB':>8s} {'baseMiB':>8s} "
             f"{'flow_s':>7s} {'flowMiB':>8s} {'fl.start':>8s}  concurrent with / method")
    for n, r in models.items():
        for s, st in (r.get("stages") or {}).items():
            note = ", ".join(st.get("concurrent_with") or []) or "-"
            if str(st.get("method", "")).startswith("quantize-rerun"):
                note += "  [from the quantize rerun]"
            elif not str(st.get("method", "")).startswith("isolated"):
                note += "  [in-flow figures]"
            if st.get("error"):
                note += f"  ERROR {st['error'][:60]}"
            L.append(f"{n:12s} {s:9s} {fmt(st.get('cold_s')):>7s} "
                     f"{fmt(st.get('peak_rss_mb'), '.0f'):>8s} "
                     f"{fmt(st.get('base_rss_mb'), '.0f'):>8s} {fmt(st.get('flow_s')):>7s} "
                     f"{fmt(st.get('flow_peak_rss_mb'), '.0f'):>8s} "
                     f"{fmt(st.get('flow_start_rss_mb'), '.0f'):>8s}  {note}")
    L.append("")
    L.append("== int8 vs float32 TFLite (median ms per invoke, LiteRT/XNNPACK; size MiB) ==")
    L.append(f"{'model':12s} {'f32 1t':>8s} {'f32 2t':>8s} {'int8 1t':>8s} {'int8 2t':>8s} "
             f"{'x 1t':>5s} {'x 2t':>5s} {'f32 MiB':>8s} {'int8 MiB':>8s} runs")
    for n, r in models.items():
        lat, sz = r.get("latency_ms") or {}, r.get("size_mb") or {}
        sp = r.get("int8_speedup") or {}
        runs = r.get("latency_runs") or {}
        L.append(f"{n:12s} {fmt(lat.get('float32', {}).get('1')):>8s} "
                 f"{fmt(lat.get('float32', {}).get('2')):>8s} "
                 f"{fmt(lat.get('int8', {}).get('1')):>8s} {fmt(lat.get('int8', {}).get('2')):>8s} "
                 f"{fmt(sp.get('1'), '.2f'):>5s} {fmt(sp.get('2'), '.2f'):>5s} "
                 f"{fmt(sz.get('float32'), '.2f'):>8s} {fmt(sz.get('int8'), '.2f'):>8s} "
                 f"{runs.get('float32', {}).get('1', '-')}/{runs.get('int8', {}).get('1', '-')}")
    L.extend(peers.table_lines(models))
    deps = {n: r["deployment"] for n, r in models.items() if r.get("deployment")}
    if deps:
        L.append("")
        L.append("== Deployment target checks (flow with --target, same store; wall s) ==")
        for n, d in deps.items():
            if d.get("error"):
                L.append(f"{n:12s} ERROR {d['error'][:100]}")
                continue
            L.append(f"{n:12s} probe with tools {fmt(d.get('probe_s'))} s (cpu probe "
                     f"{fmt(d.get('probe_cpu_s'))} s); verify stage {fmt(d.get('verify_s'))} s "
                     f"= reference-kernel run {fmt(d.get('reference_run_s'))} + accuracy "
                     f"{fmt(d.get('reference_accuracy_s'))} + per target:")
            for t, c in (d.get("targets") or {}).items():
                extra = ", ".join(f"{k} {v}" for k, v in c.items() if k != "seconds")
                L.append(f"{'':12s}   {t:16s} {fmt(c.get('seconds')):>6s} s  ({extra})")
    orch = doc.get("orchestration") or {}
    L.append("")
    L.append("== Orchestration: fully cached run, ephemeral Prefect vs running server "
             "(wall s per process, median) ==")
    if orch.get("error"):
        L.append(f"ERROR {orch['error']}")
    elif orch:
        L.append(f"server startup (prefect server start -> /api/health): "
                 f"{fmt(orch.get('server_startup_s'))} s")
        L.append("ephemeral = the CLI's embedded server (default); prefect eph. = Prefect's own "
                 "ephemeral start (DARKNET2TFLITE_EMBEDDED_SERVER=0); diff = ephemeral - server")
        L.append(f"{'model':12s} {'ephemeral':>9s} {'prefect eph.':>12s} {'server':>7s} "
                 f"{'diff':>6s}  runs (eph | prefect eph. | srv)")
        for n, o in (orch.get("models") or {}).items():
            if not o:
                continue
            L.append(f"{n:12s} {fmt(o.get('ephemeral_median_s')):>9s} "
                     f"{fmt(o.get('prefect_ephemeral_median_s')):>12s} "
                     f"{fmt(o.get('server_median_s')):>7s} "
                     f"{fmt(o.get('ephemeral_minus_server_s')):>6s}  "
                     f"{o.get('ephemeral_cached_s')} | {o.get('prefect_ephemeral_cached_s')} | "
                     f"{o.get('server_cached_s')}")
    else:
        L.append("skipped")
    L.append("")
    L.append("== Targets (reported, not asserted) ==")
    for n, t in (doc.get("targets") or {}).items():
        if n == "probe_ratio":
            L.append(f"probe: yolov4 {fmt(t['yolov4_probe_s'])} s / yolov4-tiny "
                     f"{fmt(t['yolov4_tiny_probe_s'])} s = {t['time_ratio']}x for "
                     f"{t['layer_ratio']}x layers (target < 3x): "
                     f"{'met' if t['met'] else 'MISSED'}")
        else:
            L.append(f"{n:12s} " + ", ".join(
                f"{k}: {v if isinstance(v, str) else 'met' if v else 'MISSED'}"
                for k, v in t.items()))
    m = doc.get("machine", {})
    for w in warnings:
        L.append(f"WARNING {w}")
    L.append("")
    L.append(f"machine: {m.get('cpus')} CPUs, load average {m.get('loadavg_start')} at start, "
             f"{m.get('loadavg_end')} at end; total bench time {fmt(doc.get('total_s'))} s")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return child_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma list from {', '.join(MODELS)} (default: all)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "run.json"),
                    help="write the figures here (atomically; default bench/results/run.json)")
    ap.add_argument("--isolate", default="default",
                    help="stages re-run in isolated child processes for cold_s / peak RSS: "
                         "'default' (all but quantize for the tiny models, whose quantize "
                         "figures come from the quantize rerun; probe only for yolov4), "
                         "'all', 'none' or a comma list of stages")
    ap.add_argument("--latency-runs", type=int, default=30,
                    help="timed invokes per model and thread count (after 3 warm-up runs)")
    ap.add_argument("--latency-budget", type=float, default=15.0,
                    help="seconds per model and thread count: fewer runs (>= 5) when "
                         "--latency-runs invokes would take longer")
    ap.add_argument("--orchestration-reps", type=int, default=1,
                    help="cached runs per mode and model in the ephemeral vs server "
                         "comparison (0: skip it)")
    ap.add_argument("--photos", type=int, default=None, metavar="N",
                    help="calibrate every model on the first N shared COCO photos only, "
                         "without annotations (no AP, no swapped calibration fold): a quick "
                         "run of the whole procedure, e.g. for the tests")
    ap.add_argument("--deploy-targets", default=None, metavar="LIST",
                    help="also convert each model for these deployment targets and report "
                         f"what each target's checks cost (default: {DEPLOY_TARGETS}; "
                         "with --photos: none unless given; '' turns it off)")
    ap.add_argument("--peers", default=",".join(peers.PEERS), metavar="LIST",
                    help="int8 peers measured side by side per model (default: "
                         f"{','.join(peers.PEERS)}; '' turns it off): latency interleaved in "
                         "one process, conversion time, size, AP on the same held-out photos")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if set(args.peers) - set(peers.PEERS):
        ap.error(f"--peers: choose from {', '.join(peers.PEERS)}")
    if args.deploy_targets is None:
        args.deploy_targets = "" if args.photos else DEPLOY_TARGETS
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in names if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    out_json = Path(args.json).resolve()

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="d2t-bench-"))
    log(f"work folder {tmp}; results -> {out_json}")
    doc: dict[str, Any] = {
        "models": {}, "complete": False,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"latency_runs": args.latency_runs, "latency_budget_s": args.latency_budget,
                     "isolate": args.isolate, "orchestration_reps": args.orchestration_reps,
                     "photos": args.photos, "peers": args.peers,
                     "ephemeral_prefect_home": str(REPO / ".prefect"),
                     "models": {n: {k: (list(v) if isinstance(v, tuple) else str(v)
                                        if isinstance(v, Path) else v)
                                    for k, v in MODELS[n].items()} for n in names}},
        "units": {"*_s": "seconds wall clock", "*_mb": "MiB (2^20 bytes)",
                  "latency_ms": "median milliseconds per invoke"},
    }
    try:
        for n in names:
            t0 = time.perf_counter()
            try:
                conf = dict(MODELS[n])
                if args.photos:
                    conf["calibration"] = args.photos
                doc["models"][n] = bench_model(n, conf, tmp, args)
            except Exception as e:  # noqa: BLE001 - recorded, the other models still run
                log(f"{n}: FAILED {type(e).__name__}: {e}")
                doc["models"][n] = {"error": f"{type(e).__name__}: {e}"}
            doc["models"][n]["bench_s"] = round(time.perf_counter() - t0, 1)
            doc["targets"] = targets(doc["models"])
            write_json_atomic(out_json, doc)
        if args.orchestration_reps > 0:
            doc["orchestration"] = bench_orchestration(doc["models"], tmp,
                                                       args.orchestration_reps)
        doc["targets"] = targets(doc["models"])
        doc["complete"] = True
    finally:
        doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        doc["total_s"] = round(time.perf_counter() - t_start, 1)
        if args.keep:
            doc["work_folder"] = str(tmp)
        write_json_atomic(out_json, doc)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(doc))
    print(f"\nwrote {out_json}" + (f" (work folder kept: {tmp})" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
