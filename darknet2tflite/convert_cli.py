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

from .errors import UserError
from .inputs import check_convert_inputs
from .options import check as check_options, cli_flag, variant_list

# A copy of tasks._common.STAGES, so a bad --from-stage fails before Prefect and TensorFlow
# are imported (tests/test_flows.py checks they agree).
STAGES = ("parse", "build", "parity", "probe", "rewrite", "quantize", "evaluate", "report")


def missing_file_hint(p: str) -> str:
    """Where a missing ``.weights`` file comes from (the rest of a one-line error)."""
    if not str(p).endswith(".weights"):
        return ""
    from .fetch import KNOWN_WEIGHTS
    stem = Path(p).stem
    if stem in KNOWN_WEIGHTS:
        return f"; get it with `darknet2tflite weights fetch {stem}`"
    return ("; Darknet weights come with the model that was trained (darknet's "
            "backup/ folder); official ones: `darknet2tflite weights fetch NAME` for "
            f"{', '.join(KNOWN_WEIGHTS)}")


def _file(p: str | None, what: str) -> str | None:
    if p is None:
        return None
    path = Path(p)
    if not path.is_file():
        raise UserError(f"{what} {p}: no such file{missing_file_hint(p)}")
    return str(path.resolve())


def _dir(p: str | None, what: str) -> str | None:
    if p is None:
        return None
    path = Path(p)
    if not path.is_dir():
        raise UserError(f"{what} {p}: no such folder")
    return str(path.resolve())


def output_dir(p: str | None, what: str) -> str | None:
    """Absolute path of a folder this run will create or write into (``--out``, ``--store``):
    a one-line error now, not after the conversion, if it is a file or can't be created
    because an ancestor is a file.  Missing ancestors are fine (created when written)."""
    if p is None:
        return None
    path = Path(p).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {p}: exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {p}: {parent} is not a directory")
            break
    return str(path.resolve())


def parameters_from_args(args: argparse.Namespace) -> dict:
    """The flow parameters (absolute paths) for a parsed `convert` command line."""
    if args.from_stage and args.from_stage not in STAGES:
        raise UserError(f"--from-stage {args.from_stage}: expected one of {', '.join(STAGES)}")
    if args.eval_annotations is not None and args.eval_images is None:
        raise UserError("--eval-annotations needs --eval-images (the annotated images)")
    check_options(vars(args), spell=cli_flag, error=UserError)
    variants = variant_list(args.variants)
    from .targets import check_spec
    targets = check_spec(getattr(args, "target", None), getattr(args, "npu_only", False))
    params = {
        "cfg": _file(args.cfg, "cfg"),
        "weights": _file(args.weights, "weights"),
        "out": output_dir(args.out, "--out"),
        "calibration": _dir(args.calibration, "--calibration"),
        "eval_annotations": _file(args.eval_annotations, "--eval-annotations"),
        "eval_images": _dir(args.eval_images, "--eval-images"),
        "names": _file(args.names, "--names"),
        "input_type": args.input_type,
        "calibration_limit": args.calibration_limit,
        "float_fallback": args.float_fallback,
        "channel_split": args.channel_split,
        "calibration_mirror": args.calibration_mirror,
        "variants": ",".join(variants),
        "backend": args.backend,
        "images": _dir(args.images, "--images"),
        "store": output_dir(args.store, "--store"),
        "from_stage": args.from_stage,
        "target": ",".join(targets),
        "allow_approximate": ",".join(variant_list(getattr(args, "allow_approximate", ""))),
        "npu_only": bool(getattr(args, "npu_only", False)),
    }
    check_convert_inputs(params, spell=lambda k: k if k in ("cfg", "weights") else cli_flag(k))
    return params


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


def _echo_verdict(report_json: Path) -> None:
    """The report's first line, on the terminal (the result a user reads first)."""
    import json
    from . import console
    from .agreement import verdict_line
    try:
        fa = json.loads(report_json.read_text(encoding="utf-8")).get("float_agreement")
    except (OSError, ValueError):
        return
    if fa:
        console.echo(verdict_line(fa).replace("**", ""))


def run_convert(args: argparse.Namespace) -> int:
    from . import console
    params = parameters_from_args(args)
    quiet = getattr(args, "quiet", False)
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows import _settings  # Prefect environment defaults, before prefect is imported
    from flows import _embedded
    if getattr(args, "task_runner", None):
        from flows.runners import ENV, check_spec
        os.environ[ENV] = check_spec(args.task_runner)  # read when the flow module loads
    _embedded.start_early()  # the server starts while this process imports the flow

    convert = import_flow()
    _embedded.wait_ready()
    _quiet_user_error_tracebacks()
    console.record_logger("prefect")
    if not quiet:
        console.echo(f"darknet2tflite: running flow 'convert' on {_settings.describe()}")
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
    log = console.current_log()
    if log is not None and not quiet:
        console.echo(f"log: {log}")
    return 0
