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
from darknet2tflite.options import check as check_options, cli_flag, variant_list
from darknet2tflite.inputs import existing_dir, existing_file, output_dir

# A copy of tasks._common.STAGES, so a bad --from-stage fails before Prefect and TensorFlow
# are imported (tests/test_flows.py checks they agree).
STAGES = ("parse", "build", "parity", "probe", "rewrite", "quantize", "evaluate", "report")


def parameters_from_args(args: argparse.Namespace) -> dict:
    """The flow parameters (absolute paths) for a parsed `convert` command line."""
    if args.from_stage and args.from_stage not in STAGES:
        raise UserError(f"--from-stage {args.from_stage}: expected one of {', '.join(STAGES)}")
    if args.eval_annotations is not None and args.eval_images is None:
        raise UserError("--eval-annotations needs --eval-images (the annotated images)")
    check_options(vars(args), spell=cli_flag, error=UserError)
    variants = variant_list(args.variants)
    return {
        "cfg": existing_file(args.cfg, "cfg"),
        "weights": existing_file(args.weights, "weights"),
        "out": output_dir(args.out, "--out"),
        "calibration": existing_dir(args.calibration, "--calibration"),
        "eval_annotations": existing_file(args.eval_annotations, "--eval-annotations"),
        "eval_images": existing_dir(args.eval_images, "--eval-images"),
        "names": existing_file(args.names, "--names"),
        "input_type": args.input_type,
        "calibration_limit": args.calibration_limit,
        "float_fallback": args.float_fallback,
        "channel_split": args.channel_split,
        "calibration_mirror": args.calibration_mirror,
        "variants": ",".join(variants),
        "backend": args.backend,
        "images": existing_dir(args.images, "--images"),
        "store": output_dir(args.store, "--store"),
        "from_stage": args.from_stage,
    }


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
