"""Task runner choice: local threads (default) or Dask (local cluster or a scheduler address).

``spec`` values (also read from ``$DARKNET2TFLITE_TASK_RUNNER``):

* ``threads`` (default): :class:`prefect.task_runners.ThreadPoolTaskRunner`; independent stages
  (parity and probe, the float and int8 variants) run concurrently in one process.
* ``dask``: :class:`prefect_dask.DaskTaskRunner` on a temporary ``distributed.LocalCluster``
  (worker processes, one thread each: TensorFlow inside each worker already uses every core).
* ``tcp://host:8786`` (or ``tls://...``): a running Dask scheduler, e.g. ``dask scheduler`` on one
  host and ``dask worker tcp://host:8786`` on several; every worker needs this package and
  the input files at the same paths (a shared filesystem for cfg, weights, images and store).
"""
from __future__ import annotations

import os

from . import _settings  # noqa: F401

from darknet2tflite.errors import UserError

ENV = "DARKNET2TFLITE_TASK_RUNNER"
THREAD_WORKERS = 2


def runner_spec(spec: str | None = None) -> str:
    return (spec or os.environ.get(ENV) or "threads").strip()


def check_spec(spec: str) -> str:
    """``spec`` if it names a runner this module can make (raises UserError otherwise);
    checked by the CLI before anything heavy is imported."""
    s = spec.strip()
    if s in ("threads", "thread", "local", "dask") or s.startswith(("tcp://", "tls://", "ucx://")):
        return s
    raise UserError(f"task runner '{spec}': expected threads, dask or a Dask scheduler address "
                    "like tcp://host:8786")


def make_task_runner(spec: str | None = None):
    spec = check_spec(runner_spec(spec))
    if spec in ("threads", "thread", "local"):
        from prefect.task_runners import ThreadPoolTaskRunner
        return ThreadPoolTaskRunner(max_workers=THREAD_WORKERS)
    if spec == "dask":
        from prefect_dask import DaskTaskRunner
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": 2, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    if spec.startswith(("tcp://", "tls://", "ucx://")):
        from prefect_dask import DaskTaskRunner
        return DaskTaskRunner(address=spec)
    raise AssertionError(spec)  # check_spec let through a spec this function does not build
