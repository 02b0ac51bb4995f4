"""What a stage hands the next one: ``{"stage", "key", "artifacts": {name: path}}`` (the
store entry's files), and how a body reads it."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

Progress = Callable[[str], None]


def artifact(payload: Mapping[str, Any] | None, name: str) -> str | None:
    """Path of one artifact of an upstream stage's payload (None if absent)."""
    if not payload:
        return None
    return payload.get("artifacts", {}).get(name)


def read_json(path: str | os.PathLike[str] | None) -> Any:
    if not path:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def quiet(msg: str) -> None:
    """The default progress callback of a stage body: say nothing."""
