"""sha256 of files, remembered by their stat so unchanged files are not read again.

Why: store keys hash every input (weights, calibration and evaluation folders) and every store
lookup re-hashes the entry's artifacts to catch damage.  A fully cached yolov3-tiny conversion
read 558 MB that way (124 distinct files, 212 MB): half a second of a five-second run.

A file's content cannot change without its ctime changing: the kernel sets ctime on every write,
truncate or rename over it, and ``utime`` cannot set it.  So a digest recorded with the file's
(device, inode, size, mtime_ns, ctime_ns) is valid for as long as those five stay the same, the
rule git's index relies on.  Two guards: a file changed less than ``RACY_SECONDS`` before it was
hashed is not remembered (a second write within the same timestamp tick could keep the stat),
and any mismatch simply means hashing again.

Digests persist across processes in ``$DARKNET2TFLITE_CACHE/digests.json`` (default
``~/.cache/darknet2tflite``), written atomically at exit and merged with what other processes
wrote meanwhile; a missing or damaged file is just an empty cache.
``DARKNET2TFLITE_DIGEST_CACHE=0`` turns remembering off (every call reads the file).
"""
from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

from darknet2tflite.store.atomic import atomic_write_bytes
from darknet2tflite.store.cache import cache_root

RACY_SECONDS = 2.0
MAX_ENTRIES = 20000
_CHUNK = 1 << 20  # 1 MiB: large enough that hashing is I/O-bound, not syscall-bound

_lock = threading.Lock()
_entries: dict[str, list] | None = None  # abs path -> [dev, ino, size, mtime_ns, ctime_ns, hex, used]
_dirty = False


def cache_file() -> Path:
    return cache_root() / "digests.json"


def _enabled() -> bool:
    return os.environ.get("DARKNET2TFLITE_DIGEST_CACHE", "1").strip().lower() not in (
        "0", "false", "no", "off")


def _load() -> dict[str, list]:
    global _entries
    if _entries is None:
        try:
            doc = json.loads(cache_file().read_text(encoding="utf-8"))
            _entries = {k: v for k, v in doc.get("files", {}).items()
                        if isinstance(v, list) and len(v) == 7}
        except (OSError, ValueError, AttributeError):
            _entries = {}
        atexit.register(save)
    return _entries


def _stat_key(st: os.stat_result) -> list:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def hash_file(path: str | os.PathLike[str], sync: bool = False) -> tuple[str, int]:
    """(hex sha256, size) of a file read in 1 MiB chunks; ``sync`` also fsyncs it (the
    store does so for files it is about to publish, so an entry survives a power cut)."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    size = 0
    # O_NONBLOCK + fstat: a name swapped for a FIFO after the caller's stat must not block
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with open(fd, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
        if sync:
            os.fsync(f.fileno())
    return h.hexdigest(), size


def _hash(path: str | os.PathLike[str]) -> str:
    return hash_file(path)[0]


def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content (streamed; multi-hundred-MB weights never sit in RAM)."""
    if not _enabled():
        return _hash(path)
    name = os.path.abspath(path)
    st = os.stat(name)
    sk = _stat_key(st)
    with _lock:
        rec = _load().get(name)
        if rec is not None and rec[:5] == sk:
            rec[6] = int(time.time())
            return rec[5]
    digest = _hash(name)
    # remember only if the file did not change while (or just before) it was read
    st2 = os.stat(name)
    if _stat_key(st2) == sk and \
            time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_SECONDS * 1e9:
        global _dirty
        with _lock:
            _load()[name] = sk + [digest, int(time.time())]
            _dirty = True
    return digest


def save() -> None:
    """Merge this process's digests into the cache file (atomic replace; best effort)."""
    global _dirty
    with _lock:
        if not _dirty or _entries is None:
            return
        path = cache_file()
        try:
            try:
                on_disk = json.loads(path.read_text(encoding="utf-8")).get("files", {})
            except (OSError, ValueError, AttributeError):
                on_disk = {}
            merged = {k: v for k, v in on_disk.items() if isinstance(v, list) and len(v) == 7}
            merged.update(_entries)
            if len(merged) > MAX_ENTRIES:
                keep = sorted(merged, key=lambda k: merged[k][6], reverse=True)[:MAX_ENTRIES]
                merged = {k: merged[k] for k in keep}
            atomic_write_bytes(path, json.dumps({"format": 1, "files": merged}).encode())
            _dirty = False
        except OSError:
            pass  # a read-only home just means no persistent cache
