"""User-facing errors.

Every problem a user can cause (a hand-edited cfg, a truncated download, an empty image
folder) must surface as one line that names the file and the place in it, so the CLI can
print it without a traceback. Programming errors stay ordinary exceptions.
"""
from __future__ import annotations

import re
from pathlib import Path


#: characters of one value quoted in a message
VALUE_CHARS = 80
_LONG_WORD = re.compile(r"\S{%d,}" % (VALUE_CHARS + 1))


class UserError(Exception):
    """An error caused by the user's input; the CLI prints ``str(err)`` and exits non-zero."""

    exit_code = 2


class DarknetError(UserError):
    """A problem in a Darknet .cfg or .weights file, located as precisely as we can."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        section: str | None = None,
        layer: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.section = section
        self.layer = layer
        self.key = key
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file:
            where.append(shown_path(self.file) + (f":{self.line}" if self.line else ""))
        if self.section:
            sec = f"[{shown(self.section, 40)}]"
            if self.layer is not None and self.layer >= 0:
                sec += f" (layer {self.layer})"
            where.append(sec)
        elif self.layer is not None:
            where.append(f"layer {self.layer}")
        if self.key:
            where.append(f"key '{shown(self.key, 40)}'")
        prefix = ", ".join(where)
        msg = " ".join(self.message.split())  # guarantee a single line
        # a value quoted from the file is cut (a 100 000-character option value), and so is
        # the whole message
        msg = shown(_LONG_WORD.sub(lambda m: m.group(0)[:VALUE_CHARS - 1] + "…", msg), 400)
        return f"{prefix}: {msg}" if prefix else msg


class CfgError(DarknetError):
    """Malformed or unsupported .cfg content."""


class WeightsError(DarknetError):
    """A .weights file that does not match its cfg."""


class InputError(UserError):
    """Bad non-Darknet input: image folders, annotation files, options."""


def shown(value: object, limit: int = 80) -> str:
    """``value`` as it may appear in a one-line message: file names that are not valid UTF-8
    keep their bytes visible as ``\\xNN`` (printing a surrogate-escaped name would raise), and
    anything longer than ``limit`` characters is cut with "…" (a 4-million-character option
    value must not be echoed whole)."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = " ".join(text.split()) if ("\n" in text or "\r" in text) else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown_path(path: object) -> str:
    """A path in a message: escaped like :func:`shown`, cut only when absurdly long (a path
    is what the user needs to find the file; an option value is not)."""
    return shown(path, 400)


def reason(message: str, path: object) -> str:
    """``message`` without its leading ``"<path>: "`` (to list several files' reasons)."""
    prefix = shown_path(path) + ": "
    return message[len(prefix):] if message.startswith(prefix) else message
