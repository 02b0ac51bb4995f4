"""`darknet2tflite convert`: run the Prefect flow flows/convert.py:convert in-process.

Without ``PREFECT_API_URL`` the run is recorded by Prefect's embedded (ephemeral) server with a
project-local ``PREFECT_HOME`` (see flows/_settings.py); with it, the run shows up in that
server's UI.  Every stage is cached in the artifact store, so a second identical call does no
work, and ``--from-stage STAGE`` recomputes STAGE and every later stage while taking the earlier
ones from the store.

Input mistakes are checked here first, so they print one line and exit 2 before Prefect and
TensorFlow are even imported.  Only argparse-level code runs at import: the library never
imports prefect.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from darknet2tflite.errors import UserError
from darknet2tflite.options import OPTIONS, check_parameters
from darknet2tflite.stages import STAGES  # noqa: F401  (the stage list, for callers of this module)


def parameters_from_args(args: argparse.Namespace) -> dict:
    """The flow parameters (absolute paths) for a parsed `convert` command line."""
    return check_parameters({o.name: getattr(args, o.name) for o in OPTIONS if o.cli},
                            cli=True)


class _NoUserErrorTracebacks(logging.Filter):
    """Console only: a UserError is reported by the CLI as one line; drop Prefect's
    traceback-carrying copies of it (the UI/API log handler still records them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UserError)


def _quiet_user_error_tracebacks() -> None:
    for logger in [logging.getLogger()] + [
            logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
            if n == "prefect" or n.startswith("prefect.")]:
        for h in getattr(logger, "handlers", []):
            if type(h).__name__ == "PrefectConsoleHandler" and \
                    not any(isinstance(f, _NoUserErrorTracebacks) for f in h.filters):
                h.addFilter(_NoUserErrorTracebacks())


def import_flow() -> Any:
    """``flows.convert.convert``, imported with the garbage collector paused.

    Why: the import (Prefect, pydantic models) only allocates, and the collector walking those
    objects again and again is pure cost; ``gc.freeze()`` afterwards keeps them out of every
    later collection, which shortened a fully cached run by 0.3 s here (3.9 -> 3.6 s).
    """
    import gc
    gc.disable()
    try:
        from flows.convert import convert
    finally:
        gc.freeze()
        gc.enable()
    return convert


def run_convert(args: argparse.Namespace) -> int:
    params = parameters_from_args(args)
    if getattr(args, "quiet", False):
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows import _embedded
    if getattr(args, "task_runner", None):
        from flows.runners import ENV, check_spec
        os.environ[ENV] = check_spec(args.task_runner)  # read when the flow module loads
    _embedded.start_early()  # the server starts while this process imports the flow

    convert = import_flow()
    _embedded.wait_ready()
    _quiet_user_error_tracebacks()
    if not getattr(args, "quiet", False):
        print(f"darknet2tflite: running flow 'convert' on {_embedded.describe()}", flush=True)
    with _embedded.flow_settings():
        state = convert(**params, return_state=True)
    if not state.is_completed():
        # re-raise the flow's exception: a UserError becomes one line + exit 2 in cli.main
        state.result(raise_on_failure=True)
        raise RuntimeError(f"flow run ended in state {state.name}: {state.message}")
    result = state.result()
    for name, st in result["stages"].items():
        print(f"  {name:18s} {st['state']}")
    out = Path(result["out"])
    print(f"wrote {out}: {', '.join(result['deliverables'])}")
    print(f"report: {out / 'report.md'}")
    return 0
