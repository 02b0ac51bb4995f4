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
import os
from pathlib import Path
from typing import Any

from darknet2tflite.options import OPTIONS, check_parameters
from darknet2tflite.stages import STAGES  # noqa: F401  (the stage list, for callers of this module)


def parameters_from_args(args: argparse.Namespace) -> dict:
    """The flow parameters (absolute paths) for a parsed `convert` command line."""
    return check_parameters({o.name: getattr(args, o.name) for o in OPTIONS if o.cli},
                            cli=True)


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


def _echo_verdict(report_json: Path) -> None:
    """The report's first line, on the terminal (the result a user reads first)."""
    import json
    from darknet2tflite import console
    from darknet2tflite.evaluation.agreement import verdict_line
    try:
        fa = json.loads(report_json.read_text(encoding="utf-8")).get("float_agreement")
    except (OSError, ValueError):
        return
    if fa:
        console.echo(verdict_line(fa).replace("**", ""))


def start_prefect(args: argparse.Namespace) -> bool:
    """Environment for a flow run in this process (log level, task runner), then the embedded
    server's start, which overlaps the caller's flow import; returns whether ``--quiet``."""
    quiet = getattr(args, "quiet", False)
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows import _embedded
    if getattr(args, "task_runner", None):
        from flows.runners import ENV, check_spec
        os.environ[ENV] = check_spec(args.task_runner)  # read when the flow module loads
    _embedded.start_early()
    return quiet


def prefect_ready(flow_name: str, quiet: bool) -> None:
    """Wait for the server, keep UserError tracebacks off the console, say where runs go."""
    from darknet2tflite import console
    from flows import _embedded
    from flows._served import quiet_user_error_tracebacks
    _embedded.wait_ready()
    quiet_user_error_tracebacks()
    console.record_logger("prefect")
    if not quiet:
        console.echo(f"darknet2tflite: running flow '{flow_name}' on {_embedded.describe()}")


def echo_log_path(quiet: bool) -> None:
    from darknet2tflite import console
    log = console.current_log()
    if log is not None and not quiet:
        console.echo(f"log: {log}")


def run_convert(args: argparse.Namespace) -> int:
    from darknet2tflite import console
    from flows import _embedded
    params = parameters_from_args(args)
    quiet = start_prefect(args)
    convert = import_flow()
    prefect_ready("convert", quiet)
    with _embedded.flow_settings():
        state = convert(**params, return_state=True)
    if not state.is_completed():
        # re-raise the flow's exception: a UserError becomes one line + exit 2 in cli.main
        state.result(raise_on_failure=True)
        raise RuntimeError(f"flow run ended in state {state.name}: {state.message}")
    result = state.result()
    if not quiet:
        for name, st in result["stages"].items():
            console.echo(f"  {name:18s} {st['state']}")
    out = Path(result["out"])
    console.echo(f"wrote {out}: {', '.join(result['deliverables'])}")
    console.echo(f"report: {out / 'report.md'}")
    if not quiet:
        _echo_verdict(out / "report.json")
    echo_log_path(quiet)
    return 0
