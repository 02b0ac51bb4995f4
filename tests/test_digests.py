"""darknet2tflite/store/digests.py: file digests remembered across processes by stat.

Each check runs in a fresh process (the remembered digests live in a file), with its own cache
folder, and counts how often the file's bytes were actually read.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import darknet2tflite.store.digests as d
if sys.argv[2] != "default":
    d.RACY_SECONDS = float(sys.argv[2])
reads = []
orig = d._hash
d._hash = lambda p: (reads.append(str(p)), orig(p))[1]
print(json.dumps({"digest": d.file_digest(sys.argv[1]), "reads": len(reads)}))
"""


def digest(path: Path, cache: Path, racy: str = "0", **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path), racy], cwd=REPO,
                         env=dict(os.environ, DARKNET2TFLITE_CACHE=str(cache), **env),
                         capture_output=True, text=True, timeout=60, check=True)
    doc = json.loads(out.stdout)
    return doc["digest"], doc["reads"]


def test_unchanged_file_is_not_read_again_and_any_write_is_seen(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"A" * 5000)
    cache = tmp_path / "cache"
    assert digest(f, cache) == (hashlib.sha256(b"A" * 5000).hexdigest(), 1)
    assert digest(f, cache) == (hashlib.sha256(b"A" * 5000).hexdigest(), 0)

    # same size, mtime put back: only ctime (set by the kernel on write) tells
    st = f.stat()
    f.write_bytes(b"B" * 5000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digest(f, cache) == (hashlib.sha256(b"B" * 5000).hexdigest(), 1)

    # replaced by another file (new inode) with the old content
    g = tmp_path / "other.bin"
    g.write_bytes(b"A" * 5000)
    os.replace(g, f)
    assert digest(f, cache) == (hashlib.sha256(b"A" * 5000).hexdigest(), 1)


def test_just_written_files_are_not_remembered(tmp_path: Path) -> None:
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"x" * 100)
    cache = tmp_path / "cache"
    assert digest(f, cache, racy="default")[1] == 1
    assert digest(f, cache, racy="default")[1] == 1  # changed < 2 s ago: read again


def test_opt_out_and_damaged_cache_file(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"w" * 10)
    cache = tmp_path / "cache"
    assert digest(f, cache, DARKNET2TFLITE_DIGEST_CACHE="0")[1] == 1
    assert digest(f, cache, DARKNET2TFLITE_DIGEST_CACHE="0")[1] == 1
    assert not (cache / "digests.json").exists()
    cache.mkdir()
    (cache / "digests.json").write_text("{not json")
    assert digest(f, cache)[1] == 1
    assert digest(f, cache)[1] == 0
    assert str(f) in json.loads((cache / "digests.json").read_text())["files"]
