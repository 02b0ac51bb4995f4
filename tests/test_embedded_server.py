"""flows/_embedded.py: the Prefect server the CLI starts before importing Prefect.

Real processes throughout: a child Python runs ``start_early()`` as the CLI does, the server is
asked for its health and for the flow runs it recorded, and its lifetime is checked against the
child's (normal exit, SIGKILL).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, clean_env


CHILD = r"""
import json, sys, time
from flows import _embedded, _settings
server = _embedded.start_early()
print(json.dumps({"pid": server.process.pid, "url": server.api_url,
                  "describe": _embedded.describe()}), flush=True)
_embedded.wait_ready()
import prefect  # Prefect now reads the API URL set above
from prefect import flow

@flow(name="embedded-probe", persist_result=False)
def probe() -> int:
    return 41 + 1

assert probe() == 42
print("ran", flush=True)
if sys.argv[1] == "hang":
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _start(mode: str, tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], cwd=REPO,
                            env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    return proc, info


def test_server_records_the_run_and_stops_with_the_process(tmp_path: Path) -> None:
    proc, info = _start("exit", tmp_path)
    assert info["url"].startswith("http://127.0.0.1:") and info["url"] in info["describe"]
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "ran" in out
    # the run went to this PREFECT_HOME's database, as in Prefect's own ephemeral mode
    assert (tmp_path / "prefect.db").is_file()
    assert _wait_dead(info["pid"]), "server outlived the process that started it"


def test_server_dies_when_its_process_is_killed(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    proc, info = _start("hang", tmp_path)
    try:
        assert proc.stdout.readline().strip() == "ran"
        with urllib.request.urlopen(info["url"] + "/health", timeout=10) as r:
            assert r.status == 200
        req = urllib.request.Request(info["url"] + "/flow_runs/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            runs = json.loads(r.read())
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_dead(info["pid"]), "server orphaned by kill -9 of its process"
    finally:
        if proc.poll() is None:
            proc.kill()
        if _alive(info["pid"]):
            os.kill(info["pid"], signal.SIGKILL)


def test_not_started_when_prefect_is_already_imported_or_opted_out(tmp_path: Path) -> None:
    code = ("import os, prefect\nfrom flows import _embedded\n"
            "print(_embedded.start_early() is None, 'PREFECT_API_URL' in os.environ)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "False"], out.stderr
    code = "from flows import _embedded\nprint(_embedded.start_early() is None)\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120,
                         env=dict(clean_env(tmp_path), DARKNET2TFLITE_EMBEDDED_SERVER="0"),
                         capture_output=True, text=True)
    assert out.stdout.split() == ["True"], out.stderr


def test_two_servers_starting_on_a_fresh_home_both_come_up(tmp_path: Path) -> None:
    """Both migrate the same new SQLite database at once; the loser's start fails (uvicorn
    exit 3) and is retried on the same socket."""
    code = ("from flows import _embedded\ns = _embedded.start_early()\n_embedded.wait_ready()\n"
            "import urllib.request\n"
            "print(urllib.request.urlopen(s.api_url + '/health', timeout=10).status)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                              env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0 and out.split() == ["200"], err[-2000:]
