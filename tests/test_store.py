"""Real-filesystem, real-process tests of the artifact store (no mocks)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from darknet2tflite.store.artifacts import PIPELINE_VERSION, ArtifactStore, file_digest, stage_key

SPAWN = mp.get_context("spawn")


# ---- helpers run in child processes (module level so spawn can import them) ---------------


def _produce_slowly(side_dir: str, sleep_s: float):
    """A produce() that leaves one marker per call in side_dir, so calls can be counted."""

    def produce(tmp: Path) -> dict[str, str]:
        Path(side_dir, f"call-{os.getpid()}-{uuid.uuid4().hex}").write_text("x")
        (tmp / "sub").mkdir()
        (tmp / "model.bin").write_bytes(os.urandom(1 << 20))  # differs per call on purpose
        (tmp / "sub" / "meta.json").write_text('{"ok": true}')
        time.sleep(sleep_s)
        return {"model": "model.bin", "meta": tmp / "sub" / "meta.json"}

    return produce


def _publish_worker(root: str, key: str, side_dir: str, barrier, queue) -> None:
    store = ArtifactStore(Path(root))
    barrier.wait(timeout=60)
    arts, cached = store.get_or_create("build", key, _produce_slowly(side_dir, 0.5))
    queue.put((os.getpid(), cached, {n: (str(p), file_digest(p)) for n, p in arts.items()}))


def _killable_worker(root: str, key: str, side_dir: str, started) -> None:
    store = ArtifactStore(Path(root))

    def produce(tmp: Path) -> dict[str, str]:
        (tmp / "half.bin").write_bytes(b"partial" * 1000)
        Path(side_dir, "started").write_text(str(os.getpid()))
        started.set()
        time.sleep(120)  # killed long before this ends
        return {"half": "half.bin"}

    store.publish("export", key, produce)


# ---- keys ---------------------------------------------------------------------------------


def test_key_depends_on_content_not_path_or_mtime(tmp_path: Path) -> None:
    a = tmp_path / "a" / "yolo.weights"
    b = tmp_path / "b" / "other-name.weights"
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_bytes(b"\x00\x01weights" * 100)
    b.write_bytes(a.read_bytes())
    k_a = stage_key("parse", {"weights": a, "cfg": None}, {"x": 1})
    assert len(k_a) == 64 and int(k_a, 16) >= 0
    assert stage_key("parse", {"weights": b, "cfg": None}, {"x": 1}) == k_a
    assert stage_key("parse", {"weights": str(a), "cfg": None}, {"x": 1}) == k_a
    os.utime(a, (1, 1))
    assert stage_key("parse", {"weights": a, "cfg": None}, {"x": 1}) == k_a
    b.write_bytes(a.read_bytes()[:-1] + b"X")
    assert stage_key("parse", {"weights": b, "cfg": None}, {"x": 1}) != k_a
    # input name, stage, version and options all matter; options key order does not
    assert stage_key("parse", {"w": a, "cfg": None}, {"x": 1}) != k_a
    assert stage_key("build", {"weights": a, "cfg": None}, {"x": 1}) != k_a
    assert stage_key("parse", {"weights": a, "cfg": None}, {"x": 1}, version="999") != k_a
    assert stage_key("parse", {"weights": a, "cfg": None}, {"x": 2}) != k_a
    # 1 vs 1.0 are different JSON texts, so different keys: options are hashed as written
    assert stage_key("parse", {"weights": a, "cfg": None}, {"x": 1.0}) != k_a
    assert (stage_key("s", {}, {"a": 1, "b": [1, 2]})
            == stage_key("s", {}, {"b": [1, 2], "a": 1}))
    assert stage_key("s", {}, {"a": True}) != stage_key("s", {}, {"a": 1})
    assert PIPELINE_VERSION


def test_key_of_directory(tmp_path: Path) -> None:
    def make(root: Path) -> None:
        (root / "variables").mkdir(parents=True, exist_ok=True)
        (root / "saved_model.pb").write_bytes(b"pb")
        (root / "variables" / "v.data").write_bytes(b"data")

    d1, d2 = tmp_path / "one", tmp_path / "two"
    make(d1)
    make(d2)
    k = stage_key("export", {"model": d1}, {})
    assert stage_key("export", {"model": d2}, {}) == k
    (d2 / "variables" / "v.data").write_bytes(b"datb")
    assert stage_key("export", {"model": d2}, {}) != k
    make(d2)
    (d2 / "variables" / "v.data").rename(d2 / "variables" / "w.data")
    assert stage_key("export", {"model": d2}, {}) != k
    (d2 / "variables" / "w.data").rename(d2 / "variables" / "v.data")
    assert stage_key("export", {"model": d2}, {}) == k
    (d2 / "assets").mkdir()
    assert stage_key("export", {"model": d2}, {}) != k


def test_key_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cfg"):
        stage_key("parse", {"cfg": tmp_path / "missing.cfg"}, {})
    with pytest.raises(TypeError, match="JSON"):
        stage_key("parse", {}, {"path": tmp_path})
    with pytest.raises(TypeError, match="JSON"):
        stage_key("parse", {}, {"x": float("nan")})
    for bad in ("", "..", ".tmp", "a/b", "../x", "a..b", "/abs"):
        with pytest.raises(ValueError, match="stage"):
            stage_key(bad, {}, {})


def test_file_digest_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom((3 << 20) + 17)  # spans several 1 MiB chunks
    p = tmp_path / "x"
    p.write_bytes(data)
    assert file_digest(p) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


# ---- publish / lookup ---------------------------------------------------------------------


def _entries(store: ArtifactStore, stage: str) -> list[str]:
    d = store.root / stage
    return sorted(os.listdir(d)) if d.exists() else []


def test_publish_then_lookup(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "deep" / "store")
    key = stage_key("build", {}, {"n": 1})
    assert store.lookup("build", key) is None
    side = tmp_path / "side"
    side.mkdir()
    arts = store.publish("build", key, _produce_slowly(str(side), 0))
    assert set(arts) == {"model", "meta"}
    assert arts["model"] == store.path("build", key) / "model.bin"
    assert arts["meta"] == store.path("build", key) / "sub" / "meta.json"
    assert arts["meta"].read_text() == '{"ok": true}'
    again = store.lookup("build", key)
    assert again == arts
    manifest = (store.path("build", key) / "manifest.json").read_text()
    assert '"sha256"' in manifest and f'"key": "{key}"' in manifest
    # get_or_create hits without calling produce
    arts2, cached = store.get_or_create("build", key, _produce_slowly(str(side), 0))
    assert cached and arts2 == arts
    assert len(os.listdir(side)) == 1
    assert os.listdir(store.root / ".tmp") == []


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate", "manifest"])
def test_corrupt_entry_is_dropped(tmp_path: Path, damage: str) -> None:
    store = ArtifactStore(tmp_path / "store")
    key = stage_key("build", {}, {})
    side = tmp_path / "side"
    side.mkdir()
    arts = store.publish("build", key, _produce_slowly(str(side), 0))
    target = arts["model"]
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))  # same size: only the hash can tell
    elif damage == "delete":
        target.unlink()
    elif damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(10)
    else:
        (store.path("build", key) / "manifest.json").write_text("{not json")
    assert store.lookup("build", key) is None
    assert not store.path("build", key).exists()
    assert _entries(store, "build") == []
    assert os.listdir(store.root / ".tmp") == []
    # and it is recomputed, not returned as cached
    arts2, cached = store.get_or_create("build", key, _produce_slowly(str(side), 0))
    assert not cached and arts2["model"].is_file()
    assert len(os.listdir(side)) == 2


def test_produce_raising_publishes_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    key = stage_key("build", {}, {})

    def boom(tmp: Path) -> dict[str, str]:
        (tmp / "partial.bin").write_bytes(b"half")
        raise RuntimeError("converter exploded")

    with pytest.raises(RuntimeError, match="converter exploded"):
        store.publish("build", key, boom)
    assert store.lookup("build", key) is None
    assert _entries(store, "build") == []
    assert os.listdir(store.root / ".tmp") == []


def test_produced_paths_must_stay_inside(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    key = stage_key("build", {}, {})

    def write(tmp: Path) -> None:
        (tmp / "ok.bin").write_bytes(b"ok")

    cases = {
        "dotdot": lambda t: (write(t), {"a": "../outside.bin"})[1],
        "absolute": lambda t: (write(t), {"a": str(outside)})[1],
        "symlink": lambda t: (write(t), os.symlink(outside, t / "link"), {"a": "link"})[2],
        "missing": lambda t: (write(t), {"a": "nope.bin"})[1],
        "dir": lambda t: (write(t), (t / "d").mkdir(), {"a": "d"})[2],
        "manifest": lambda t: (write(t), (t / "manifest.json").write_text("x"),
                               {"a": "manifest.json"})[2],
        "empty": lambda t: (write(t), {})[1],
    }
    for name, produce in cases.items():
        with pytest.raises((ValueError, FileNotFoundError)):
            store.publish("build", key, produce)
        assert _entries(store, "build") == [], name
        assert os.listdir(store.root / ".tmp") == [], name
    assert outside.read_bytes() == b"secret"
    # absolute path *inside* the produce dir is fine
    arts = store.publish("build", key, lambda t: (write(t), {"a": t / "ok.bin"})[1])
    assert arts["a"].read_bytes() == b"ok"


def test_invalid_names_and_symlinked_stage(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    for stage in ("..", ".tmp", ".locks", "a/b", ""):
        with pytest.raises(ValueError):
            store.path(stage, "abc")
    for key in ("..", "a/b", "a-b", "a.b", ""):
        with pytest.raises(ValueError):
            store.lookup("build", key)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, store.root / "evil")
    assert store.lookup("evil", "abc") is None
    with pytest.raises(RuntimeError, match="symlink"):
        store.publish("evil", "abc", lambda t: {})
    assert os.listdir(elsewhere) == []


def test_root_through_symlink_is_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    store = ArtifactStore(tmp_path / "link" / "store")
    assert store.root == (real / "store").resolve()
    arts = store.publish("s", "k", lambda t: ((t / "f").write_text("1"), {"f": "f"})[1])
    assert arts["f"].resolve() == arts["f"]


# ---- concurrency / crashes ----------------------------------------------------------------


def test_two_processes_same_key_produce_once(tmp_path: Path) -> None:
    root, side = tmp_path / "store", tmp_path / "side"
    side.mkdir()
    ArtifactStore(root)
    key = stage_key("build", {}, {"race": True})
    barrier = SPAWN.Barrier(2)
    queue = SPAWN.Queue()
    procs = [SPAWN.Process(target=_publish_worker, args=(str(root), key, str(side), barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(os.listdir(side)) == 1, "produce must run exactly once"
    assert sorted(r[1] for r in results) == [False, True]
    assert results[0][2] == results[1][2]  # same paths, same content digests
    store = ArtifactStore(root)
    arts = store.lookup("build", key)
    assert arts is not None
    assert {n: (str(p), file_digest(p)) for n, p in arts.items()} == results[0][2]
    assert os.listdir(root / ".tmp") == []


def test_sigkill_during_produce_leaves_nothing_usable(tmp_path: Path) -> None:
    root, side = tmp_path / "store", tmp_path / "side"
    side.mkdir()
    store = ArtifactStore(root)
    key = stage_key("export", {}, {"kill": 1})
    started = SPAWN.Event()
    p = SPAWN.Process(target=_killable_worker, args=(str(root), key, str(side), started))
    p.start()
    try:
        assert started.wait(timeout=120), "worker never reached produce()"
        # While the owner is alive, gc must not touch its temp dir.
        assert len(os.listdir(root / ".tmp")) == 1
        assert store.gc_tmp(max_age_minutes=0) == []
        assert len(os.listdir(root / ".tmp")) == 1
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=60)
    assert p.exitcode == -signal.SIGKILL
    assert store.lookup("export", key) is None
    assert _entries(store, "export") == []
    stale = os.listdir(root / ".tmp")
    assert len(stale) == 1  # the killed run's half-written temp dir, never published

    removed = store.gc_tmp()
    assert [x.name for x in removed] == stale
    assert os.listdir(root / ".tmp") == []

    arts, cached = store.get_or_create(
        "export", key, lambda t: ((t / "m.tflite").write_bytes(b"TFL3"), {"m": "m.tflite"})[1])
    assert not cached and arts["m"].read_bytes() == b"TFL3"
    assert store.lookup("export", key) == arts


def test_publish_cleans_stale_tmp_of_same_key(tmp_path: Path) -> None:
    root, side = tmp_path / "store", tmp_path / "side"
    side.mkdir()
    store = ArtifactStore(root)
    key = stage_key("export", {}, {"kill": 2})
    started = SPAWN.Event()
    p = SPAWN.Process(target=_killable_worker, args=(str(root), key, str(side), started))
    p.start()
    assert started.wait(timeout=120)
    os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=60)
    assert len(os.listdir(root / ".tmp")) == 1
    store.publish("export", key, lambda t: ((t / "m").write_bytes(b"1"), {"m": "m"})[1])
    assert os.listdir(root / ".tmp") == []


def test_gc_tmp_age_rule_for_foreign_names(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    junk = store.root / ".tmp" / "junk"
    junk.mkdir()
    assert store.gc_tmp(max_age_minutes=60) == []
    os.utime(junk, (time.time() - 7200, time.time() - 7200))
    assert store.gc_tmp(max_age_minutes=60) == [junk]
    assert not junk.exists()
