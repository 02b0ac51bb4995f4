"""Prefect environment defaults for darknet2tflite, applied before ``prefect`` is imported.

Prefect reads its settings from the environment when it is first imported, so this module must
run first: ``flows/__init__.py`` and ``tasks/__init__.py`` import it, and ``cli.convert`` /
``cli.serve`` import ``flows`` before anything that imports prefect.

Two modes:

* ``PREFECT_API_URL`` set (e.g. ``http://127.0.0.1:4200/api`` of a ``prefect server start``),
  in the environment or in the active profile of the user's Prefect home
  (``prefect config set PREFECT_API_URL=...``): runs report to that server; nothing here
  overrides the user's configuration.
* not set (the default for ``darknet2tflite convert``): Prefect's embedded *ephemeral* server
  (a subprocess on a free local port with its SQLite DB under ``PREFECT_HOME``), with settings
  that make it reliable on a slow or busy machine: a 90 s startup budget instead of 20 s (loading
  TensorFlow alongside regularly pushes the default over), no analytics calls (the machine may
  be offline), and a project-local ``PREFECT_HOME`` (``<repo>/.prefect``, git-ignored) so runs
  neither read nor write ``~/.prefect``.  The CLI starts that server itself, before Prefect is
  imported (flows/_embedded.py), so its start overlaps the CLI's own imports.

Every value is a default: an explicit environment variable always wins (and for the bind
addresses, a value in the active Prefect profile too).
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

from darknet2tflite.paths import REPO_ROOT

PROJECT_PREFECT_HOME = REPO_ROOT / ".prefect"
EPHEMERAL_STARTUP_TIMEOUT_SECONDS = 90

#: Always applied (harmless with a real server too).
COMMON_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # TensorFlow's C++ logging goes to stderr and would drown the Prefect log lines.
    "TF_CPP_MIN_LOG_LEVEL": "3",
}

#: Always applied unless the user chose a value (environment or active profile): anything
#: this process starts listens on the loopback interface only (the API/UI of a server started
#: from here, the optional webserver of ``darknet2tflite serve``'s runner).  Exposing a server
#: is a deliberate act: ``prefect server start --host 0.0.0.0`` (see docs/prefect.md).
LOOPBACK_DEFAULTS = {
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "PREFECT_RUNNER_SERVER_HOST": "127.0.0.1",
}

#: Applied only when no API server is configured (embedded ephemeral mode).
EPHEMERAL_DEFAULTS = {
    "PREFECT_HOME": str(PROJECT_PREFECT_HOME),
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(EPHEMERAL_STARTUP_TIMEOUT_SECONDS),
}


def profile_api_url(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> str | None:
    """PREFECT_API_URL of the active profile in the user's Prefect home (~/.prefect or
    $PREFECT_HOME), if one is configured there."""
    return profile_setting("PREFECT_API_URL", environ)


def profile_setting(name: str, environ: "os._Environ[str] | dict[str, str]" = os.environ
                    ) -> str | None:
    """Setting ``name`` of the active profile in the user's Prefect home, if set there."""
    user_home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    home = Path(environ.get("PREFECT_HOME") or user_home / ".prefect").expanduser()
    path = Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    active = environ.get("PREFECT_PROFILE") or doc.get("active")
    profile = (doc.get("profiles") or {}).get(active) or {}
    value = profile.get(name)
    return str(value) if value else None


def apply(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> str:
    """Fill in the defaults; returns "server" or "ephemeral" (the mode that will be used)."""
    for k, v in COMMON_DEFAULTS.items():
        environ.setdefault(k, v)
    for k, v in LOOPBACK_DEFAULTS.items():
        if not environ.get(k) and profile_setting(k, environ) is None:
            environ[k] = v
    if environ.get("PREFECT_API_URL") or profile_api_url(environ):
        return "server"
    for k, v in EPHEMERAL_DEFAULTS.items():
        environ.setdefault(k, v)
    return "ephemeral"


MODE = apply()

# Note: when prefect was imported first (``prefect flow-run retry --entrypoint ...``, a worker
# loading flows/convert.py), Prefect has already read its settings from the environment; then
# the values above only reach subprocesses, which is why the docs export PREFECT_API_URL for those.

