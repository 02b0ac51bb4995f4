"""`darknet2tflite serve`: serve the convert and batch flows as Prefect deployments.

Only argparse lives at module level: the library never imports prefect, and ``--help`` stays
instant.  The command itself imports :mod:`flows` (which applies the Prefect environment
defaults) and blocks in ``prefect.serve`` until interrupted.
"""
from __future__ import annotations

import argparse
import os

from darknet2tflite.errors import UserError


def add_serve_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve the convert and batch flows as Prefect deployments",
        description="Register the 'convert/convert' and 'batch/batch' deployments with the "
                    "Prefect server in PREFECT_API_URL and execute their runs (triggered from "
                    "the UI, `prefect deployment run`, or the batch cron schedule) until "
                    "interrupted.")
    p.add_argument("--cron", default=None,
                   help="batch schedule (cron, default '0 3 * * *' = nightly 03:00)")
    p.add_argument("--timezone", default="UTC", help="time zone of --cron (default UTC)")
    p.add_argument("--batch-source",
                   help="folder of cfg+weights pairs or YAML manifest for scheduled batch runs "
                        "(without it the batch schedule is registered paused)")
    p.add_argument("--batch-out", help="output root of scheduled batch runs")
    p.add_argument("--batch-calibration", help="calibration images of scheduled batch runs")
    p.add_argument("--store", help="artifact store of scheduled batch runs")
    p.add_argument("--task-runner", default=None, metavar="threads|dask|tcp://HOST:PORT",
                   help="task runner of every run (default threads; also "
                        "$DARKNET2TFLITE_TASK_RUNNER)")
    p.add_argument("--limit", type=int, default=None,
                   help="maximum concurrent flow runs of this server process")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    if args.batch_source and not os.path.exists(args.batch_source):
        # an active schedule whose every run fails is worse than no schedule
        raise UserError(f"--batch-source {args.batch_source}: no such folder or manifest")
    from flows import _settings  # noqa: F401  (Prefect env defaults before prefect)
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise UserError(
            "serve needs a Prefect server to register deployments with: run `prefect server "
            "start` in another terminal, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`")
    if args.task_runner:
        from flows.runners import make_task_runner
        make_task_runner(args.task_runner)  # validate now, not in the first run
        os.environ["DARKNET2TFLITE_TASK_RUNNER"] = args.task_runner  # inherited by run subprocesses

    from flows.deployments import DEFAULT_BATCH_CRON, build_deployments
    from prefect import serve

    batch_params = {"source": _abs(args.batch_source), "out": _abs(args.batch_out),
                    "calibration": _abs(args.batch_calibration), "store": _abs(args.store)}
    deployments = build_deployments(batch_parameters=batch_params,
                                    cron=args.cron or DEFAULT_BATCH_CRON,
                                    timezone=args.timezone)
    serve(*deployments, limit=args.limit)
    return 0


def _abs(p: str | None) -> str | None:
    return os.path.abspath(p) if p else None
