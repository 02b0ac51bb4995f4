"""Runs executed for a deployment (``darknet2tflite serve``, a Prefect worker) keep the
server's terminal as readable as the CLI's: TensorFlow/absl/Keras/converter output of the
run goes to ``<store>/.logs/`` (see darknet2tflite/console.py), the stage lines stay.

Only such runs: each has a process of its own (the runner starts one per flow run), whereas a
flow called in-process (the CLI, which diverts itself, or a test) shares its caller's
streams.  ``DARKNET2TFLITE_DEBUG=1`` in the serving environment keeps everything on it.
"""
from __future__ import annotations

import logging
import os

from darknet2tflite.errors import UserError

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


class _NoUserErrorTracebacks(logging.Filter):
    """Console only: a UserError is reported by the CLI as one line; drop Prefect's
    traceback-carrying copies of it (the UI/API log handler still records them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UserError)


def quiet_user_error_tracebacks() -> None:
    for logger in [logging.getLogger()] + [
            logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
            if n == "prefect" or n.startswith("prefect.")]:
        for h in getattr(logger, "handlers", []):
            if type(h).__name__ == "PrefectConsoleHandler" and \
                    not any(isinstance(f, _NoUserErrorTracebacks) for f in h.filters):
                h.addFilter(_NoUserErrorTracebacks())
