"""Folder walks over folders the user hands us (calibration, evaluation, batch folders) and
over the folders the store hashes into a content key.

Policy, the same everywhere:

- **directory symlinks are never followed** by the image walks (a link back to an ancestor
  would loop forever); they are listed as skipped.  The store's tree hash does descend into
  a symlinked directory (its key must change when the linked files change) but tracks the
  ``(st_dev, st_ino)`` of every directory on the current path, so a loop is hashed as a loop
  instead of recursing;
- only **regular files** are taken: FIFOs, sockets and devices are never opened (opening a
  FIFO blocks until a writer appears), dangling symlinks and file-symlink loops are skipped;
- unreadable directories are skipped, not fatal;
- names are kept as the OS gives them (``str`` with surrogate escapes for bytes that are not
  UTF-8), so non-UTF-8 names work; use :func:`errors.shown` to print one.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


@dataclass
class Walk:
    """Regular files found, and what was skipped (path, reason)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def file_kind(path: str | os.PathLike[str]) -> tuple[os.stat_result | None, str]:
    """(stat, "") for a regular file (symlinks followed), else (None, why it is not one)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "dangling symlink" if os.path.islink(path) else "no such file"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symlink loop"
        return None, e.strerror or str(e)
    if stat.S_ISREG(st.st_mode):
        return st, ""
    if stat.S_ISDIR(st.st_mode):
        return None, "a folder"
    kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
            else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special")
    return None, f"not a regular file ({kind})"


def regular_files(root: str | os.PathLike[str], suffixes: Iterable[str] | None = None) -> Walk:
    """Regular files under ``root`` (recursive, directory symlinks not followed) whose suffix
    (lower-cased) is in ``suffixes`` (all files when None), in sorted order."""
    want = None if suffixes is None else {s.lower() for s in suffixes}
    out = Walk()

    def unreadable(e: OSError) -> None:
        out.skipped.append((Path(e.filename or root), f"unreadable folder ({e.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        base = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if os.path.islink(base / d):
                out.skipped.append((base / d, "directory symlink (not followed)"))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            p = base / name
            if want is not None and p.suffix.lower() not in want:
                continue
            st, why = file_kind(p)
            if st is None:
                out.skipped.append((p, why))
            else:
                out.files.append(p)
    return out


def tree_entries(root: Path) -> list[tuple[str, str, Path | None]]:
    """(kind, relative name, path to hash or None) of everything under ``root``, for a
    content hash: ``f`` regular file (path given), ``d`` folder, ``L`` a symlinked folder
    (descended), ``loop`` a symlinked folder leading back to one on its own path, ``x`` a
    name that is not a readable regular file (FIFO, device, dangling link: never opened).
    """
    entries: list[tuple[str, str, Path | None]] = []

    def visit(folder: Path, rel: str, on_path: frozenset[tuple[int, int]]) -> None:
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            entries.append(("x", rel, None) if rel else ("x", ".", None))
            del e
            return
        for name in names:
            full = folder / name
            sub = f"{rel}/{name}" if rel else name
            try:
                lst = os.lstat(full)
            except OSError:
                entries.append(("x", sub, None))
                continue
            if stat.S_ISDIR(lst.st_mode):
                entries.append(("d", sub, None))
                visit(full, sub, on_path | {(lst.st_dev, lst.st_ino)})
                continue
            st, why = file_kind(full)
            if st is not None:
                entries.append(("f", sub, full))
            elif why == "a folder":
                target = os.stat(full)
                ident = (target.st_dev, target.st_ino)
                if ident in on_path:
                    entries.append(("loop", sub, None))
                else:
                    entries.append(("L", sub, None))
                    visit(full, sub, on_path | {ident})
            else:
                entries.append(("x", sub, None))

    top = os.stat(root)
    visit(Path(root), "", frozenset({(top.st_dev, top.st_ino)}))
    return entries
