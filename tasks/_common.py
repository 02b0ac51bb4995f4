"""What every stage task shares: store keys, the task body, the task options.

One cache, one truth: the :class:`~darknet2tflite.store.artifacts.ArtifactStore` (content-addressed,
every artifact re-hashed against its manifest on every lookup).  Prefect caches and persists
nothing for these tasks (``cache_policy=NO_CACHE``, ``persist_result=False``): a result
record on disk names its own serializer, and Prefect would unpickle one that names
``pickle``, so whoever can write to a shared store could run code in every later conversion.
The store holds only files whose bytes it verifies, and the task body decides:

* :func:`run_stage` looks the entry up and only on a miss runs the library stage function
  through ``store.get_or_create`` (atomic publish under a lock).  When the store already had
  the entry it returns ``Completed(name="Cached")``, so the UI says "Cached" exactly when no
  work was done.
* ``refresh=True`` (``--from-stage``) discards the store entry and recomputes.

Task return values are plain strings and dicts, handed between tasks in memory.
"""
from __future__ import annotations

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
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.states import Completed, State


#: (stage, key) of every stage body that actually ran its producer in this process; a
#: diagnostic for tests and the CLI ("nothing was recomputed"), Prefect-independent.
PRODUCED: list[tuple[str, str]] = []
_produced_lock = threading.Lock()


def log(msg: str) -> None:
    try:
        get_run_logger().info(msg)
    except MissingContextError:
        pass


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


# Options every stage task is declared with: no Prefect cache and no persisted result (the
# store is the only cache; see the module docstring).
TASK_OPTIONS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)
