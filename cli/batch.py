"""`darknet2tflite batch SOURCE --out DIR --calibration IMGDIR [convert options]`.

Runs the Prefect flow flows/batch.py:batch in-process (like ``convert``): every model of a
folder of ``<stem>.cfg`` / ``<stem>.weights`` pairs or of a YAML manifest is converted into
``DIR/<stem>`` as its own ``convert`` subflow, all sharing one artifact store.  A model that
fails is one line in the summary table (its error, no traceback) and the batch goes on; the
exit status is 1 when any model failed.

Only argparse lives at module level (the library never imports prefect).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from darknet2tflite.errors import UserError

#: convert options that make no sense for a batch (per-model inputs or a single run)
NOT_FOR_BATCH = ("cfg", "weights", "from_stage", "help")


def add_batch_parser(subparsers: Any, add_convert_args: Callable[[argparse.ArgumentParser],
                                                                   None]) -> argparse.ArgumentParser:
    """Register ``batch`` with ``convert``'s options (one definition: ``add_convert_args``)
    minus the per-model ones."""
    p = subparsers.add_parser(
        "batch", help="convert every model of a folder or YAML manifest, with a summary",
        description="Convert every <stem>.cfg + <stem>.weights pair of a folder (or every "
                    "entry of a YAML manifest, see flows/batch.py) into OUT/<stem>, each as a "
                    "'convert' flow run; prints a summary table and exits 1 if a model failed.")
    p.add_argument("source", help="folder of <stem>.cfg/<stem>.weights pairs or a .yaml "
                                  "manifest")
    scratch = argparse.ArgumentParser(add_help=False)
    add_convert_args(scratch)
    for action in scratch._actions:
        if action.dest not in NOT_FOR_BATCH:
            p._add_action(action)
            if action.dest == "out":
                action.help = "output root: every model is written into OUT/<stem>"
    p.set_defaults(func=run_batch)
    return p


def parameters_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The batch flow's parameters (absolute paths): the convert options of the table
    (darknet2tflite/options.py) that a batch takes, checked before Prefect is imported."""
    from darknet2tflite.options import OPTIONS, allowed_rules, normalized_parameters
    src = Path(args.source)
    if not src.exists():
        raise UserError(f"batch source {args.source}: no such folder or manifest")
    if not (src.is_dir() or src.suffix.lower() in (".yaml", ".yml")):
        raise UserError(f"batch source {args.source}: expected a folder of cfg+weights pairs "
                        "or a .yaml/.yml manifest")
    params = normalized_parameters({o.name: getattr(args, o.name) for o in OPTIONS
                                    if o.cli and o.name not in NOT_FOR_BATCH}, cli=True)
    params.update(allow_approximate=allowed_rules(params), npu_only=bool(params["npu_only"]))
    return {"source": str(src.resolve()), **params}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary table: one line per model (its error in that line when it failed)."""
    rows = summary.get("models") or []
    width = max([len(r["model"]) for r in rows] + [5])
    lines = [f"{'model':{width}s}  {'state':9s}  result"]
    for r in rows:
        result = r.get("error") or r.get("int8 model") or ""
        lines.append(f"{r['model']:{width}s}  {r['state']:9s}  {result}")
    lines.append(f"{summary.get('completed', 0)}/{len(rows)} model(s) converted into "
                 f"{summary.get('out')}")
    return lines


def run_batch(args: argparse.Namespace) -> int:
    from cli.convert import echo_log_path, prefect_ready, start_prefect
    from darknet2tflite import console
    params = parameters_from_args(args)
    quiet = start_prefect(args)
    from flows import _embedded
    from flows.batch import BatchFailure, batch, discover_models
    try:
        discover_models(params["source"], {})  # a source without models: one line, now
    except ValueError as e:
        raise UserError(str(e)) from None
    prefect_ready("batch", quiet)
    with _embedded.flow_settings():
        state = batch(**params, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BatchFailure):
        result = result.summary
    if not isinstance(result, dict):  # the flow itself broke (not one of its models)
        state.result(raise_on_failure=True)
        raise RuntimeError(f"batch flow run ended in state {state.name}: {state.message}")
    for line in summary_lines(result):
        console.echo(line)
    echo_log_path(quiet)
    return 0 if not result.get("failed") else 1
