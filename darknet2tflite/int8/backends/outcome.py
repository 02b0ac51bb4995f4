"""A backend run as a reported outcome: a crash becomes a row of the comparison, never the end of the other backend's work."""
from __future__ import annotations

import re
import time
from typing import Any, Callable

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------- small helpers

def one_line(exc: BaseException) -> str:
    """The reason a backend failed, short enough for a table cell and a log line."""
    if isinstance(exc, SystemExit):
        return f"exited with code {exc.code}"
    msg = _ANSI.sub("", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")[:300]


def run_backend(name: str, fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """Run one backend and turn any failure into a reported result instead of an exception.

    A crash in one backend (onnx2tf even calls ``sys.exit``) must not lose the other
    backend's already-computed int8 model, so callers run each backend through this."""
    t0 = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - reported, never swallowed silently
        return {"backend": name, "status": "failed", "reason": one_line(e),
                "conversion_seconds": {"total": round(time.perf_counter() - t0, 3)}}
    result.setdefault("backend", name)
    result.setdefault("status", "ok")
    return result
