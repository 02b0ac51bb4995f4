"""Prefect flow ``batch``: convert every model of a folder or YAML manifest, one subflow each.

``source`` is either

* a folder: every ``<stem>.cfg`` paired with ``<stem>.weights`` in the same folder (and
  ``<stem>.names`` if present); or
* a YAML manifest (``.yaml`` / ``.yml``)::

      defaults:                      # optional, applied to every model
        calibration: /data/calib
        calibration_limit: 200
      models:                        # or the list alone at top level
        - name: yolov4-tiny
          cfg: cfg/yolov4-tiny.cfg   # relative paths: relative to the manifest
          weights: weights/yolov4-tiny.weights
          variants: float16
        - {name: yolov3-tiny, cfg: ..., weights: ..., calibration: ...}

Each model runs as a ``convert`` subflow (own flow run, own stages, own artifacts) into
``out/<name>``; a failing model is recorded and the batch goes on.  The run publishes a
``batch-summary`` table artifact and ends Failed if any model failed, with the summary as data.
"""
from __future__ import annotations

import flows._settings  # noqa: F401  (Prefect env defaults before `import prefect`)

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed

from darknet2tflite.int8.augment import MIRROR_BELOW
from darknet2tflite.int8.channel_split import MAC_BUDGET
from darknet2tflite.errors import UserError
from darknet2tflite.options import MANIFEST_KEYS, PATH_KEYS
from flows.convert import convert
from flows.runners import make_task_runner

#: manifest keys a model entry may set (the convert flow's parameters; options.py)
MODEL_KEYS = MANIFEST_KEYS


def discover_models(source: str | Path, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"name", "params": {...convert parameters except out/store}} or {"name", "error"}]."""
    src = Path(source)
    if src.is_dir():
        return _from_folder(src, defaults)
    if src.is_file() and src.suffix.lower() in (".yaml", ".yml"):
        return _from_manifest(src, defaults)
    raise ValueError(f"batch source {src}: expected a folder of cfg+weights pairs or a "
                     ".yaml/.yml manifest")


def _from_folder(folder: Path, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    models = []
    for cfg in sorted(folder.glob("*.cfg")):
        weights = cfg.with_suffix(".weights")
        entry: dict[str, Any] = {"name": cfg.stem}
        if not weights.is_file():
            entry["error"] = f"no {weights.name} next to {cfg.name}"
        else:
            names = cfg.with_suffix(".names")
            entry["params"] = {**defaults, "cfg": str(cfg.resolve()),
                               "weights": str(weights.resolve()),
                               **({"names": str(names.resolve())} if names.is_file() else {})}
        models.append(entry)
    if not models:
        raise ValueError(f"batch source {folder}: no .cfg files")
    return models


def _from_manifest(path: Path, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    file_defaults: dict[str, Any] = {}
    if isinstance(doc, dict):
        from darknet2tflite.inputs import check_manifest_defaults
        file_defaults = check_manifest_defaults(doc.get("defaults"), path, MODEL_KEYS)
        doc = doc.get("models")
    if not isinstance(doc, list) or not doc:
        raise ValueError(f"{path}: expected a list of models (or a mapping with 'models:')")
    base = path.parent
    models = []
    seen: set[str] = set()
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            models.append({"name": f"#{i}", "error": f"{path}: entry {i} is not a mapping"})
            continue
        merged = {**defaults, **_resolve(file_defaults, base), **_resolve(item, base)}
        name = str(merged.pop("name", None) or Path(str(merged.get("cfg", f"model{i}"))).stem)
        unknown = sorted(set(item) - set(MODEL_KEYS))
        missing = [k for k in ("cfg", "weights") if not merged.get(k)]
        if not _safe_name(name):
            models.append({"name": name, "error": f"{path}: entry {i}: model name {name!r} "
                           "must be a plain folder name (it becomes <out>/<name>)"})
        elif name in seen:
            models.append({"name": name, "error": f"{path}: duplicate model name {name!r}"})
        elif unknown or missing:
            models.append({"name": name, "error": f"{path}: entry {name!r}: "
                           + "; ".join(filter(None, [
                               f"unknown keys {', '.join(unknown)}" if unknown else "",
                               f"missing {', '.join(missing)}" if missing else ""]))})
        else:
            models.append({"name": name, "params": merged})
        seen.add(name)
    return models


def _safe_name(name: str) -> bool:
    """A model name becomes the folder ``out/<name>``: one plain path component only."""
    return (bool(name) and name not in (".", "..") and not name.startswith(".")
            and not any(c in name for c in "/\\\0") and len(name) <= 200)


def _resolve(d: dict[str, Any], base: Path) -> dict[str, Any]:
    return {k: (str((base / v).resolve()) if k in PATH_KEYS and isinstance(v, str) else v)
            for k, v in d.items()}


class BatchFailure(UserError, Mapping):
    """The data of a Failed batch run: the summary, as an exception.

    Prefect turns a Failed state's data into the exception it raises; a plain dict there made
    its engine log "TypeError: Unexpected result for failed state ... dict cannot be resolved
    into an exception" with a traceback.  This is an exception *and* reads like the summary
    dict (``state.result(raise_on_failure=False)["models"]``).  A UserError: its message is
    the whole story (which models failed; each one's error is in the summary), so the
    console filter drops the traceback a served run's engine logs when it re-raises it."""

    exit_code = 1

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary

    def __getitem__(self, key: str) -> Any:
        return self.summary[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.summary)

    def __len__(self) -> int:
        return len(self.summary)

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchFailure, (str(self), self.summary))


def _one_line(exc: Any) -> str:
    text = str(exc) if isinstance(exc, BaseException) else repr(exc)
    return " ".join(text.split())[:300]


@flow(name="batch", task_runner=make_task_runner(), persist_result=False)
def batch(source: str, out: str, calibration: Optional[str] = None,
          store: Optional[str] = None, names: Optional[str] = None,
          input_type: Literal["uint8", "int8"] = "uint8", calibration_limit: int = 500,
          float_fallback: int = 0, channel_split: float = MAC_BUDGET, equalize: bool = False,
          calibration_mirror: int = MIRROR_BELOW, variants: str = "",
          backend: Literal["direct", "onnx2tf", "both"] = "direct",
          eval_annotations: Optional[str] = None, eval_images: Optional[str] = None,
          images: Optional[str] = None, target: str = "cpu", allow_approximate: str = "",
          npu_only: bool = False):
    """Convert every model of ``source`` (folder of cfg+weights pairs, or YAML manifest)
    into ``out/<name>/``, each as a ``convert`` subflow sharing one artifact store."""
    from flows._served import quiet_user_error_tracebacks
    quiet_user_error_tracebacks()  # a failing model: one line in the summary, no traceback
    logger = get_run_logger()
    defaults = {k: v for k, v in dict(
        calibration=calibration, names=names, input_type=input_type,
        calibration_limit=calibration_limit, float_fallback=float_fallback,
        channel_split=channel_split, equalize=equalize, calibration_mirror=calibration_mirror,
        variants=variants,
        backend=backend, eval_annotations=eval_annotations, eval_images=eval_images,
        images=images, target=target, allow_approximate=allow_approximate,
        npu_only=npu_only).items() if v is not None}
    from flows._served import divert_served_run
    from tasks._common import store_root
    divert_served_run(str(store_root(store)), "batch", Path(source).stem)
    models = discover_models(source, defaults)
    logger.info("batch of %d model(s) from %s", len(models), source)

    rows: list[dict[str, Any]] = []
    for m in models:
        row: dict[str, Any] = {"model": m["name"], "state": "Failed", "cached stages": "",
                               "int8 model": "", "report": "", "error": ""}
        if "error" in m:
            row["error"] = m["error"]
        elif not _safe_name(m["name"]):  # becomes out/<name>: must not escape or hide
            row["error"] = f"model name {m['name']!r} is not a plain folder name"
        elif not m["params"].get("calibration"):
            row["error"] = "no calibration folder (batch parameter or manifest entry)"
        else:
            target_out = str(Path(out) / m["name"])
            sub = convert.with_options(flow_run_name=f"convert-{m['name']}")
            state = sub(**m["params"], name=m["name"], out=target_out, store=store,
                        return_state=True)
            row["state"] = state.name
            if state.is_completed():
                res = state.result()
                n_cached = sum(s["state"] == "Cached" for s in res["stages"].values())
                row.update({"cached stages": f"{n_cached}/{len(res['stages'])}",
                            "int8 model": str(Path(target_out) / "model.int8.tflite"),
                            "report": res["report"]})
            else:
                row["error"] = _one_line(state.result(raise_on_failure=False))
        if row["error"]:
            logger.warning("%s failed: %s", m["name"], row["error"])
        rows.append(row)

    n_ok = sum(r["state"] == "Completed" for r in rows)
    create_table_artifact(key="batch-summary", table=rows,
                          description=f"batch {source}: {n_ok}/{len(rows)} model(s) converted")
    summary = {"source": str(source), "out": str(out), "completed": n_ok,
               "failed": len(rows) - n_ok, "models": rows}
    if n_ok < len(rows):
        message = (f"{len(rows) - n_ok}/{len(rows)} model(s) failed: "
                   + ", ".join(r["model"] for r in rows if r["state"] != "Completed"))
        return Failed(message=message, data=BatchFailure(message, summary))
    return Completed(message=f"{n_ok} model(s) converted", data=summary)
