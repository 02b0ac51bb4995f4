"""Checks of the paths a conversion is given, before anything heavy is imported: one-line UserErrors naming the parameter as the caller spells it."""
from __future__ import annotations

from pathlib import Path

from darknet2tflite.errors import UserError


def existing_file(p: str | None, what: str) -> str | None:
    if p is None:
        return None
    path = Path(p)
    if not path.is_file():
        raise UserError(f"{what} {p}: no such file")
    return str(path.resolve())


def existing_dir(p: str | None, what: str) -> str | None:
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
