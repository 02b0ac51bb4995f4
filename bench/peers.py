"""Peers of the shipped int8 model for bench/run.py: what the product's int8
transforms are worth against the converters a user could run instead, measured in the same
run, on the same photos and threads.

* ``shipped``: the cold ``convert`` flow's model.int8.tflite (head split, channel split, box
  rounding, MSE ranges); its conversion time comes from that run's stage windows.
* ``plain``: TFLiteConverter full-integer int8 of the same Darknet graph: the float Keras
  model with the exact rules the cold run's probe chose (what makes it full integer; no head
  split, no transform for accuracy), the converter's own calibration through
  ``representative_dataset`` on the shipped model's calibration photos, uint8 input, int8
  output, per-channel weights (the converter's default).
* ``onnx2tf``: what ``convert --backend onnx2tf`` converts: the rewrite stage's model (the
  exact rules the cold run's probe chose, e.g. ``[route] groups`` as STRIDED_SLICE, plus the
  int8 head split) through ``int8.backends.dispatch.quantize_with_backend("onnx2tf")``
  (offline: onnx2tf's sample-image download is replaced by our calibration array there), on
  the same calibration photos; none of the direct backend's transforms (channel split, box
  rounding, MSE ranges).
* ``equalize``: the direct backend as ``convert --equalize`` runs it (cross-layer range
  equalization with error-feedback rounding of the equalized layers' consumers instead of
  the outlier channel split; no extra MACs), on the rewrite stage's model.  The build stage's unrewritten graph is no option: on yolov4-tiny
  the backend's full-integer check refuses it (onnx2tf leaves its SPLITs float).

Each peer conversion is one child process (``_child peer``) that starts its clock at the
parse, so ``convert_s`` is parse -> int8 file (plus the cold run's probe, whose choice of
rules both reuse).  Scoring (``_child
peer_score``) runs ``evaluation.evaluate.evaluate`` on the shipped model's held-out photos
with the three models side by side (one decoder, one AP).  Latency (``_child peer_latency``)
times the three files interleaved invoke by invoke in one process, so machine load hits all
three alike and the ratios hold even when the absolute figures drift.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEERS = ("shipped", "plain", "onnx2tf", "equalize")
#: file name of each peer's model in the peers folder; the shipped one keeps its own name so
#: model.json's ``head_outputs_by_file`` entry for it still applies
FILES = {"shipped": "model.int8.tflite", "plain": "peer-plain.int8.tflite",
         "onnx2tf": "peer-onnx2tf.int8.tflite", "equalize": "peer-equalize.int8.tflite"}
#: the fields every peer row has (None when not measured)
FIELDS = ("latency_ms_1thread", "latency_ms_2threads", "convert_s", "size_bytes", "AP", "AP50")


# ------------------------------------------------------------------------------------------
# child: one peer conversion


def _parse_and_build(spec: dict[str, Any], steps: dict[str, float]
                     ) -> tuple[Any, Any, dict[str, Any], list[list[str]]]:
    """cfg + weights -> (cfg, Keras model, model.json dict, Keras outputs per head): the
    float model with the probe's exact rules (no head split), timed step by step into
    ``steps``.  (The
    onnx2tf peer's route builds its own, rewritten model.)"""
    from darknet2tflite.darknet.metadata import decode_metadata, read_names
    from darknet2tflite.stages.parse import load_model_inputs
    t = time.perf_counter()
    cfg, weights = load_model_inputs(spec["cfg"], spec["weights"])
    meta = decode_metadata(cfg, read_names(spec.get("names")))
    steps["parse_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    from darknet2tflite.model.builder import build_keras
    from darknet2tflite.tflite.export import head_groups
    from darknet2tflite.rewrites import load_rules
    from darknet2tflite.stages.payload import read_json
    # the exact rules the cold run's probe chose (e.g. [route] groups as STRIDED_SLICE, the
    # maxpool padding): without them the converter leaves float ops (SPLIT, DEQUANTIZE) and
    # XNNPACK cannot prepare the yolov3-tiny model; no head split, nothing for accuracy
    registry = load_rules()
    rules = [registry[r["name"]] for r in (read_json(spec["probe"]) or {}).get("rewrites", [])]
    model, _ = build_keras(cfg, weights, rules)
    groups = head_groups(model, meta)
    for h, g in zip(meta["heads"], groups):
        h["outputs"] = g
    steps["build_s"] = round(time.perf_counter() - t, 2)
    return cfg, model, meta, groups


def _calibrate(spec: dict[str, Any], cfg: Any, out: Path, steps: dict[str, float]) -> Path:
    """The shipped fold's calibration photos (same folder, limit and held-out exclusion, so
    the same list) preprocessed into this peer's own array (no shared cache: each route pays
    its preprocessing, as the shipped quantize stage does)."""
    from darknet2tflite.int8.calibration import calibrate
    t = time.perf_counter()
    cal = calibrate(cfg, spec["calibration"], out / "calibration.npy", spec["calibration_limit"],
                    exclude=spec["exclude"], progress=None)
    steps["calibrate_s"] = round(time.perf_counter() - t, 2)
    steps["calibration_images"] = len(cal.images)
    steps["same_calibration_photos"] = sorted(map(str, cal.images)) == sorted(
        map(str, spec["calibration_images"]))
    return cal.npy


def _litert(path: str | Path | bytes, threads: int = 1, xnnpack: bool = True) -> Any:
    """A LiteRT interpreter, allocated; ``xnnpack=False``: the builtin kernels only (for a
    model XNNPACK cannot prepare)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kw: dict[str, Any] = {"model_content": bytes(path)} if isinstance(path, bytes) else \
        {"model_path": str(path)}
    if not xnnpack:
        kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(num_threads=threads, **kw)
    it.allocate_tensors()
    return it


def xnnpack_error(path: str | Path) -> str | None:
    """Why LiteRT's default XNNPACK delegate cannot prepare this model (None: it can)."""
    try:
        _litert(path)
    except RuntimeError as e:
        return str(e).strip()[:300]
    return None


def _plain(spec: dict[str, Any], cfg: Any, model: Any, meta: dict[str, Any],
           groups: list[list[str]], npy: Path, out: Path) -> Path:
    from darknet2tflite.int8.calibration import load_calibration, representative_dataset
    from darknet2tflite.tflite.export import convert, head_tensor_names, save_tflite
    data = convert(model, mode="int8", representative=representative_dataset(
        load_calibration(npy)))
    # head names through the builtin kernels: XNNPACK may refuse the converter's model
    it = _litert(data, xnnpack=False)
    heads = [head_tensor_names(it, list(model.output_names), list(g)) for g in groups]
    return save_tflite(data, out / FILES["plain"], dict(meta, head_outputs=heads))


def _onnx2tf(spec: dict[str, Any], cfg: Any, model: Any, meta: dict[str, Any],
             groups: list[list[str]], npy: Path, out: Path) -> Path:
    from darknet2tflite.int8.backends.dispatch import quantize_with_backend
    from darknet2tflite.int8.quantize import QuantizeOptions
    rw = spec["rewritten"]  # the rewrite stage's files, as the quantize stage gets them
    paths = quantize_with_backend("onnx2tf", rw["keras"], npy, rw["meta"], out / "onnx2tf",
                                  QuantizeOptions(input_type="uint8"), progress=lambda _m: None)
    dst = out / FILES["onnx2tf"]  # its embedded model.json maps the heads to its own tensors
    shutil.move(str(paths["tflite_int8"]), dst)
    return dst


def _rewritten(spec: dict[str, Any], out: Path, steps: dict[str, float]
               ) -> tuple[Any, None, None, None]:
    """The rewrite stage body (parse + build with the probe's rules and the head split) on
    the cold run's probe report; its files go to ``spec["rewritten"]``."""
    from darknet2tflite.darknet.cfg import parse_cfg
    from darknet2tflite.stages.rewrite import rewrite_stage
    t = time.perf_counter()
    spec["rewritten"] = {k: str(v) for k, v in rewrite_stage(
        spec["cfg"], spec["weights"], spec.get("names"), spec["probe"],
        out / "rewrite").items()}
    steps["rewrite_s"] = round(time.perf_counter() - t, 2)
    steps["probe_s_of_cold_run"] = spec["probe_s"]
    return parse_cfg(spec["cfg"]), None, None, None


def _equalize(spec: dict[str, Any], cfg: Any, model: Any, meta: dict[str, Any],
              groups: list[list[str]], npy: Path, out: Path) -> Path:
    """The direct backend as ``convert --equalize`` runs it (range equalization instead of
    the channel split; everything else the shipped model's)."""
    from darknet2tflite.int8.backends.dispatch import quantize_with_backend
    from darknet2tflite.int8.quantize import QuantizeOptions
    from darknet2tflite.stages.quantize import BOX_ROUNDING, RANGES
    rw = spec["rewritten"]
    paths = quantize_with_backend("direct", rw["keras"], npy, rw["meta"], out / "equalize",
                                  QuantizeOptions(equalize=True, ranges=RANGES,
                                                  box_rounding=BOX_ROUNDING),
                                  progress=lambda _m: None)
    dst = out / FILES["equalize"]
    shutil.move(str(paths["tflite_int8"]), dst)
    return dst


ROUTES: dict[str, Callable[..., Path]] = {"plain": _plain, "onnx2tf": _onnx2tf,
                                          "equalize": _equalize}


def child_convert(spec: dict[str, Any]) -> dict[str, Any]:
    """One peer conversion, parse -> int8 file, in this (fresh) process."""
    sys.path.insert(0, str(REPO))
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Any] = {}
    t0 = time.perf_counter()
    if spec["peer"] in ("onnx2tf", "equalize"):
        cfg, model, meta, groups = _rewritten(spec, out, steps)
    else:
        cfg, model, meta, groups = _parse_and_build(spec, steps)
    npy = _calibrate(spec, cfg, out, steps)
    t = time.perf_counter()
    path = ROUTES[spec["peer"]](spec, cfg, model, meta, groups, npy, out)
    steps["int8_s"] = round(time.perf_counter() - t, 2)
    convert_s = round(time.perf_counter() - t0 + (spec.get("probe_s") or 0.0), 2)
    from darknet2tflite.tflite.inspect import float_ops, input_quantization
    data = path.read_bytes()
    dtype, scale, zp = input_quantization(data)
    npy.unlink(missing_ok=True)
    npy.with_suffix(".json").unlink(missing_ok=True)
    fops = float_ops(data)
    return {"xnnpack_error": xnnpack_error(path), "convert_s": convert_s, "steps": steps,
            "path": str(path), "size_bytes": len(data), "full_integer": not fops,
            "float_ops": fops,
            "input": {"dtype": dtype, "scale": scale, "zp": zp}}


# ------------------------------------------------------------------------------------------
# child: AP of the three on the same held-out photos


def child_score(spec: dict[str, Any]) -> dict[str, Any]:
    """evaluate() (the evaluate stage's scoring: run_tflite heads, Darknet decode, COCO AP)
    with every peer as one of its models; latency is measured elsewhere (threads=())."""
    sys.path.insert(0, str(REPO))
    from darknet2tflite.evaluation.evaluate import evaluate
    models = dict(spec["models"])
    # evaluate() runs every model with XNNPACK; one it cannot prepare is left out (AP null)
    refused = {n: e for n, p in models.items() if (e := xnnpack_error(p))}
    for n in refused:
        models.pop(n)
    shipped = models.pop("shipped")
    rep = evaluate(spec["float32"], shipped, spec["meta"], [Path(p) for p in spec["eval"]],
                   spec["annotations"], spec["out"], extra_models=models, threads=(), draw=0,
                   progress=lambda _m: None)
    names = {"int8": "shipped", **{k: k for k in models}}
    ap = rep.get("ap") or {}
    res: dict[str, Any] = {"images": len(rep["images"]), "peers": {
        n: {"score_error": f"not scored: XNNPACK cannot prepare it ({e})"}
        for n, e in refused.items()}}
    for key, peer in names.items():
        heads = rep["heads"].get(key) or []
        res["peers"][peer] = {
            "AP": (ap.get(key) or {}).get("AP"), "AP50": (ap.get(key) or {}).get("AP50"),
            "min_head_sqnr_db": min((h["sqnr_db"] for h in heads), default=None)}
    res["float32"] = {k: (ap.get("float32") or {}).get(k) for k in ("AP", "AP50")}
    return res


# ------------------------------------------------------------------------------------------
# child: interleaved latency


def _spread(times: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"min": round(min(times), 2), "q1": round(q1, 2), "q3": round(q3, 2),
            "max": round(max(times), 2), "runs": len(times)}


def child_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Per thread count: one LiteRT interpreter per model (XNNPACK default), the same
    pseudo-random uint8 input, ``warmup`` invokes each, then rounds of one invoke per model
    in turn, so a load change hits every model alike.  Fewer rounds (>= ``min_runs``) when
    ``runs`` rounds would exceed ``budget_s`` per model.  A model XNNPACK cannot prepare is
    timed on the builtin kernels (``delegate`` says so: not comparable).  Also each file's
    float ops (none: full integer), so every row says it the same way."""
    import numpy as np
    sys.path.insert(0, str(REPO))
    from darknet2tflite.tflite.inspect import float_ops
    res: dict[str, Any] = {"float_ops": {n: float_ops(Path(p).read_bytes())
                                         for n, p in spec["models"].items()}, "latency": {},
                           "delegate": {}}
    for threads in spec["threads"]:
        its: dict[str, Any] = {}
        for name, path in spec["models"].items():
            try:
                it = _litert(path, threads)
                res["delegate"][name] = "xnnpack"
            except RuntimeError as e:
                it = _litert(path, threads, xnnpack=False)
                res["delegate"][name] = f"builtin kernels (XNNPACK: {str(e).strip()[:200]})"
            d = it.get_input_details()[0]
            info = np.iinfo(d["dtype"]) if d["dtype"] != np.float32 else None
            rng = np.random.default_rng(0)
            x = rng.random(d["shape"], dtype=np.float32) if info is None else \
                rng.integers(info.min, info.max + 1, d["shape"]).astype(d["dtype"])
            it.set_tensor(d["index"], x)
            its[name] = it
        one = {}
        for name, it in its.items():
            warm = []
            for _ in range(spec["warmup"]):
                t = time.perf_counter()
                it.invoke()
                warm.append(time.perf_counter() - t)
            one[name] = min(warm) if warm else 0.0
        runs, slowest = spec["runs"], max(one.values(), default=0.0)
        if slowest > 0 and slowest * runs > spec["budget_s"]:
            runs = max(spec["min_runs"], int(spec["budget_s"] / slowest))
        times: dict[str, list[float]] = {n: [] for n in its}
        for _ in range(runs):
            for name, it in its.items():
                t = time.perf_counter()
                it.invoke()
                times[name].append((time.perf_counter() - t) * 1000.0)
        for name, ts in times.items():
            res["latency"].setdefault(name, {})[str(threads)] = {
                "median": round(statistics.median(ts), 2), **_spread(ts)}
        del its
    return res


CHILDREN = {"peer": child_convert, "peer_score": child_score, "peer_latency": child_latency}


# ------------------------------------------------------------------------------------------
# parent: one model's peers block


def keep_shipped(cold: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Copy what the cold run delivered (model.int8.tflite, model.json, model.float32.tflite,
    plan.json, report.json) aside before later runs of the same store rewrite it; returns
    their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    q = cold["payloads"]["quantize"]["artifacts"]
    rw = cold["payloads"]["rewrite"]["artifacts"]
    src = {"int8": q["tflite_int8"], "meta": q["meta"], "plan": q["plan"],
           "quantize": q["quantize"],
           "report": cold["payloads"]["evaluate"]["artifacts"]["report_json"],
           "float32": rw["tflite_float32"],
           "probe": cold["payloads"]["probe"]["artifacts"]["probe"]}
    names = {"int8": FILES["shipped"], "meta": "model.json", "plan": "plan.json",
             "quantize": "quantize.json", "report": "report.json",
             "float32": "model.float32.tflite", "probe": "probe.json"}
    kept = {}
    for k, p in src.items():
        kept[k] = str(folder / names[k])
        shutil.copyfile(p, kept[k])
    return kept


def shipped_convert_s(cold_stages: dict[str, Any]) -> dict[str, Any]:
    """parse -> shipped int8 in the cold flow: wall span from the parse window's start to the
    end of the shipped fold's quantize window (build ∥ probe overlap, so less than the sum),
    and the sum of those stages' task-body times."""
    rows = [cold_stages.get(s) or {} for s in ("parse", "build", "parity", "probe", "rewrite",
                                               "quantize")]
    if any("t0" not in r for r in rows):
        return {"convert_s": None}
    return {"convert_s": round(rows[-1]["t1"] - rows[0]["t0"], 2),
            "convert_stage_sum_s": round(sum(r["flow_s"] for r in rows), 2)}


def bench_peers(name: str, conf: dict[str, Any], params: dict[str, Any],
                shipped: dict[str, Any], cold_stages: dict[str, Any], work: Path,
                args: Any, run_child: Callable[..., dict[str, Any]],
                log: Callable[[str], None], annotations: str | None) -> dict[str, Any]:
    """``models.<name>.peers``: {shipped, plain, onnx2tf} with FIELDS each, plus how they
    were measured."""
    want = [p for p in PEERS if p in args.peers and p in conf.get("peers", PEERS)]
    folder = Path(shipped["int8"]).parent
    plan = json.loads(Path(shipped["plan"]).read_text(encoding="utf-8"))
    peers: dict[str, dict[str, Any]] = {p: dict.fromkeys(FIELDS) for p in want}
    files: dict[str, str] = {}
    if "shipped" in peers:
        peers["shipped"].update(shipped_convert_s(cold_stages),
                                size_bytes=Path(shipped["int8"]).stat().st_size,
                                path=shipped["int8"])
        files["shipped"] = shipped["int8"]
    for peer in (p for p in want if p in ROUTES):
        log(f"{name}: peer {peer}: convert (child process)")
        r = run_child("peer", {"peer": peer, "cfg": params["cfg"], "weights": params["weights"],
                               "names": params.get("names"),
                               "calibration": params["calibration"],
                               "calibration_limit": params["calibration_limit"],
                               "exclude": plan["exclude"],
                               "calibration_images": plan["calibration"]["image_names"],
                               "probe": shipped["probe"],
                               "probe_s": (cold_stages.get("probe") or {}).get("flow_s")
                               if peer in ("onnx2tf", "plain", "equalize") else None,
                               "out": str(folder / peer)}, work, f"peer-{peer}")
        row = peers[peer]
        row.update({k: r.get(k) for k in ("convert_s", "size_bytes", "path", "steps",
                                          "full_integer", "float_ops", "input",
                                          "xnnpack_error", "error")})
        row["peak_rss_mb"] = r.get("peak_rss_mb")
        if "error" in r:
            log(f"{name}: peer {peer}: FAILED {r['error'][:200]}")
        else:
            files[peer] = r["path"]
            log(f"{name}: peer {peer}: {r['convert_s']} s, {r['size_bytes']} bytes")
    score: dict[str, Any] = {"annotations": annotations, "images": len(plan["eval"])}
    if annotations and files:
        log(f"{name}: peers: AP on the {len(plan['eval'])} held-out photos")
        s = run_child("peer_score", {"models": files, "float32": shipped["float32"],
                                     "meta": shipped["meta"], "eval": plan["eval"],
                                     "annotations": annotations,
                                     "out": str(folder / "score")}, work, "peer-score")
        if "error" in s:
            score["error"] = s["error"]
        else:
            score.update(float32=s["float32"], images=s["images"])
            for peer, v in s["peers"].items():
                peers[peer].update(v)
    if files:
        log(f"{name}: peers: latency, interleaved ({', '.join(files)})")
        lat = run_child("peer_latency", {"models": files, "threads": [1, 2],
                                         "runs": args.latency_runs, "warmup": 3, "min_runs": 5,
                                         "budget_s": args.latency_budget}, work, "peer-latency")
        if "error" in lat:
            score["latency_error"] = lat["error"]
        else:
            for peer, by_t in lat["latency"].items():
                fops = lat["float_ops"][peer]
                peers[peer].update(full_integer=not fops, float_ops=fops,
                                   latency_delegate=lat["delegate"][peer],
                                   latency_ms_1thread=by_t["1"]["median"],
                                   latency_ms_2threads=by_t["2"]["median"],
                                   latency_spread_ms={t: {k: v for k, v in d.items()
                                                          if k != "median"}
                                                      for t, d in by_t.items()})
            base = peers.get("shipped") or {}
            for row in peers.values():
                if base.get("latency_ms_1thread") and row.get("latency_ms_1thread"):
                    row["latency_vs_shipped"] = {
                        t: round(row[f"latency_ms_{t}"] / base[f"latency_ms_{t}"], 3)
                        for t in ("1thread", "2threads")}
    return {"peers": peers, "peers_setup": {
        "calibration_images": len(plan["calibration"]["image_names"]),
        "eval_images": len(plan["eval"]), **score}}


def table_lines(models: dict[str, Any]) -> list[str]:
    """The printed peers table (one row per model and peer)."""
    rows = [(n, r) for n, r in models.items() if r.get("peers")]
    if not rows:
        return []
    L = ["", ("== Peers: the shipped int8 vs plain TFLiteConverter int8 vs onnx2tf (same "
              "photos; latency median ms, interleaved in one process, [q1-q3]; x = / shipped) ==")]
    L.append(f"{'model':12s} {'peer':8s} {'1t ms':>8s} {'[q1-q3]':>15s} {'2t ms':>8s} "
             f"{'x 1t':>5s} {'x 2t':>5s} {'convert s':>9s} {'KiB':>7s} {'AP':>6s} {'AP50':>6s} "
             "full int8")
    notes: list[str] = []
    for n, r in rows:
        for peer, p in r["peers"].items():
            if p.get("error"):
                L.append(f"{n:12s} {peer:8s} ERROR {str(p['error'])[:90]}")
                continue
            if p.get("xnnpack_error"):
                notes.append(f"{n} {peer}: XNNPACK cannot prepare it ({p['xnnpack_error'][:80]}): "
                             "latency on the builtin kernels, not scored")
            sp = (p.get("latency_spread_ms") or {}).get("1") or {}
            iqr = f"[{sp['q1']:.1f}-{sp['q3']:.1f}]" if sp else "-"
            vs = p.get("latency_vs_shipped") or {}
            L.append(f"{n:12s} {peer:8s} {_f(p.get('latency_ms_1thread')):>8s} {iqr:>15s} "
                     f"{_f(p.get('latency_ms_2threads')):>8s} {_f(vs.get('1thread'), '.2f'):>5s} "
                     f"{_f(vs.get('2threads'), '.2f'):>5s} {_f(p.get('convert_s')):>9s} "
                     f"{_f(p['size_bytes'] / 1024 if p.get('size_bytes') else None, '.0f'):>7s} "
                     f"{_f(p.get('AP'), '.2f'):>6s} {_f(p.get('AP50'), '.2f'):>6s} "
                     + ("-" if p.get("full_integer") is None else "yes" if p["full_integer"]
                        else "NO (float " + ",".join(sorted(set(p.get("float_ops") or []))) + ")"))
        setup = r.get("peers_setup") or {}
        L.append(f"{'':12s} calibrated on {setup.get('calibration_images')} photos; AP on "
                 f"{setup.get('images')} held-out photos"
                 + ("" if setup.get("annotations") else " (no annotations: AP not scored)")
                 + (f"; float32 AP {setup['float32'].get('AP')}" if setup.get("float32") else ""))
    return L + notes


def _f(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)
