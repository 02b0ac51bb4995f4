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
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared test material missing: {p}")
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
