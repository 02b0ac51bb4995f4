"""Runs executed for a deployment (``darknet2tflite serve``, a Prefect worker) keep the
server's terminal as readable as the CLI's: TensorFlow/absl/Keras/converter output of the
run goes to ``<store>/.logs/`` (see darknet2tflite/console.py), the stage lines stay.

Only such runs: each has a process of its own (the runner starts one per flow run), whereas a
flow called in-process (the CLI, which diverts itself, or a test) shares its caller's
streams.  ``DARKNET2TFLITE_DEBUG=1`` in the serving environment keeps everything on it.
"""
from __future__ import annotations

import os

DEBUG_ENV = "DARKNET2TFLITE_DEBUG"


def divert_served_run(store: str, command: str, label: str) -> None:
    from prefect import get_run_logger
    from prefect.runtime import deployment

    from darknet2tflite import console
    if not deployment.id or os.environ.get(DEBUG_ENV) == "1" or console.current_log():
        return
    try:
        path = console.divert(console.log_path(store, command, label))
    except OSError:
        return
    get_run_logger().info("TensorFlow/converter output of this run: %s", path)
