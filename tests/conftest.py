"""Shared fixtures: real models and photos from ../shared (skip cleanly where absent)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Prefect's home for the whole session (in-process harness runs and CLI subprocesses alike):
# a temp dir, so tests never read or write ~/.prefect or the repo's .prefect/, removed at the
# end.  Must be set before prefect is imported.
_PREFECT_HOME = None
if "prefect" not in sys.modules:
    _PREFECT_HOME = tempfile.mkdtemp(prefix="d2t-prefect-home-")
    os.environ["PREFECT_HOME"] = _PREFECT_HOME


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _PREFECT_HOME:
        shutil.rmtree(_PREFECT_HOME, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CFG_DIR = REPO / "cfg"


def shared_path(*parts: str) -> Path:
    """``../shared/<parts>``; official weights fall back to the repo's ``weights/`` (where
    ``darknet2tflite weights fetch NAME`` puts them on a fresh clone without ../shared)."""
    p = SHARED.joinpath(*parts)
    if not p.exists() and parts[:2] == ("darknet", "weights"):
        fetched = REPO / "weights" / parts[-1]
        if fetched.is_file():
            return fetched
    if not p.exists():
        pytest.skip(f"shared test material missing: {p} (weights: `darknet2tflite weights "
                    "fetch NAME` puts them in weights/)")
    return p


@pytest.fixture(scope="session")
def yolov4_tiny() -> tuple[Path, Path]:
    return CFG_DIR / "yolov4-tiny.cfg", shared_path("darknet", "weights", "yolov4-tiny.weights")


@pytest.fixture(scope="session")
def yolov3_tiny() -> tuple[Path, Path]:
    return (CFG_DIR / "yolov3-tiny.mask123.cfg",
            shared_path("darknet", "weights", "yolov3-tiny.weights"))


@pytest.fixture(scope="session")
def sample_images() -> Path:
    return REPO / "data" / "samples"


@pytest.fixture(scope="session")
def coco_images() -> Path:
    return shared_path("images", "coco")


def clean_env(prefect_home: Path) -> dict[str, str]:
    """The user's environment minus any Prefect configuration, with a private PREFECT_HOME
    (so a subprocess's Prefect server, database and profiles are the caller's alone) and the
    repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API for in-process flow runs (prefect_test_harness), with heartbeats
    off and results in a temp dir; yields the API URL."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
                                  PREFECT_LOCAL_STORAGE_PATH, temporary_settings)
    from prefect.testing.utilities import prefect_test_harness

    results = tempfile.mkdtemp(prefix="d2t-prefect-results-")
    # The harness' subprocess server needs more than its 30 s default on a busy 2-core box.
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                                         PREFECT_LOCAL_STORAGE_PATH: results}):
            try:
                yield PREFECT_API_URL.value()
            finally:
                _rebind_closed_log_streams()
    shutil.rmtree(results, ignore_errors=True)


def _rebind_closed_log_streams() -> None:
    """Log handlers created while some test's capsys was sys.stderr (Prefect reconfigures its
    logging when a flow's settings change) still point at that closed capture; the harness'
    shutdown logs through them: point them at the current stderr first."""
    import logging
    for name in [None, *logging.root.manager.loggerDict]:
        for h in getattr(logging.getLogger(name), "handlers", []):
            if getattr(getattr(h, "stream", None), "closed", False):
                h.stream = sys.stderr
            console = getattr(h, "console", None)
            if getattr(getattr(console, "file", None), "closed", False):
                console.file = sys.stderr
