"""What every stage task shares: store keys, the store-aware cache policy, the task body.

Two caches, one truth.  The :class:`~darknet2tflite.store.artifacts.ArtifactStore` holds the artifacts
(content-addressed, verified on every lookup).  Prefect's result cache only holds each task's
small return value: ``{"stage", "key", "artifacts": {name: path-string}}``, pointing into the
store.  They are tied together so Prefect can never hand out paths the store cannot back:

* :class:`StoreCachePolicy` computes the Prefect cache key from the *same* store key
  (``<stage>-<stage_key(...)>``: content of the input files, options, PIPELINE_VERSION), and
  before returning it verifies the store entry (every artifact re-hashed against its
  manifest) and that Prefect's record, if any, names exactly that entry's files.  Otherwise
  (entry missing or corrupt, or a record with stale paths after the store moved) it deletes
  Prefect's record for that key, so the task body runs instead of Prefect's cache answering.
  (Where the record cannot be deleted, i.e. non-local result storage, it returns no key at
  all: no Prefect caching for that run.)
* :func:`run_stage` (the task body) looks the entry up again and only on a miss runs the
  library stage function through ``store.get_or_create`` (atomic publish under a lock).  When
  the store already had the entry (published by another run, or Prefect's record was lost) it
  returns ``Completed(name="Cached")``, so the UI says "Cached" exactly when no work was done:
  either Prefect's own cache hit (its engine names that state "Cached") or ours.
* ``refresh=True`` (``--from-stage``) discards the store entry and recomputes; the flow pairs it
  with ``refresh_cache=True`` so Prefect's lookup is skipped and its record overwritten.

Task return values are strings and dicts only (never bytes), serialised as JSON into
``<store>/prefect-results`` (see :func:`result_storage`), never ``~/.prefect``.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flows._settings  # noqa: F401  (Prefect env defaults before `import prefect`)

from darknet2tflite.errors import UserError
from darknet2tflite.paths import store_root
from darknet2tflite.stages import STAGES  # noqa: F401  (the flow reads it from here)
from darknet2tflite.stages.payload import artifact, read_json  # noqa: F401  (for the tasks)
from darknet2tflite.store.artifacts import ArtifactStore, stage_key

from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.states import Completed, State

RESULTS_DIRNAME = "prefect-results"

#: (stage, key) of every stage body that actually ran its producer in this process; a
#: diagnostic for tests and the CLI ("nothing was recomputed"), Prefect-independent.
PRODUCED: list[tuple[str, str]] = []
_produced_lock = threading.Lock()

KeyParts = Callable[[Mapping[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


def result_storage(store: str | os.PathLike[str] | None) -> Path:
    """Where Prefect persists task results for this store (a Path = LocalFileSystem)."""
    p = store_root(store) / RESULTS_DIRNAME
    p.mkdir(parents=True, exist_ok=True)
    return p


def prefect_key(stage: str, key: str) -> str:
    return f"{stage}-{key}"


def log(msg: str) -> None:
    try:
        get_run_logger().info(msg)
    except MissingContextError:
        pass


@dataclasses.dataclass
class StoreCachePolicy(CachePolicy):
    """Prefect cache key = the artifact store key, valid only while the store entry is.

    ``key_parts(task parameters) -> (inputs, options)`` is the stage's own key recipe, the same
    one the task body uses, so the two keys cannot drift apart.
    """

    stage: str = ""
    key_parts: KeyParts | None = None

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        assert self.key_parts is not None
        key = stage_key(self.stage, *self.key_parts(inputs))
        pkey = prefect_key(self.stage, key)
        arts = ArtifactStore(store_root(inputs.get("store"))).lookup(self.stage, key)
        # Prefect may answer from its cache only with exactly what the store holds now: not
        # when the entry is missing or corrupt (lookup deleted it), nor with a record whose
        # paths went stale (store moved, or mounted elsewhere on another worker host).
        if arts is None or _record_artifacts(task_ctx, pkey) not in (
                None, {k: str(v) for k, v in arts.items()}):
            if not _drop_record(task_ctx, pkey):
                return None
        return pkey


def _record_artifacts(task_ctx: TaskRunContext, pkey: str) -> Any:
    """The artifacts dict of Prefect's persisted result for ``pkey``; None if there is no
    record, a sentinel string if there is one we cannot read (then it must go too)."""
    rs = task_ctx.result_store
    if not rs.exists(pkey):
        return None
    try:
        return rs.read(pkey).result.get("artifacts")
    except Exception:  # noqa: BLE001 - an unreadable record is as good as a stale one
        return "<unreadable>"


def _drop_record(task_ctx: TaskRunContext, pkey: str) -> bool:
    """Delete Prefect's persisted result for ``pkey``; False if we cannot (remote storage)."""
    rs = task_ctx.result_store
    storage = rs.metadata_storage if rs.metadata_storage is not None else rs.result_storage
    basepath = getattr(storage, "basepath", None)
    if storage is None or type(storage).__name__ != "LocalFileSystem" or not basepath:
        return False
    try:
        (Path(basepath).expanduser() / pkey).unlink()
    except FileNotFoundError:
        pass
    return True


def run_stage(stage: str, store: str | None, key_inputs: dict[str, Any],
              options: dict[str, Any], produce: Callable[[Path], Mapping[str, Any]], *,
              refresh: bool = False, require_cached: bool = False) -> dict[str, Any] | State:
    """Task body: store lookup, else run ``produce(tmpdir)`` and publish atomically."""
    st = ArtifactStore(store_root(store))
    try:
        key = stage_key(stage, key_inputs, options)
    except FileNotFoundError as e:
        raise UserError(f"{stage}: {e}") from None
    if refresh:
        if st.discard(stage, key):
            log(f"{stage}: discarded store entry {key[:12]} (refresh)")
    elif require_cached and st.lookup(stage, key) is None:
        raise UserError(f"{stage}: no stored result for these inputs in {st.root}; "
                        "run the whole conversion once before using --from-stage")

    def producing(tmp: Path) -> Mapping[str, Any]:
        log(f"{stage}: computing (store key {key[:12]})")
        with _produced_lock:
            PRODUCED.append((stage, key))
        return produce(tmp)

    arts, was_cached = st.get_or_create(stage, key, producing)
    payload = {"stage": stage, "key": key, "artifacts": {k: str(v) for k, v in arts.items()}}
    if was_cached:
        return Completed(name="Cached", data=payload,
                         message=f"{stage}: reused verified store entry {key[:12]}")
    return payload


# Options every stage task is declared with; the per-run bits (result storage under the store
# and refresh_cache) are set by the flow with ``Task.with_options``.
TASK_OPTIONS: dict[str, Any] = dict(persist_result=True, result_serializer="json",
                                    cache_result_in_memory=False)
