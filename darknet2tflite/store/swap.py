"""Replacing a whole output folder in one step.

An existing ``--out`` used to be updated file by file, so a kill in the middle left old and
new files mixed (a new model.int8.tflite beside the old model.json).  Here the complete new
set is built in a sibling temp folder and the two folders trade places in one
``renameat2(RENAME_EXCHANGE)`` call: at every instant ``out`` is the old set or the new one.
Files of the old folder that the new set does not contain (a user's own notes, a variant an
earlier run wrote) are carried over as hard links first, so the swap loses nothing the
file-by-file update kept.  Where the exchange is not available (not Linux, a file system
without it) the fallback is two renames with the old set parked at ``.<name>.<rand>.old``;
:func:`recover` puts a parked set back if a kill came between them.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
OLD_SUFFIX = ".old"


def _renameat2() -> object | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths on one file system; False when the OS can't."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) into ``new`` every file of ``old`` that ``new`` lacks."""
    for dirpath, dirnames, filenames in os.walk(old, followlinks=False):
        rel = Path(dirpath).relative_to(old)
        for d in dirnames:
            target = new / rel / d
            if os.path.islink(Path(dirpath) / d):
                if not os.path.lexists(target):
                    os.symlink(os.readlink(Path(dirpath) / d), target)
            elif not os.path.lexists(target):
                target.mkdir()
        for f in filenames:
            src, dst = Path(dirpath) / f, new / rel / f
            if os.path.lexists(dst):
                continue
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                continue
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def replace_dir(new: Path, out: Path) -> None:
    """Make the complete folder ``new`` become ``out`` (which exists as a folder); the old
    set ends up deleted.  ``new`` must be a sibling of ``out``."""
    _carry_over(out, new)
    os.chmod(new, stat.S_IMODE(os.stat(out).st_mode))
    if exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # now holds the old set
        return
    parked = out.with_name(f".{out.name}.{os.urandom(4).hex()}{OLD_SUFFIX}")
    os.rename(out, parked)
    os.rename(new, out)
    shutil.rmtree(parked, ignore_errors=True)


def recover(out: Path) -> None:
    """If ``out`` is missing but a parked old set of it exists (a kill between the fallback's
    two renames), put the old set back."""
    if os.path.lexists(out):
        return
    try:
        names = sorted(os.listdir(out.parent))
    except OSError:
        return
    for name in names:
        if name.startswith(f".{out.name}.") and name.endswith(OLD_SUFFIX):
            try:
                os.rename(out.parent / name, out)
                return
            except OSError:
                continue
