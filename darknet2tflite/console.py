"""The terminal belongs to the user; library chatter goes to the run's log file.

TensorFlow, absl, Keras and the TFLite converter talk on every level a process has: C++
logging and ``printf`` on file descriptors 1 and 2 ("oneDNN custom operations are on",
"fully_quantize: 0, inference_type: 6 ..."), Python ``print`` on ``sys.stdout`` (Keras'
"Saved artifact at ... Captures: ..."), ``warnings.warn`` (Keras' "structure of `inputs`")
and Python loggers (``tensorflow``, ``absl``).  None of it is for the person running
``darknet2tflite convert``; all of it can matter when something breaks.

:func:`divert` therefore points the process's descriptors 1 and 2 at a log file (so does
every child process started afterwards: the embedded Prefect server, Dask workers), sends
Python's ``sys.stdout`` there too, routes warnings and the chatty Python loggers to the same
file, and keeps the terminal for two streams only: ``sys.stderr`` (Prefect's console log
lines with the stage progress, errors) and :func:`echo` (the command's results).  It must
run before Prefect is imported: Prefect's console handler binds ``sys.stderr`` when it
configures logging.

``--debug`` skips all of it: everything then reaches the terminal as before.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TextIO

#: Python loggers of libraries whose messages are diagnostics, not user-facing progress.
CHATTY_LOGGERS = ("tensorflow", "absl", "keras", "tf_keras", "h5py", "onnx2tf", "tf2onnx",
                  "onnx", "onnxruntime", "py.warnings", "distributed", "numexpr")

#: run logs kept per store (older ones are deleted when a new run starts)
KEEP_LOGS = 100

_state: dict[str, object] = {}


def log_path(store_root: str | os.PathLike[str], command: str, label: str) -> Path:
    """``<store>/.logs/<command>-<label>-<UTC time>-<pid>.log``: one file per run, next to
    the artifacts it explains, never inside ``--out`` (that folder is swapped in whole)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80] or "run"
    return Path(store_root) / ".logs" / f"{command}-{safe}-{stamp}-{os.getpid()}.log"


def divert(path: str | os.PathLike[str]) -> Path:
    """Send descriptors 1 and 2, ``sys.stdout``, warnings and library loggers to ``path``;
    keep ``sys.stderr`` and :func:`echo` on the terminal.  Idempotent per process.

    Logging handlers already writing to the old ``sys.stdout``/``sys.stderr`` (Prefect's
    console handler, when Prefect was imported first: a served run's process) are moved to
    the terminal streams, so their lines stay where they were."""
    if "log" in _state:
        return Path(str(_state["path"]))
    p = Path(path)
    created = [d for d in reversed(p.parents) if not d.exists()]
    p.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (OSError, ValueError):
            pass
    _prune(p.parent, KEEP_LOGS - 1)
    log = open(p, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    term_out = _reopen(1, sys.stdout)
    term_err = _reopen(2, sys.stderr)
    old = {id(sys.stdout): term_out, id(sys.stderr): term_err,
           id(sys.__stdout__): term_out, id(sys.__stderr__): term_err}
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = log
    sys.stderr = term_err
    _rebind_handlers(old)
    _state.update(log=log, path=str(p), out=term_out, err=term_err, created=created)

    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    warnings.simplefilter("default")  # each distinct warning once, into the log
    for name in CHATTY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False
    _state["handler"] = handler
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return p


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``*.log`` files of ``folder``."""
    try:
        logs = sorted(folder.glob("*.log"), key=lambda f: f.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in logs[keep:]:
        try:
            old.unlink()
        except OSError:
            pass


def _rebind_handlers(streams: dict[int, TextIO]) -> None:
    """Point every logging StreamHandler (and the rich console inside Prefect's) that writes
    to one of the replaced streams at its terminal replacement."""
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            new = streams.get(id(getattr(h, "stream", None)))
            if new is None or not isinstance(h, logging.StreamHandler):
                continue
            h.setStream(new)
            rich_console = getattr(h, "console", None)
            if rich_console is not None and hasattr(rich_console, "file"):
                rich_console.file = new


def _reopen(fd: int, current: TextIO) -> TextIO:
    """A new text stream on a duplicate of ``fd`` (the terminal, kept after ``fd`` moves)."""
    enc = getattr(current, "encoding", None) or "utf-8"
    return io.TextIOWrapper(io.FileIO(os.dup(fd), "w"), encoding=enc, errors="replace",
                            line_buffering=True, write_through=True)


def current_log() -> Path | None:
    """The log file of this process, if :func:`divert` ran."""
    return Path(str(_state["path"])) if "path" in _state else None


def discard() -> None:
    """Delete this process's log file and the folders :func:`divert` created for it: a
    run refused for bad input leaves nothing behind (its one-line error says it all)."""
    if "path" not in _state:
        return
    try:
        os.unlink(str(_state["path"]))
    except OSError:
        return
    for d in reversed(list(_state.get("created") or [])):  # type: ignore[call-overload]
        try:
            d.rmdir()
        except OSError:
            break


def record_logger(name: str) -> None:
    """Also copy logger ``name`` (e.g. ``prefect``) into the log file, so the file tells
    the whole story of the run; its console output is unchanged."""
    h = _state.get("handler")
    if isinstance(h, logging.Handler):
        lg = logging.getLogger(name)
        if h not in lg.handlers:
            lg.addHandler(h)


def echo(msg: str = "") -> None:
    """A result line on the terminal's standard output (whatever ``sys.stdout`` is now)."""
    out = _state.get("out") or sys.stdout
    print(msg, file=out, flush=True)  # type: ignore[arg-type]
