"""The --out folder, written all or nothing: staged in a sibling temp folder (locked, so
concurrent runs and killed ones leave no half-written output) and moved in when complete.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


from darknet2tflite.errors import UserError
from darknet2tflite.store.swap import recover as recover_parked, replace_dir

PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _clean_stale_partials(out: Path) -> None:
    """Remove ``.<name>.*.partial`` siblings of ``out`` left by killed runs.

    Every live :func:`staged_output` holds an exclusive flock on its own temp dir for as long
    as it exists, and the kernel drops it when the process dies: a dir we can lock is stale.
    """
    prefix = f".{out.name}."
    try:
        names = os.listdir(out.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX)):
            continue
        path = out.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or not a real dir: not ours to touch
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run is writing it
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _locked_tempdir(out: Path) -> tuple[Path, int]:
    """A fresh ``.<name>.XXXX.partial`` dir next to ``out`` and an fd holding its flock."""
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=PARTIAL_SUFFIX,
                                    dir=out.parent))
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # removed as stale by a concurrent run before we could even open it
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # a concurrent _clean_stale_partials may have taken it for stale before we locked
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Write into a sibling temp dir and move files into ``out_dir`` only on success, so a
    failed or killed run leaves nothing (or only the previous complete files) in --out.

    A new ``out_dir`` appears in one atomic rename, complete; an existing one is swapped for
    the new set as a whole (:func:`swap.replace_dir`).  Temp dirs of killed runs
    (``.<name>.*.partial``) are removed by the next run writing to the same place; those of
    live runs are flock-ed and left alone.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out}: a parent of it exists and is not a directory") from None
    recover_parked(out)
    _clean_stale_partials(out)
    tmp, fd = _locked_tempdir(out)
    try:
        yield tmp
        if not os.path.lexists(out):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it 0700
            try:
                os.rename(tmp, out)  # complete in one step
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # a concurrent run created it meanwhile: replace it as a whole below
        replace_dir(tmp, out)  # the old set or the new one, never a mix (swap.py)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)
