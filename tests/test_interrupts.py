"""Interrupted and concurrent conversions, with real processes and the real Prefect engine.

Every conversion here is ``python -m cli.main convert`` in its own process group,
recording to its own embedded (ephemeral) Prefect server under a per-test ``PREFECT_HOME``.
Kills are ``SIGKILL`` to the whole group (the CLI and its Prefect server child), at moments
picked by watching the artifact store; the invariants checked after every kill and after the
final run are the store's and ``staged_output``'s promises:

* every ``<stage>/<key>`` entry in the store verifies (manifest + sha256 of every file);
* no lock is left held, and the rerun of the same command completes;
* ``--out`` is absent until a run completes, and then holds exactly the store's bytes;
* nothing half-written survives: no ``.tmp`` leftovers in the store, no ``.<out>.*.partial``
  next to ``--out``.

Model: yolov3-tiny (mask123 cfg), 8 COCO calibration images, calibration limit 8.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, clean_env, shared_path

STAGES = ("parse", "build", "parity", "probe", "rewrite", "quantize", "evaluate", "report")
DELIVERABLES = {"model.keras", "model.float32.tflite", "model.int8.tflite", "model.json",
                "quantize.json", "report.json", "report.md"}
RUN_TIMEOUT = 420  # s, one conversion from scratch on a busy 2-core machine is ~70 s
STAGE_LINE = re.compile(r"^  ([a-z0-9\[\]]+)\s+(Cached|Completed)\s*$", re.M)


# ------------------------------------------------------------------------------ helpers

@dataclass
class Run:
    """One ``darknet2tflite convert`` subprocess, leader of its own process group."""
    proc: subprocess.Popen
    log: Path
    offset: int = 0  # where this run's output starts in the (shared, appended) log
    t0: float = field(default_factory=time.monotonic)

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def text(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", errors="replace")

    def stage_states(self) -> dict[str, str]:
        return dict(STAGE_LINE.findall(self.text()))

    def computed(self) -> set[str]:
        """Stages whose producer ran in this process (the task body logs it)."""
        return set(re.findall(r"- (\w+): computing \(store key", self.text()))


_LIVE: list[Run] = []


def start(args: list[str], log: Path, prefect_home: Path, cwd: Path = REPO) -> Run:
    f = open(log, "ab")
    f.write(f"\n$ {' '.join(args)}\n".encode())
    f.flush()
    offset = f.tell()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=cwd,
                            env=clean_env(prefect_home), stdin=subprocess.DEVNULL, stdout=f,
                            stderr=subprocess.STDOUT, start_new_session=True)
    f.close()
    run = Run(proc, log, offset)
    _LIVE.append(run)
    return run


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(d))
    return pids


def kill_group(run: Run) -> None:
    """SIGKILL the CLI and everything in its group (the embedded Prefect server)."""
    try:
        os.killpg(run.pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    run.proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_members(run.pgid):
        assert time.monotonic() < deadline, f"process group {run.pgid} survived SIGKILL"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _no_stray_processes():
    yield
    while _LIVE:
        run = _LIVE.pop()
        if run.proc.poll() is None or group_members(run.pgid):
            kill_group(run)


def finish(run: Run, timeout: float = RUN_TIMEOUT) -> str:
    try:
        run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(run)
        pytest.fail(f"run did not finish within {timeout} s (stale lock?):\n{run.text()[-3000:]}")
    text = run.text()
    assert run.proc.returncode == 0, text[-4000:]
    return text


def wait_until(run: Run, what: str, pred, timeout: float = RUN_TIMEOUT) -> float:
    """Poll ``pred()`` every 20 ms while the run is alive; returns the elapsed time."""
    deadline = time.monotonic() + timeout
    while not pred():
        if run.proc.poll() is not None:
            pytest.fail(f"run ended (rc {run.proc.returncode}) before {what}:\n"
                        f"{run.text()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return run.elapsed()


def entries(store: Path) -> list[tuple[str, str]]:
    """Every (stage, key) entry dir in the store."""
    if not store.is_dir():
        return []
    return sorted((s.name, k.name) for s in store.iterdir()
                  if s.is_dir() and not s.name.startswith(".") and s.name != "prefect-results"
                  for k in s.iterdir())


def tmp_names(store: Path) -> list[str]:
    d = store / ".tmp"
    return sorted(os.listdir(d)) if d.is_dir() else []


def has_entry(store: Path, stage: str) -> bool:
    return any(s == stage for s, _ in entries(store))


def producing(store: Path, stage: str) -> bool:
    return any(n.startswith(f"{stage}-") for n in tmp_names(store))


def assert_store_consistent(store: Path) -> dict[str, dict]:
    """Every entry verifies; returns {stage: manifest} (one entry per stage expected)."""
    from darknet2tflite.store.artifacts import ArtifactStore

    st = ArtifactStore(store)
    manifests: dict[str, dict] = {}
    for stage, key in entries(store):
        arts = st.lookup(stage, key)
        assert arts is not None, f"store entry {stage}/{key[:12]} does not verify"
        assert stage not in manifests, f"two entries for stage {stage} with identical inputs"
        manifests[stage] = json.loads((store / stage / key / "manifest.json").read_text())
    return manifests


def assert_no_lock_held(store: Path) -> None:
    """Every lock file can be taken right now: the killed run left none held."""
    for lock in sorted((store / ".locks").glob("*.lock")) if (store / ".locks").is_dir() else []:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if anyone holds it
        finally:
            os.close(fd)


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_out_matches_store(out: Path, manifests: dict[str, dict]) -> set[str]:
    """Every file in --out is byte-identical to a verified store artifact of the same name."""
    stored = {(rec["file"], rec["sha256"]) for m in manifests.values()
              for rec in m["artifacts"].values()}
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert DELIVERABLES <= files, sorted(DELIVERABLES - files)
    for rel in sorted(files):
        assert (rel, sha256(out / rel)) in stored, f"{out}/{rel} differs from the store"
    assert (out / "model.int8.tflite").read_bytes()[4:8] == b"TFL3"
    json.loads((out / "report.json").read_text())
    return files


def partials(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.endswith(".partial"))


def convert_args(model, calib: Path, out: str | Path, store: str | Path) -> list[str]:
    cfg, weights = model
    return ["convert", str(cfg), str(weights), "--out", str(out), "--calibration", str(calib),
            "--store", str(store), "--calibration-limit", "8"]


def sigkill_when_it_prints(code: str, marker: bytes, log: Path) -> None:
    """Run ``code`` in its own process group, wait until it prints ``marker`` (it is then in
    the middle of its write) and SIGKILL the group."""
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=f, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == marker
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def kill_partial_writer(out: Path, log: Path) -> None:
    """A real process that dies (SIGKILL) in the middle of writing ``out`` through
    ``staged_output``, i.e. a deliver step killed mid-copy: its temp dir stays behind."""
    code = textwrap.dedent(f"""
        import sys, time
        from darknet2tflite.store.output import staged_output
        with staged_output({str(out)!r}) as tmp:
            (tmp / "model.int8.tflite").write_bytes(b"half-written")
            print("writing", flush=True)
            time.sleep(600)
    """)
    sigkill_when_it_prints(code, b"writing", log)


def kill_store_producer(store: Path, key: str, log: Path) -> None:
    """A real process SIGKILLed while producing a store entry (under its lock): leaves a
    temp dir in ``<store>/.tmp`` for a key no later run will ask for again (as after a kill
    followed by an edit of the inputs), which only ``gc_tmp`` removes."""
    code = textwrap.dedent(f"""
        import time
        from darknet2tflite.store.artifacts import ArtifactStore
        def produce(tmp):
            (tmp / "model.keras").write_bytes(b"half")
            print("producing", flush=True)
            time.sleep(600)
        ArtifactStore({str(store)!r}).publish("build", {key!r}, produce)
    """)
    sigkill_when_it_prints(code, b"producing", log)


@pytest.fixture(scope="module")
def model(yolov3_tiny):
    return yolov3_tiny


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """8 COCO photos: calibration (the held-out part is the evaluation set)."""
    src = shared_path("images", "coco")
    d = tmp_path_factory.mktemp("calib")
    for p in sorted(src.glob("*.jpg"))[:8]:
        shutil.copyfile(p, d / p.name)
    return d


# ------------------------------------------------------------------------------ 1. SIGKILL

@dataclass
class KillChain:
    work: Path
    out: Path
    store: Path
    home: Path
    log: Path
    kills: list[tuple[str, float]]
    final: Run
    seconds: float


@pytest.fixture(scope="module")
def kill_chain(tmp_path_factory, model, calib) -> KillChain:
    """The same command, SIGKILLed at four points spread over a conversion, then run to
    completion; each run continues from what the previous one left in the store.  The
    invariants that must hold at every kill are asserted on the spot."""
    work = tmp_path_factory.mktemp("killed")
    out, store, home, log = work / "out", work / "store", work / "prefect-home", work / "log.txt"
    args = convert_args(model, calib, out, store)
    t_start = time.monotonic()
    kills: list[tuple[str, float]] = []

    points = [
        # while Python/TensorFlow/Prefect start up: nothing written yet
        ("startup (2 s)", lambda r: time.sleep(2.0) or True),
        # build published; probe (concurrent with build) still producing in .tmp
        ("build entry published", lambda r: has_entry(store, "build")),
        # calibration / TFLite int8 conversion in progress
        ("quantize producing (+3 s)",
         lambda r: producing(store, "quantize") and (time.sleep(3.0) or True)),
        # evaluation in progress (quantize published)
        ("evaluate producing (+1 s)",
         lambda r: producing(store, "evaluate") and (time.sleep(1.0) or True)),
    ]
    for what, pred in points:
        run = start(args, log, home)
        wait_until(run, what, lambda: pred(run))
        kill_group(run)
        kills.append((what, round(run.elapsed(), 1)))
        # after every kill: all published entries verify, no lock held, --out untouched
        assert_store_consistent(store)
        assert_no_lock_held(store)
        assert not out.exists(), f"--out written by a run killed at {what}"
        assert partials(work) == []
    # and a deliver killed mid-copy (a real process SIGKILLed inside staged_output)
    kill_partial_writer(out, log)
    assert len(partials(work)) == 1 and not out.exists()

    final = start(args, log, home)
    finish(final)
    return KillChain(work, out, store, home, log, kills, final,
                     round(time.monotonic() - t_start, 1))


@pytest.mark.slow
def test_sigkill_at_any_point_then_rerun_completes(kill_chain: KillChain) -> None:
    k = kill_chain
    print(f"\nkills (point, seconds into that run): {k.kills}; whole chain {k.seconds} s")
    manifests = assert_store_consistent(k.store)
    assert set(manifests) == set(STAGES)
    assert_no_lock_held(k.store)
    # leftovers: producers killed mid-stage and the killed deliver are all cleaned up
    assert tmp_names(k.store) == [], tmp_names(k.store)
    assert partials(k.work) == []
    assert sorted(p.name for p in k.work.iterdir()) == ["log.txt", "out", "prefect-home",
                                                        "store"]
    assert "half-written" not in {p.read_text(errors="replace")
                                  for p in k.out.glob("*.tflite")}
    assert_out_matches_store(k.out, manifests)
    # work done before the last kill was reused, not redone
    states = k.final.stage_states()
    assert set(states) == set(STAGES), k.final.text()[-3000:]
    assert all(states[s] == "Cached" for s in STAGES[:STAGES.index("quantize") + 1]), states
    assert k.final.computed() == {"evaluate", "report"}, k.final.computed()


@pytest.mark.slow
def test_rerun_after_completion_is_all_cached_and_rewrites_out(kill_chain: KillChain,
                                                               model, calib) -> None:
    """A completed --out, killed again mid-deliver (per-file replace path), plus a producer
    killed on a key that is never asked for again, then rerun: --out is exactly the store's
    bytes, the stale temp dirs are collected, and nothing is recomputed."""
    k = kill_chain
    (k.out / "model.int8.tflite").write_bytes(b"stale")  # a previous, different delivery
    kill_partial_writer(k.out, k.log)
    kill_store_producer(k.store, "0" * 64, k.log)
    assert len(tmp_names(k.store)) == 1
    assert_no_lock_held(k.store)
    run = start(convert_args(model, calib, k.out, k.store), k.log, k.home)
    finish(run)
    assert set(run.stage_states().values()) == {"Cached"} and run.computed() == set()
    assert partials(k.work) == [] and tmp_names(k.store) == []
    assert_out_matches_store(k.out, assert_store_consistent(k.store))


# ------------------------------------------------------------------------------ 2. concurrency

@pytest.mark.slow
def test_two_conversions_at_once_on_one_store(tmp_path: Path, model, calib) -> None:
    """Same command twice at once (same store, same --out, same PREFECT_HOME as two
    terminals in one repo would have), both into nested folders that do not exist yet."""
    store = tmp_path / "new" / "nested" / "store"
    out = tmp_path / "deep" / "er" / "out"
    home = tmp_path / "prefect-home"
    args = convert_args(model, calib, out, store)
    t0 = time.monotonic()
    a = start(args, tmp_path / "a.log", home)
    b = start(args, tmp_path / "b.log", home)
    finish(a)
    finish(b)
    seconds = round(time.monotonic() - t0, 1)

    manifests = assert_store_consistent(store)
    assert set(manifests) == set(STAGES)
    assert tmp_names(store) == [] and partials(out.parent) == []
    assert_out_matches_store(out, manifests)
    sa, sb = a.stage_states(), b.stage_states()
    assert set(sa) == set(sb) == set(STAGES)
    ca, cb = a.computed(), b.computed()
    twice = sorted(ca & cb)
    print(f"\ntwo concurrent runs: {seconds} s; computed by A {sorted(ca)}, by B {sorted(cb)}, "
          f"by both {twice}")
    # each stage computed exactly once: the other run waited on the stage's lock and took
    # the published entry ("Cached": it did no work)
    assert twice == [] and ca | cb == set(STAGES)
    for s in STAGES:
        assert {sa[s], sb[s]} == {"Completed", "Cached"}, (s, sa[s], sb[s])


# ------------------------------------------------------------------------------ 3. paths

@pytest.mark.slow
def test_relative_nested_out_and_store(kill_chain: KillChain, model, calib,
                                       tmp_path: Path) -> None:
    """--out and --store given relative to the working directory; --out's parents do not
    exist yet.  (Uses the completed store of the kill chain: all Cached, a few seconds.)"""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    rel_store = os.path.relpath(kill_chain.store, cwd)
    run = start(convert_args(model, calib, "a/b/out", rel_store), tmp_path / "log.txt",
                kill_chain.home, cwd=cwd)
    finish(run)
    assert set(run.stage_states().values()) == {"Cached"}
    out = cwd / "a" / "b" / "out"
    assert_out_matches_store(out, assert_store_consistent(kill_chain.store))
    assert sorted(os.listdir(cwd)) == ["a"] and os.listdir(cwd / "a" / "b") == ["out"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


@pytest.mark.parametrize("case", ["out-is-file", "out-under-file", "store-is-file",
                                  "store-under-file"])
def test_out_or_store_on_a_file_is_one_line_error(tmp_path: Path, model, calib, capsys,
                                                  case: str) -> None:
    from cli.main import main

    f = tmp_path / "afile"
    f.write_text("keep me")
    target = f if case.endswith("is-file") else f / "sub" / "dir"
    out, store = tmp_path / "out", tmp_path / "store"
    if case.startswith("out"):
        out = target
    else:
        store = target
    t0 = time.monotonic()
    rc = main(["--quiet", *convert_args(model, calib, out, store)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("darknet2tflite: error: --"), err
    assert "not a directory" in err and str(target) in err
    assert time.monotonic() - t0 < 5  # before Prefect/TensorFlow, not after the conversion
    assert f.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_staged_output_refuses_file_and_cleans_only_dead_partials(tmp_path: Path) -> None:
    """A live writer's temp dir (flock held) is never touched by a second writer; a dead
    one's is removed."""
    from darknet2tflite.errors import UserError
    from darknet2tflite.store.output import staged_output

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        with staged_output(tmp_path / "file"):
            pass
    with pytest.raises(UserError, match="not a directory"):
        with staged_output(tmp_path / "file" / "sub"):
            pass

    out = tmp_path / "out"
    kill_partial_writer(out, tmp_path / "log.txt")  # dead writer
    assert len(partials(tmp_path)) == 1
    with staged_output(out) as live:  # a live writer...
        (live / "a.txt").write_text("live")
        with staged_output(out) as second:  # ...and a second one starting meanwhile
            (second / "b.txt").write_text("second")
            assert live.is_dir() and (live / "a.txt").read_text() == "live"
            assert sorted(partials(tmp_path)) == sorted([live.name, second.name])
    assert partials(tmp_path) == []
    assert sorted(os.listdir(out)) == ["a.txt", "b.txt"]


def test_names_from_inputs_cannot_escape_out(tmp_path: Path) -> None:
    """Output names that come from input files (evaluation image names -> report images,
    batch model names -> out/<name>) are confined to the output folder."""
    from flows.batch import discover_models
    from darknet2tflite.stages.report import deliverable_files, safe_relpath

    for bad in ("../x.png", "/etc/x.png", "report_images/../../x.png", "a//b", "", "."):
        with pytest.raises(ValueError):
            safe_relpath(bad)
    assert safe_relpath("report_images/a_float32_vs_int8.png")
    with pytest.raises(ValueError):
        deliverable_files({}, {}, {}, {"artifacts": {"image:../../evil.png": "/dev/null"}})

    manifest = tmp_path / "models.yaml"
    manifest.write_text(textwrap.dedent("""
        models:
          - {name: ../../escape, cfg: a.cfg, weights: a.weights}
          - {name: /abs, cfg: a.cfg, weights: a.weights}
          - {name: .hidden, cfg: a.cfg, weights: a.weights}
          - {name: ok, cfg: a.cfg, weights: a.weights}
    """))
    found = {m["name"]: m for m in discover_models(manifest, {})}
    for n in ("../../escape", "/abs", ".hidden"):
        assert "plain folder name" in found[n]["error"] and "params" not in found[n]
    assert "params" in found["ok"]


# ------------------------------------------------------------------------------ 4. loopback

def test_prefect_binds_loopback_by_default(tmp_path: Path) -> None:
    from flows import _settings

    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    _settings.apply(env)
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert env["PREFECT_RUNNER_SERVER_HOST"] == "127.0.0.1"
    # the user's explicit choice wins, from the environment ...
    env = {"HOME": str(home), "PREFECT_SERVER_API_HOST": "0.0.0.0"}
    _settings.apply(env)
    assert env["PREFECT_SERVER_API_HOST"] == "0.0.0.0"
    # ... or from the active profile of their Prefect home
    (home / ".prefect").mkdir()
    (home / ".prefect" / "profiles.toml").write_text(
        'active = "pub"\n[profiles.pub]\nPREFECT_SERVER_API_HOST = "10.0.0.5"\n')
    env = {"HOME": str(home)}
    _settings.apply(env)
    assert "PREFECT_SERVER_API_HOST" not in env


def test_prefect_settings_resolve_to_loopback_in_a_fresh_process(tmp_path: Path) -> None:
    """What Prefect itself resolves once darknet2tflite's defaults are applied (a fresh
    interpreter: Prefect reads its settings at import), and the docs say how to expose."""
    code = ("import flows\nfrom prefect.settings import get_current_settings as g\n"
            "s = g()\nprint(s.server.api.host, s.runner.server.host)\n")
    env = clean_env(tmp_path / "prefect-home")
    env["HOME"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["127.0.0.1", "127.0.0.1"]

    doc = (REPO / "docs" / "prefect.md").read_text()
    assert "prefect server start --host 0.0.0.0" in doc
    assert "PREFECT_UI_API_URL" in doc and "PREFECT_SERVER_API_AUTH_STRING" in doc
    assert "reverse proxy" in doc
    for text in [doc, (REPO / "README.md").read_text(),
                 (REPO / "cli" / "serve.py").read_text(),
                 (REPO / "flows" / "_settings.py").read_text()]:
        # 0.0.0.0 appears only as the deliberate, documented opt-in
        for line in text.splitlines():
            if "0.0.0.0" in line:
                assert "--host 0.0.0.0" in line or "PREFECT_SERVER_API_HOST=0.0.0.0" in line, \
                    line
