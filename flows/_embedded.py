"""Prefect's embedded server, started by us before Prefect is imported.

Why: a `darknet2tflite convert` whose stages all come from the store does about one second of
work, yet with Prefect's own ephemeral mode took 7 s: that mode starts its server lazily, on the
first API call of the flow: it first imports its whole server package in *this* process
(~2.4 s, only to read the class that spawns it) and then waits while the child imports it again
and starts (~3.3 s).  Spawning the same uvicorn command ourselves, first thing in the CLI,
skips the in-process import and lets the server start on another core while this process
imports the flow.  The result is the same server (same app factory, same ``PREFECT_HOME`` and
SQLite database, same settings); the client just sees it as ``PREFECT_API_URL``.

The listening socket is bound here and handed to the server process (uvicorn's ``fd``), so
there is no window in which another process can take the port; this process keeps it open, so
a server that has to be started again (two CLIs migrating a fresh database at once) serves the
same address.  The server dies with this process: stopped at exit, and on Linux also killed by
the kernel if this process is killed (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the CLI does not
leave a server behind.

Opt out with ``DARKNET2TFLITE_EMBEDDED_SERVER=0`` (then Prefect starts its own, as before).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from darknet2tflite.paths import REPO_ROOT
from typing import Any

OPT_OUT = "DARKNET2TFLITE_EMBEDDED_SERVER"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class EmbeddedServer:
    """One Prefect API server subprocess serving this process's flow runs."""

    #: uvicorn's exit status when the app's startup fails.  Two CLIs starting on a fresh
    #: PREFECT_HOME race to migrate the same SQLite database and the loser exits with it;
    #: started again it finds the database migrated (Prefect's own ephemeral server retries
    #: on this status too).
    STARTUP_FAILED = 3
    MAX_RESTARTS = 3

    def __init__(self, sock: socket.socket, argv: list[str], env: dict[str, str]) -> None:
        self.sock = sock  # kept open: a restarted server serves the same port (same fd)
        self.port = sock.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._argv, self._env = argv, env
        self._ready = False
        self.restarts = 0
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            self._argv, env=self._env, pass_fds=[self.sock.fileno()], stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    @classmethod
    def spawn(cls) -> "EmbeddedServer":
        spec = importlib.util.find_spec("prefect")
        if spec is None or not spec.origin:
            raise RuntimeError("prefect is not installed")
        package_parent = Path(spec.origin).resolve().parents[1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            # the same environment as prefect.server.api.server.SubprocessASGIServer's
            env = dict(os.environ, PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1",
                       PREFECT__SERVER_FINAL="1")
            env.pop("PREFECT_API_URL", None)
            # Automations (trigger evaluation) need a server that outlives the events they
            # watch; this one lives for one command, and starting them cost 0.3 s of every
            # run here.  An explicit setting wins.
            env.setdefault("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "false")
            # flows/_server_main.py runs uvicorn with Prefect's app factory, like Prefect's
            # own ``python -m uvicorn --factory prefect.server.api.server:create_app``
            env["PYTHONPATH"] = os.pathsep.join(
                [str(REPO_ROOT), str(package_parent)]
                + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
            server = cls(sock, [sys.executable, "-m", "flows._server_main",
                                str(sock.fileno())], env)
        except BaseException:
            sock.close()
            raise
        atexit.register(server.stop)
        return server

    def wait_ready(self, timeout: float) -> None:
        """Block until the API answers its health check (the flow's first call needs it)."""
        if self._ready:
            return
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code == self.STARTUP_FAILED and self.restarts < self.MAX_RESTARTS:
                self.restarts += 1
                print(f"darknet2tflite: the embedded Prefect server failed to start (see above); "
                      f"starting it again ({self.restarts}/{self.MAX_RESTARTS})",
                      file=sys.stderr, flush=True)
                self.process = self._start()
                continue
            if code is not None:
                self.stop(wait=True)
                raise RuntimeError(f"the embedded Prefect server exited with code {code} while "
                                   f"starting (its error is above); set {OPT_OUT}=0 to let "
                                   "Prefect start its own, or set PREFECT_API_URL")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as r:
                    if r.status == 200:
                        self._ready = True
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop(wait=True)
                raise RuntimeError(f"the embedded Prefect server did not answer within "
                                   f"{timeout:.0f} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT"
                                   "_SECONDS raises the limit)")
            time.sleep(0.05)

    def stop(self, wait: bool | None = None) -> None:
        """SIGTERM: uvicorn finishes its open requests and closes the database cleanly.

        At exit (``wait=None``) on Linux the CLI does not wait the ~0.2 s that takes: the flow
        run and its logs/events are already recorded (Prefect drains its workers first), and
        the server is already orphan-proof.  Elsewhere, or when asked, it waits (and kills a
        server that has not stopped after 5 s)."""
        self.sock.close()  # the server process keeps its own copy while it runs
        if self.process.poll() is not None:
            return
        self.process.terminate()
        if wait is None:
            wait = not sys.platform.startswith("linux")
        if wait:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_SERVER: EmbeddedServer | None = None


def start_early() -> EmbeddedServer | None:
    """Spawn the server now if this process would otherwise use Prefect's ephemeral one.

    Must run before ``prefect`` is imported (Prefect reads ``PREFECT_API_URL`` once); returns
    None, changing nothing, when it is too late, a server is configured, or the user opted out.
    """
    global _SERVER
    from flows import _settings
    if _SERVER is not None:
        return _SERVER
    if (_settings.MODE != "ephemeral" or "prefect" in sys.modules
            or os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off")):
        return None
    _SERVER = EmbeddedServer.spawn()
    os.environ["PREFECT_API_URL"] = _SERVER.api_url
    # no UI is served (as in Prefect's ephemeral mode): no "View at <dead link>" log lines
    os.environ.setdefault("PREFECT_UI_URL", "")
    return _SERVER


def wait_ready() -> None:
    """Wait for the server started by :func:`start_early` (no-op if none was started)."""
    if _SERVER is not None:
        from flows import _settings
        _SERVER.wait_ready(float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
                                 or _settings.EPHEMERAL_STARTUP_TIMEOUT_SECONDS))


def current() -> EmbeddedServer | None:
    return _SERVER


def flow_settings() -> "contextlib.AbstractContextManager[Any]":
    """Prefect settings for runs recorded by the embedded server.

    Flow-run heartbeats exist so that a long-lived server can mark runs whose process died
    as crashed; the embedded server dies with this process, so nobody would ever read them,
    and the engine's heartbeat thread (1 s sleeps) costs up to a second at the end of every
    run.  With a real server (``PREFECT_API_URL``) nothing changes.
    """
    if _SERVER is None:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def describe() -> str:
    """One line for the CLI: where runs are recorded."""
    from flows import _settings
    if current() is not None:
        return (f"embedded Prefect server {current().api_url} "
                f"(PREFECT_HOME={os.environ.get('PREFECT_HOME')})")
    if _settings.MODE == "server":
        return (f"Prefect server "
                f"{os.environ.get('PREFECT_API_URL') or _settings.profile_api_url()}")
    return f"embedded Prefect (ephemeral server, PREFECT_HOME={os.environ.get('PREFECT_HOME')})"
