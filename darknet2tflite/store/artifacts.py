"""Content-addressed artifact store for pipeline stages.

Why this exists: the conversion pipeline (parse -> build -> export -> calibrate -> quantize ->
evaluate) is expensive, and it is run by Prefect tasks and by the CLI, sometimes by two processes
at once on the same store.  A stage's outputs are filed under a key derived from the *content* of
its inputs and its options, so a re-run with identical inputs reuses the verified outputs, while any
change (or a corrupt / missing artifact) forces a recompute.

Crash and concurrency guarantees:

* An entry ``root/<stage>/<key>/`` only ever appears through one atomic ``rename`` of a fully
  written, fsynced temp dir (``root/.tmp/...``) that already holds its ``manifest.json``.  A process
  SIGKILLed at any moment therefore leaves at most a stale temp dir, never a half-entry.
* Producing and deleting an entry happen under an exclusive ``flock`` on
  ``root/.locks/<stage>-<key>.lock``; the kernel drops it when the holder dies, so a killed
  process never wedges the store.  A second process waiting on the lock re-checks and returns the
  first one's result instead of recomputing.
* ``lookup`` checks every file's sha256 against the manifest, so a hand-edited, truncated or
  replaced artifact is detected, removed (under the lock) and reported as a miss, never returned
  as a hit.  Digests of unchanged files come from :mod:`digests` (remembered by inode, size,
  mtime and ctime); set ``DARKNET2TFLITE_DIGEST_CACHE=0`` to re-read every byte on every lookup,
  which also catches media bit rot that leaves the stat untouched.

Layout::

    root/
      .locks/<stage>-<key>.lock
      .tmp/<stage>-<key>.<random>          publish in progress (or stale: killed producer)
      .tmp/<stage>-<key>.trash.<random>    entry being deleted
      <stage>/<key>/manifest.json + artifact files
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from darknet2tflite.store.digests import file_digest, hash_file
from darknet2tflite.walk import tree_entries

__all__ = [
    "PIPELINE_VERSION",
    "ArtifactStore",
    "file_digest",
    "stage_key",
]

# Part of every key: bump it when a stage's output format/semantics change so every old entry
# becomes unreachable (it is simply never looked up again; delete the store dir to reclaim space).
PIPELINE_VERSION = "2"

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

# Stage names become directory and lock-file names; the leading alnum keeps ".tmp"/".locks" and
# ".." unreachable.  Keys have neither "-" nor ".", which makes "<stage>-<key>.<suffix>"
# (temp dirs) and "<stage>-<key>.lock" unambiguous: split at the last "-", then the first ".".
_STAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_KEY_RE = re.compile(r"[A-Za-z0-9_]{1,128}")

_TMP_DIR = ".tmp"
_LOCK_DIR = ".locks"
_TRASH_PREFIX = "trash_"

Produce = Callable[[Path], Mapping[str, str | os.PathLike[str]]]


# --------------------------------------------------------------------------------------------
# hashing


def _tree_digest(root: Path) -> str:
    """Hash a directory by relative names + file contents only.

    Why: keys must survive copying/moving a model dir or touching it (mtime), yet change when any
    file inside is renamed, added, removed or edited.  Directory names are included so an added
    empty dir (e.g. a SavedModel's ``assets/``) also changes the key.
    """
    h = hashlib.sha256()
    # regular files only are opened (a FIFO would block forever); symlinked dirs are hashed
    # as trees without looping (darknet2tflite/walk.py)
    entries = [(kind, rel, file_digest(path) if path is not None else "")
               for kind, rel, path in tree_entries(root)]
    for kind, rel, digest in sorted(entries, key=lambda e: e[1]):
        h.update(f"{kind}\0{rel}\0{digest}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _input_digest(name: str, value: str | os.PathLike[str] | None) -> str | None:
    if value is None:
        return None
    p = Path(value)
    if p.is_file():
        return "file:" + file_digest(p)
    if p.is_dir():
        return "dir:" + _tree_digest(p)
    raise FileNotFoundError(f"stage input {name!r}: no such file or directory: {p}")


def _canonical_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serializable (finite numbers, str keys): {e}") \
            from None


def stage_key(
    stage: str,
    inputs: Mapping[str, str | os.PathLike[str] | None],
    options: Mapping[str, Any],
    version: str = PIPELINE_VERSION,
) -> str:
    """Key for (stage, input contents, options, pipeline version) as hex sha256.

    Input *paths* and mtimes are deliberately excluded: the same weights copied elsewhere must hit
    the cache, and a ``touch`` must not invalidate it.  Input *names* are included so swapping two
    inputs changes the key.
    """
    _check_stage(stage)
    for k in inputs:
        if not isinstance(k, str):
            raise TypeError(f"stage input names must be str, got {k!r}")
    doc = {
        "stage": stage,
        "version": str(version),
        "inputs": {k: _input_digest(k, v) for k, v in inputs.items()},
        "options": json.loads(_canonical_json(dict(options), f"options of stage {stage!r}")),
    }
    return hashlib.sha256(_canonical_json(doc, "stage key").encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_stage(stage: str) -> None:
    if not isinstance(stage, str) or not _STAGE_RE.fullmatch(stage) or ".." in stage:
        raise ValueError(f"invalid stage name {stage!r}: use letters, digits, '_', '.', '-' "
                         "(starting with a letter or digit, no '..')")


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid store key {key!r}: use letters, digits, '_' "
                         "(e.g. the hex digest from stage_key)")


def _safe_relpath(rel: str) -> str | None:
    """Normalised POSIX relpath if it stays inside its base dir, else None."""
    if not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return rel


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Best-effort removal of whatever sits at ``path`` (dir tree, file or symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------
# the store


class ArtifactStore:
    """Directory of verified, immutable stage outputs keyed by ``stage_key``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root_path = Path(root).expanduser()
        root_path.mkdir(parents=True, exist_ok=True)
        # Resolve once: every later path is built under this real dir and checked not to pass
        # through a symlink, so nothing the store writes or deletes can land outside it.
        self.root = root_path.resolve(strict=True)
        self._tmp = self._real_subdir(_TMP_DIR)
        self._locks = self._real_subdir(_LOCK_DIR)

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    # ---- paths ---------------------------------------------------------------------------

    def _real_subdir(self, name: str) -> Path:
        p = self.root / name
        try:
            p.mkdir(exist_ok=True)
        except FileExistsError:
            pass
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise RuntimeError(f"artifact store {self.root}: {name} is not a real directory "
                               "(symlink or file); refusing to use it")
        return p

    def path(self, stage: str, key: str) -> Path:
        """Final location of an entry (whether or not it exists)."""
        _check_stage(stage)
        _check_key(key)
        return self.root / stage / key

    def _stage_dir(self, stage: str) -> Path:
        return self._real_subdir(stage)

    def _lock_path(self, stage: str, key: str) -> Path:
        return self._locks / f"{stage}-{key}.lock"

    @contextmanager
    def _locked(self, stage: str, key: str) -> Iterator[None]:
        fd = os.open(self._lock_path(stage, key), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the only fd releases the flock

    @staticmethod
    def _try_lock(path: Path) -> int | None:
        """Non-blocking flock; returns the fd (caller closes) or None if someone holds it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        return fd

    # ---- lookup --------------------------------------------------------------------------

    def _verify(self, stage: str, key: str) -> tuple[dict[str, Path] | None, bool]:
        """(artifacts, exists): artifacts None with exists True means a corrupt entry."""
        entry = self.root / stage / key
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            return None, False
        if not stat.S_ISDIR(st.st_mode):
            return None, True  # a symlink or stray file squatting on the entry name
        stage_st = os.lstat(self.root / stage)
        if not stat.S_ISDIR(stage_st.st_mode):
            return None, False
        try:
            with open(entry / MANIFEST_NAME, "rb") as f:
                manifest = json.load(f)
            if (manifest.get("format") != MANIFEST_FORMAT or manifest.get("stage") != stage
                    or manifest.get("key") != key):
                return None, True
            arts = manifest["artifacts"]
            if not isinstance(arts, dict):
                return None, True
            out: dict[str, Path] = {}
            for name, rec in arts.items():
                rel = _safe_relpath(rec["file"])
                if rel is None or rel == MANIFEST_NAME:
                    return None, True
                p = entry / rel
                # No symlinks anywhere below the entry: a link could point outside the store.
                if os.path.realpath(p) != str(p):
                    return None, True
                fst = os.lstat(p)
                if not stat.S_ISREG(fst.st_mode) or fst.st_size != int(rec["size"]):
                    return None, True
                if file_digest(p) != rec["sha256"]:
                    return None, True
                out[name] = p
            return out, True
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None, True

    def _discard(self, stage: str, key: str) -> None:
        """Atomically move an entry out of sight, then delete it.  Caller holds the lock."""
        entry = self.root / stage / key
        trash = self._tmp / f"{stage}-{key}.{_TRASH_PREFIX}{os.urandom(6).hex()}"
        try:
            os.rename(entry, trash)
        except FileNotFoundError:
            return
        _remove(trash)

    def _lookup_locked(self, stage: str, key: str) -> dict[str, Path] | None:
        arts, exists = self._verify(stage, key)
        if arts is None and exists:
            self._discard(stage, key)
        return arts

    def lookup(self, stage: str, key: str) -> dict[str, Path] | None:
        """Verified artifacts of an entry, or None (a corrupt entry is deleted first).

        Every file is re-hashed: a hit must never hand out a truncated or altered artifact.
        The common paths (hit, plain miss) take no lock; only deleting a corrupt entry does,
        so it cannot race a concurrent publish that is replacing that very entry.
        """
        _check_stage(stage)
        _check_key(key)
        arts, exists = self._verify(stage, key)
        if arts is not None or not exists:
            return arts
        with self._locked(stage, key):
            return self._lookup_locked(stage, key)

    def discard(self, stage: str, key: str) -> bool:
        """Delete an entry so the next ``get_or_create`` recomputes it (``--from-stage``).

        Taken under the entry's lock, so it never removes an entry that a concurrent publish
        is in the middle of writing.  Returns whether an entry existed.
        """
        _check_stage(stage)
        _check_key(key)
        with self._locked(stage, key):
            existed = os.path.lexists(self.root / stage / key)
            self._discard(stage, key)
            return existed

    # ---- publish -------------------------------------------------------------------------

    def _clean_stale_tmp_locked(self, stage: str, key: str) -> None:
        """Temp dirs of this (stage, key) while we hold its lock can only be left by dead runs."""
        prefix = f"{stage}-{key}."
        for name in os.listdir(self._tmp):
            if name.startswith(prefix) and _owner_of(name) == (stage, key):
                _remove(self._tmp / name)

    def _collect(self, tmpdir: Path, produced: Mapping[str, str | os.PathLike[str]]
                 ) -> dict[str, dict[str, Any]]:
        if not isinstance(produced, Mapping):
            raise TypeError(f"produce() must return a mapping name -> path, got {type(produced)}")
        records: dict[str, dict[str, Any]] = {}
        for name, value in produced.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"artifact names must be non-empty str, got {name!r}")
            p = Path(value)
            if not p.is_absolute():
                p = tmpdir / p
            # abspath (lexical) vs realpath (symlinks resolved) must agree and stay inside tmpdir:
            # rejects '..', absolute paths elsewhere and symlinks (which would dangle or escape
            # once the dir is renamed).
            lexical = os.path.abspath(p)
            real = os.path.realpath(p)
            if lexical != real:
                raise ValueError(f"artifact {name!r}: {value} is or passes through a symlink")
            try:
                rel = Path(real).relative_to(tmpdir).as_posix()
            except ValueError:
                raise ValueError(f"artifact {name!r}: {value} is outside the produce dir "
                                 f"{tmpdir}") from None
            if _safe_relpath(rel) is None or rel == MANIFEST_NAME:
                raise ValueError(f"artifact {name!r}: invalid path {value!r}")
            try:
                st = os.lstat(real)
            except FileNotFoundError:
                raise FileNotFoundError(f"artifact {name!r}: produce() did not write {value}") \
                    from None
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"artifact {name!r}: {value} is not a regular file")
            sha, size = hash_file(Path(real), sync=True)
            records[name] = {"file": rel, "sha256": sha, "size": size}
        if not records:
            raise ValueError("produce() returned no artifacts")
        return records

    def _publish(self, stage: str, key: str, produce: Produce) -> tuple[dict[str, Path], bool]:
        _check_stage(stage)
        _check_key(key)
        stage_dir = self._stage_dir(stage)
        with self._locked(stage, key):
            found = self._lookup_locked(stage, key)
            if found is not None:
                return found, True  # another process finished it while we waited for the lock
            self._clean_stale_tmp_locked(stage, key)
            tmpdir = Path(tempfile.mkdtemp(prefix=f"{stage}-{key}.", dir=self._tmp))
            try:
                records = self._collect(tmpdir, produce(tmpdir))
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "stage": stage,
                    "key": key,
                    "version": PIPELINE_VERSION,
                    "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    "artifacts": records,
                }
                mpath = tmpdir / MANIFEST_NAME
                with open(mpath, "x", encoding="utf-8") as f:
                    json.dump(manifest, f, indent=1, sort_keys=True)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                # mkdtemp makes 0700; entries are meant to be readable like any build output.
                os.chmod(tmpdir, 0o755)
                _fsync_dir(tmpdir)
                final = stage_dir / key
                os.rename(tmpdir, final)  # the single atomic step that makes the entry visible
                _fsync_dir(stage_dir)
            except BaseException:
                _remove(tmpdir)
                raise
            return {name: final / rec["file"] for name, rec in records.items()}, False

    def publish(self, stage: str, key: str, produce: Produce) -> dict[str, Path]:
        """Run ``produce(tmpdir)`` under the entry's lock and atomically publish what it wrote.

        ``produce`` writes files into the fresh dir it is given and returns name -> path (relative
        to that dir, or absolute inside it).  If it raises, nothing is published and the exception
        propagates.  If another process already published the entry, ``produce`` is not called
        and that entry is returned.
        """
        return self._publish(stage, key, produce)[0]

    def get_or_create(self, stage: str, key: str, produce: Produce
                      ) -> tuple[dict[str, Path], bool]:
        """(artifacts, was_cached); cached means this call did not run ``produce``."""
        found = self.lookup(stage, key)
        if found is not None:
            return found, True
        return self._publish(stage, key, produce)

    # ---- maintenance ---------------------------------------------------------------------

    def gc_tmp(self, max_age_minutes: float = 60.0) -> list[Path]:
        """Remove temp dirs left by killed producers; returns what was removed.

        A temp dir named after (stage, key) is removed only if that key's lock is free, i.e. no
        live process is producing it (a SIGKILLed owner's flock is gone).  Anything else in the
        temp area is removed only once older than ``max_age_minutes``.
        """
        removed: list[Path] = []
        now = time.time()
        for name in sorted(os.listdir(self._tmp)):
            p = self._tmp / name
            owner = _owner_of(name)
            if owner is None:
                try:
                    old = now - os.lstat(p).st_mtime > max_age_minutes * 60.0
                except FileNotFoundError:
                    continue
                if old:
                    _remove(p)
                    removed.append(p)
                continue
            fd = self._try_lock(self._lock_path(*owner))
            if fd is None:
                continue  # a live publish/discard owns it
            try:
                if os.path.lexists(p):
                    _remove(p)
                    removed.append(p)
            finally:
                os.close(fd)
        return removed


def _owner_of(tmp_name: str) -> tuple[str, str] | None:
    """(stage, key) encoded in a temp dir name ``<stage>-<key>.<random>``, if well-formed."""
    stage, dash, rest = tmp_name.rpartition("-")
    key, dot, suffix = rest.partition(".")
    if (not dash or not dot or not suffix or not _STAGE_RE.fullmatch(stage) or ".." in stage
            or not _KEY_RE.fullmatch(key)):
        return None
    return stage, key
