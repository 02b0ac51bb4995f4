"""The deployments ``darknet2tflite serve`` serves: convert (on demand) and batch (cron)."""
from __future__ import annotations

from typing import Any

from . import _settings  # noqa: F401

from prefect.deployments.runner import EntrypointType, RunnerDeployment

DEFAULT_BATCH_CRON = "0 3 * * *"  # nightly at 03:00


def build_deployments(*, batch_parameters: dict[str, Any] | None = None,
                      cron: str = DEFAULT_BATCH_CRON, timezone: str | None = None,
                      concurrency_limit: int | None = None
                      ) -> list[RunnerDeployment]:
    """``convert/convert`` (no schedule: triggered from the UI / CLI with parameters) and
    ``batch/batch`` with a cron schedule.  The batch schedule is only active when its
    required parameters (``source``, ``out``) are given; otherwise it is registered paused
    (visible, and runnable by hand with parameters, but not firing every night into errors).
    Module-path entrypoints (``flows.convert.convert``) so serving works from any directory.

    The task runner is not a deployment property here: each served run is a subprocess that
    imports flows/convert.py, whose ``@flow`` picks the runner from
    ``$DARKNET2TFLITE_TASK_RUNNER`` (inherited from ``darknet2tflite serve --task-runner``).
    """
    from prefect.schedules import Cron

    from .batch import batch
    from .convert import convert

    tags = ["darknet2tflite"]
    bp = {k: v for k, v in (batch_parameters or {}).items() if v is not None}
    ready = bool(bp.get("source") and bp.get("out"))
    conv = convert.to_deployment(
        name="convert", tags=tags, entrypoint_type=EntrypointType.MODULE_PATH,
        concurrency_limit=concurrency_limit,
        description="Darknet cfg+weights -> calibrated int8 TFLite + report (one model).")
    bat = batch.to_deployment(
        name="batch", tags=tags, entrypoint_type=EntrypointType.MODULE_PATH,
        schedules=[Cron(cron, timezone=timezone or "UTC", active=ready)],
        parameters=bp, concurrency_limit=1,
        description="Convert every model of a folder or YAML manifest (subflow per model).")
    return [conv, bat]
